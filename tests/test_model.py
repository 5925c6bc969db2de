"""The transformer: shapes, causality, packing isolation, and that optional paths compute the same function."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.sections import ModelConfig
from models.attention import AttentionMask
from models.mlp import swiglu_ffn
from models.transformer import apply_rope
from train import params as params_lib

CFG = ModelConfig(vocab_size=97, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64)
B, S = 3, 16


def _logits(cfg: ModelConfig, params, tokens, mask):
  return params_lib.apply(cfg, params)(tokens, mask)


@pytest.fixture(scope='module')
def params():
  return params_lib.init(CFG, seed=0)


def _tokens(seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (B, S), 0, CFG.vocab_size)


def test_shapes_and_param_count(params):
  logits = _logits(CFG, params, _tokens(), AttentionMask.causal(B, S))
  assert logits.shape == (B, S, CFG.vocab_size) and logits.dtype == jnp.float32
  D, H, K, E, F, V, L = 32, 4, 2, 8, 64, 97, 2
  per_layer = 2 * D + D * H * E + 2 * D * K * E + H * E * D + 3 * D * F
  assert params_lib.count(params) == V * D + L * per_layer + D


def test_changing_a_later_token_never_changes_earlier_logits(params):
  tokens = _tokens()
  mask = AttentionMask.causal(B, S)
  base = _logits(CFG, params, tokens, mask)
  for t in (0, 5, S - 2):
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 1) % CFG.vocab_size)
    out = _logits(CFG, params, changed, mask)
    np.testing.assert_array_equal(np.asarray(out[:, :t + 1]), np.asarray(base[:, :t + 1]))
    assert not np.allclose(out[:, t + 1], base[:, t + 1])


def test_packed_documents_do_not_see_each_other(params):
  """Row = doc A (8 tokens) + doc B (8 tokens); doc B's logits equal doc B alone at positions 0..7."""
  tokens = _tokens()
  seg = jnp.concatenate([jnp.ones((B, 8), jnp.int32), 2 * jnp.ones((B, 8), jnp.int32)], 1)
  pos = jnp.concatenate([jnp.arange(8), jnp.arange(8)]).astype(jnp.int32)[None].repeat(B, 0)
  packed = _logits(CFG, params, tokens, AttentionMask(seg, pos, jnp.zeros((B, S), bool)))
  alone = _logits(CFG, params, tokens[:, 8:], AttentionMask.causal(B, 8))
  np.testing.assert_allclose(packed[:, 8:], alone, rtol=1e-5, atol=1e-5)


def test_bidirectional_keys_are_seen_by_earlier_queries(params):
  tokens = _tokens()
  seg, pos = jnp.ones((B, S), jnp.int32), jnp.arange(S, dtype=jnp.int32)[None].repeat(B, 0)
  prefix = jnp.arange(S)[None].repeat(B, 0) < 6
  mask = AttentionMask(seg, pos, prefix)
  base = _logits(CFG, params, tokens, mask)
  changed = tokens.at[:, 4].set((tokens[:, 4] + 1) % CFG.vocab_size)
  out = _logits(CFG, params, changed, mask)
  assert not np.allclose(out[:, 0], base[:, 0])  # position 0 sees prefix key 4
  changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % CFG.vocab_size)
  out = _logits(CFG, params, changed, mask)
  np.testing.assert_array_equal(np.asarray(out[:, :10]), np.asarray(base[:, :10]))  # suffix key stays causal


@pytest.mark.parametrize('variant', [dict(remat=True), dict(ffn='blockwise', ffn_block=4),
                                     dict(attention='blockwise', q_block=4, kv_block=4)])
def test_variants_compute_the_same_function(params, variant):
  """remat, the blockwise FFN and blockwise attention change memory, not numbers: forward and gradients."""
  tokens, mask = _tokens(), AttentionMask.causal(B, S)
  other = dataclasses.replace(CFG, **variant)

  def loss(cfg, p):
    return jnp.mean(jax.nn.log_softmax(_logits(cfg, p, tokens, mask))[..., 0])

  v0, g0 = jax.value_and_grad(lambda p: loss(CFG, p))(params)
  v1, g1 = jax.value_and_grad(lambda p: loss(other, p))(params)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_untied_head_adds_a_matrix():
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  p = params_lib.init(cfg, 0)
  assert params_lib.count(p) == params_lib.count(params_lib.init(CFG, 0)) + CFG.d_model * CFG.vocab_size


def test_bfloat16_compute_stays_close_to_float32(params):
  tokens, mask = _tokens(), AttentionMask.causal(B, S)
  f32 = _logits(CFG, params, tokens, mask)
  bf16 = _logits(dataclasses.replace(CFG, dtype='bfloat16'), params, tokens, mask)
  assert bf16.dtype == jnp.float32  # logits are upcast for the loss
  np.testing.assert_allclose(bf16, f32, atol=0.05)


def test_rope_relative_positions():
  """RoPE makes q.k depend only on the offset between positions."""
  q, k = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 1, 1, 8))
  def dot(pq, pk):
    qr = apply_rope(q, jnp.array([[pq]]), 10_000.0)
    kr = apply_rope(k, jnp.array([[pk]]), 10_000.0)
    return float(jnp.sum(qr * kr))
  assert dot(5, 3) == pytest.approx(dot(12, 10), rel=1e-5)
  assert dot(5, 3) != pytest.approx(dot(5, 4), rel=1e-3)


def test_blockwise_ffn_matches_whole_sequence():
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 8))
  w = [jax.random.normal(jax.random.PRNGKey(i), s) for i, s in ((3, (8, 12)), (4, (8, 12)), (5, (12, 8)))]
  np.testing.assert_allclose(swiglu_ffn(x, *w, block=4), swiglu_ffn(x, *w), rtol=1e-5, atol=1e-5)


def _stacked(unrolled: dict, num_layers: int) -> dict:
  """The scan_layers layout of an unrolled tree (params or grads): block leaves stacked on a leading layer axis."""
  blocks = [unrolled['blocks'][i] for i in range(num_layers)]
  return {**unrolled, 'blocks': jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}


@pytest.mark.parametrize('remat', [False, True])
def test_scanned_layers_compute_the_same_function(params, remat):
  """scan_layers changes compile time, not numbers: same logits and gradients from the same (stacked) weights."""
  tokens, mask = _tokens(), AttentionMask.causal(B, S)
  unrolled = dataclasses.replace(CFG, remat=remat)
  scanned = dataclasses.replace(unrolled, scan_layers=True)
  stacked = _stacked(params, CFG.num_layers)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, params_lib.shapes(scanned))

  def loss(cfg, p):
    logits = _logits(cfg, p, tokens, mask)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  (_, l0), g0 = jax.value_and_grad(lambda p: loss(unrolled, p), has_aux=True)(params)
  (_, l1), g1 = jax.value_and_grad(lambda p: loss(scanned, p), has_aux=True)(stacked)
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-6)
  g0 = _stacked(g0, CFG.num_layers)
  assert jax.tree.structure(g1) == jax.tree.structure(g0)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scanned_params_carry_a_leading_layers_axis(params):
  """Same parameter count; stacked leaves are named ('layers', *unrolled names), one name per dim, so they shard."""
  cfg = dataclasses.replace(CFG, scan_layers=True)
  p = params_lib.init(cfg, 0)
  assert params_lib.count(p) == params_lib.count(params)
  wq = p['blocks']['attn']['wq_DHE']
  assert wq.shape[0] == CFG.num_layers and not np.allclose(wq[0], wq[1])  # each layer gets its own init
  axes, unrolled = params_lib.logical_axes(cfg), params_lib.logical_axes(CFG)
  is_axes = lambda x: isinstance(x, tuple)
  expected = jax.tree.map(lambda a: ('layers', *a), unrolled['blocks'][0], is_leaf=is_axes)
  assert axes['blocks'] == expected
  assert {k: v for k, v in axes.items() if k != 'blocks'} == {k: v for k, v in unrolled.items() if k != 'blocks'}
  for a, x in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(p)):
    assert len(a) == x.ndim, (a, x.shape)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_cached_decoding_gives_the_full_forward_logits(params, scan_layers):
  """Feeding a document one token at a time through the k/v cache (sampling's path) reproduces the causal forward
  pass's logits at every position, with GQA, float32 within 1e-5."""
  cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
  weights = _stacked(params, CFG.num_layers) if scan_layers else params
  tokens = _tokens(seed=4)
  full = _logits(cfg, weights, tokens, AttentionMask.causal(B, S))

  @jax.jit
  def decode(cache, tokens_B, position):
    return params_lib.apply(cfg, weights).decode(tokens_B[:, None], cache, position)

  cache = params_lib.apply(cfg, weights).init_cache(B, S)
  for position in range(S):
    logits_BV, cache = decode(cache, tokens[:, position], jnp.int32(position))
    np.testing.assert_allclose(logits_BV, full[:, position], atol=1e-5, rtol=1e-5, err_msg=f'position {position}')
