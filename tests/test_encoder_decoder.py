"""The encoder-decoder: a plain reference (explicit [S, T] masks, vanilla attention) for logits and gradients, the
decoder's causality, the encoder's bidirectionality, packed documents kept apart, blockwise and ring equal to
vanilla, cached sampling equal to the full forward, and the adapter from decoder-form batches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from configs.sections import ModelConfig
from models.attention import AttentionMask
from models.attention.ring import zigzag_permutation
from train import objectives
from train import params as params_lib
from train.objectives import ObjectiveSpec
from train.objectives.encoder_decoder import to_encoder_decoder

V, S = 61, 16
CFG = ModelConfig(vocab_size=V, num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=48,
                  architecture='encoder_decoder', num_encoder_layers=2, num_decoder_layers=2)
SPEC = ObjectiveSpec(vocab_size=V, pad_id=0, mask_id=3, num_special=8)


def packed_batch(seed: int = 0, rows: int = 3, seq_len: int = S) -> dict[str, jax.Array]:
  """Rows of two documents and trailing pads, as the pipeline packs them."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(8, V, (rows, seq_len)).astype(np.int32)
  seg, pos = np.zeros((rows, seq_len), np.int32), np.zeros((rows, seq_len), np.int32)
  for r in range(rows):
    a = int(rng.integers(3, seq_len // 2))
    b = int(rng.integers(3, seq_len - a - 1))
    seg[r, :a], seg[r, a:a + b] = 1, 2
    pos[r, :a], pos[r, a:a + b] = np.arange(a), np.arange(b)
  tokens[seg == 0] = 0
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(seg), 'positions': jnp.asarray(pos)}


def encdec_batch(seed: int = 0, rows: int = 3, seq_len: int = S):
  batch = packed_batch(seed, rows, seq_len)
  return to_encoder_decoder(objectives.get('prefix_lm')(batch, jax.random.PRNGKey(seed), SPEC), SPEC)


# --- the reference: plain jnp, explicit masks, the unrolled params as given ------------------------------------


def _rms(x, scale, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x, pos, theta=10_000.0):
  half = x.shape[-1] // 2
  angle = pos[..., None].astype(jnp.float32) * theta ** (-jnp.arange(half) / half)
  sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _visible(q_mask: AttentionMask, kv_mask: AttentionMask) -> np.ndarray:
  """[B, S, T]: same segment and (key not after query or key bidirectional), spelled out in numpy."""
  qs, qp = np.asarray(q_mask.segment_ids), np.asarray(q_mask.positions)
  ks, kp, kb = (np.asarray(a) for a in (kv_mask.segment_ids, kv_mask.positions, kv_mask.bidirectional))
  return (qs[:, :, None] == ks[:, None, :]) & ((kp[:, None, :] <= qp[:, :, None]) | kb[:, None, :])


def _attention(p, x_q, x_kv, visible, q_pos=None, kv_pos=None):
  q = jnp.einsum('bsd,dhe->bshe', x_q, p['wq_DHE'])
  k = jnp.einsum('btd,dke->btke', x_kv, p['wk_DKE'])
  v = jnp.einsum('btd,dke->btke', x_kv, p['wv_DKE'])
  if q_pos is not None:
    q, k = _rope(q, q_pos), _rope(k, kv_pos)
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  logits = jnp.einsum('bshe,bthe->bhst', q, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(visible[:, None], logits, -1e30)
  probs = jax.nn.softmax(logits, -1) * visible[:, None].any(-1, keepdims=True)
  return jnp.einsum('bhst,bthe,hed->bsd', probs, v, p['wo_HED'])


def _mlp(p, x):
  return (jax.nn.silu(x @ p['w_gate_DF']) * (x @ p['w_up_DF'])) @ p['w_down_FD']


def reference_logits(cfg: ModelConfig, params, mb) -> jax.Array:
  enc_vis, dec_vis = _visible(mb.encoder_mask, mb.encoder_mask), _visible(mb.mask, mb.mask)
  cross_vis = _visible(mb.mask, mb.encoder_mask)
  enc_pos, dec_pos = mb.encoder_mask.positions, mb.mask.positions
  enc_table = params['embed_VD'] if cfg.share_embeddings else params['encoder_embed_VD']
  x = enc_table[mb.encoder_inputs]
  for i in range(cfg.num_encoder_layers):
    b = params['encoder_blocks'][i]
    x = x + _attention(b['attn'], *(2 * [_rms(x, b['attn_norm']['scale'])]), enc_vis, enc_pos, enc_pos)
    x = x + _mlp(b['mlp'], _rms(x, b['mlp_norm']['scale']))
  enc = _rms(x, params['encoder_norm']['scale'])
  y = params['embed_VD'][mb.inputs]
  for i in range(cfg.num_decoder_layers):
    b = params['decoder_blocks'][i]
    y = y + _attention(b['attn'], *(2 * [_rms(y, b['attn_norm']['scale'])]), dec_vis, dec_pos, dec_pos)
    y = y + _attention(b['cross'], _rms(y, b['cross_norm']['scale']), enc, cross_vis)
    y = y + _mlp(b['mlp'], _rms(y, b['mlp_norm']['scale']))
  head = params['embed_VD'].T if cfg.tie_embeddings else params['head_DV']
  return _rms(y, params['final_norm']['scale']) @ head


def model_logits(cfg: ModelConfig, params, mb) -> jax.Array:
  return params_lib.apply(cfg, params)(mb.inputs, mb.mask, mb.encoder_inputs, mb.encoder_mask)


def _loss(logits_fn, cfg, mb):
  """A scalar touching every logit with distinct weights, so gradients see each one."""
  probe = jax.random.normal(jax.random.PRNGKey(9), mb.inputs.shape + (cfg.vocab_size,))
  return lambda p: jnp.sum(logits_fn(cfg, p, mb) * probe)


@pytest.mark.parametrize('variant', [{}, dict(share_embeddings=False, tie_embeddings=False)])
def test_matches_the_plain_reference_logits_and_gradients(variant):
  cfg = dataclasses.replace(CFG, **variant)
  params, mb = params_lib.init(cfg, 1), encdec_batch()
  with jax.default_matmul_precision('float32'):
    np.testing.assert_allclose(model_logits(cfg, params, mb), reference_logits(cfg, params, mb), atol=1e-5,
                               rtol=1e-5)
    got = jax.jit(jax.grad(_loss(model_logits, cfg, mb)))(params)
    want = jax.jit(jax.grad(_loss(reference_logits, cfg, mb)))(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)  # every weight is used
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def params():
  return params_lib.init(CFG, 0)


def _bump(x_BS: jax.Array, t: int) -> jax.Array:
  return x_BS.at[:, t].set(8 + (x_BS[:, t] - 7) % (V - 8))


def test_changing_decoder_token_t_plus_1_never_changes_logits_up_to_t(params):
  mb = encdec_batch(seed=2)
  base = model_logits(CFG, params, mb)
  for t in (0, 3, 7):
    out = model_logits(CFG, params, dataclasses.replace(mb, inputs=_bump(mb.inputs, t + 1)))
    np.testing.assert_array_equal(np.asarray(out[:, :t + 1]), np.asarray(base[:, :t + 1]))
    real = np.asarray(mb.mask.segment_ids[:, t + 1]) != 0
    assert not np.allclose(out[real, t + 1], base[real, t + 1])


def test_the_encoder_sees_all_its_inputs_and_documents_stay_apart(params):
  """Changing any encoder token of document 1 changes every decoder logit of document 1 (its first included) and
  no logit of document 2."""
  mb = encdec_batch(seed=3)
  base = np.asarray(model_logits(CFG, params, mb))
  enc_seg, dec_seg = np.asarray(mb.encoder_mask.segment_ids), np.asarray(mb.mask.segment_ids)
  last = int((enc_seg[0] == 1).sum()) - 1
  for t in (0, last):  # the first and the last input token of document 1 in row 0
    out = np.asarray(model_logits(CFG, params, dataclasses.replace(mb, encoder_inputs=_bump(mb.encoder_inputs, t))))
    doc1, doc2 = dec_seg[0] == 1, dec_seg[0] == 2
    assert np.all(np.abs(out[0, doc1] - base[0, doc1]).max(-1) > 0), t
    np.testing.assert_array_equal(out[0, doc2], base[0, doc2])


@pytest.mark.parametrize('variant', [dict(attention='blockwise', q_block=4, kv_block=4),
                                     dict(attention='blockwise', q_block=8, kv_block=4, ffn='blockwise', ffn_block=4),
                                     dict(scan_layers=True, remat=True)])
def test_variants_equal_vanilla_logits_and_gradients(params, variant):
  cfg, mb = dataclasses.replace(CFG, **variant), encdec_batch(seed=4)
  weights = _layout(cfg, params)
  l0, g0 = jax.jit(jax.value_and_grad(_loss(model_logits, CFG, mb)))(params)
  l1, g1 = jax.jit(jax.value_and_grad(_loss(model_logits, cfg, mb)))(weights)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(_layout(cfg, g0)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _layout(cfg: ModelConfig, unrolled: dict) -> dict:
  """Unrolled params (or grads) in cfg's layout: with scan_layers, each stack's leaves on a leading layer axis."""
  if not cfg.scan_layers:
    return unrolled
  stack = lambda blocks: jax.tree.map(lambda *xs: jnp.stack(xs), *(blocks[i] for i in range(len(blocks))))
  return {k: stack(v) if k.endswith('_blocks') else v for k, v in unrolled.items()}


@pytest.mark.parametrize('scan_layers', [False, True])
def test_cached_sampling_equals_the_full_forward_at_every_step(params, scan_layers):
  """Encode once, then feed the decoder one token at a time through the self-attention cache with cached cross-
  attention k/v: the logits of the full forward pass at every position (one document per row, float32)."""
  cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
  weights = _layout(cfg, params)
  B, T = 2, 12
  rng = np.random.default_rng(5)
  enc_tokens = jnp.asarray(rng.integers(8, V, (B, S)), jnp.int32)
  enc_seg = jnp.asarray(np.arange(S)[None] < np.array([[T], [T - 5]]), jnp.int32)  # rows 12 and 7 input tokens
  enc_mask = AttentionMask(enc_seg, jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S)),
                           jnp.ones((B, S), bool))
  dec_tokens = jnp.asarray(rng.integers(8, V, (B, S)), jnp.int32).at[:, 0].set(SPEC.pad_id)
  full = params_lib.apply(cfg, weights)(dec_tokens, AttentionMask.causal(B, S), enc_tokens, enc_mask)

  @jax.jit
  def decode(cache, tokens_B, position):
    return params_lib.apply(cfg, weights).decode(tokens_B[:, None], cache, position)

  cache = jax.jit(lambda t, m: params_lib.apply(cfg, weights).init_cache(t, m, S))(enc_tokens, enc_mask)
  for position in range(S):
    logits_BV, cache = decode(cache, dec_tokens[:, position], jnp.int32(position))
    np.testing.assert_allclose(logits_BV, full[:, position], atol=1e-5, rtol=1e-5, err_msg=f'position {position}')


AXES = ('data', 'fsdp', 'tensor', 'sequence')


def test_ring_on_8_devices_equals_vanilla_logits_and_gradients():
  """Ring attention in the encoder's and the decoder's self-attention and in cross-attention over the sequence-
  sharded encoder output (its k/v go round the ring), zig-zag layout, 8 devices on `sequence`; the loss sums over
  positions, so it and the gradients compare without undoing the layout."""
  from sharding import rules  # the default rules put `length` on the sequence axis

  seq_len = 32
  mb = encdec_batch(seed=6, rows=2, seq_len=seq_len)
  vanilla = dataclasses.replace(CFG, num_encoder_layers=1, num_decoder_layers=1)  # one of each attention: compiles
  cfg, params = dataclasses.replace(vanilla, attention='ring', q_block=2, kv_block=2), params_lib.init(vanilla, 6)
  l0, g0 = jax.jit(jax.value_and_grad(_loss(model_logits, vanilla, mb)))(params)
  perm = zigzag_permutation(seq_len, 8)
  zig = jax.tree.map(lambda x: x[:, perm], mb)
  probe = jax.random.normal(jax.random.PRNGKey(9), mb.inputs.shape + (CFG.vocab_size,))[:, perm]
  mesh = jax.make_mesh((1, 1, 1, 8), AXES, axis_types=(AxisType.Auto,) * 4)
  with jax.set_mesh(mesh), rules.use(rules.DEFAULT_RULES):
    loss = jax.jit(jax.value_and_grad(lambda p: jnp.sum(model_logits(cfg, p, zig) * probe)))
    l1, g1 = loss(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- the adapter ---------------------------------------------------------------------------------------------


def test_adapter_on_a_hand_made_row():
  """Docs of 6 and 4 tokens, prefixes of 3 and 2 (fraction 0.5): encoder x0 x1 x2 | u0 u1, decoder <s> y0 y1 |
  <s> w0, targets y0 y1 y2 | w0 w1, all weights 1, positions restarting per document."""
  tokens = np.array([[10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 0, 0]], np.int32)
  seg = np.array([[1] * 6 + [2] * 4 + [0] * 2], np.int32)
  pos = np.array([list(range(6)) + list(range(4)) + [0, 0]], np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(seg), 'positions': jnp.asarray(pos)}
  spec = dataclasses.replace(SPEC, prefix_min_frac=0.5, prefix_max_frac=0.5)
  mb = to_encoder_decoder(objectives.get('prefix_lm')(batch, jax.random.PRNGKey(0), spec), spec)
  pad = [0] * 7
  np.testing.assert_array_equal(mb.encoder_inputs[0], [10, 11, 12, 20, 21] + pad)
  np.testing.assert_array_equal(mb.encoder_mask.segment_ids[0], [1, 1, 1, 2, 2] + pad)
  np.testing.assert_array_equal(mb.encoder_mask.positions[0, :5], [0, 1, 2, 0, 1])
  assert bool(mb.encoder_mask.bidirectional.all())
  np.testing.assert_array_equal(mb.inputs[0], [0, 13, 14, 0, 22] + pad)
  np.testing.assert_array_equal(mb.targets[0], [13, 14, 15, 22, 23] + pad)
  np.testing.assert_array_equal(mb.weights[0], [1, 1, 1, 1, 1] + pad)
  np.testing.assert_array_equal(mb.mask.segment_ids[0], [1, 1, 1, 2, 2] + pad)
  np.testing.assert_array_equal(mb.mask.positions[0, :5], [0, 1, 2, 0, 1])
  assert not bool(mb.mask.bidirectional.any())


def test_adapter_scores_exactly_the_decoder_forms_targets():
  """Random splits of random packed rows: the same (document, target, weight) triples in the same order."""
  for seed in range(5):
    batch = packed_batch(seed, rows=4, seq_len=24)
    form = objectives.get('prefix_lm')(batch, jax.random.PRNGKey(seed), SPEC)
    mb = to_encoder_decoder(form, SPEC)
    for r in range(4):
      scored = np.asarray(form.weights[r]) > 0
      got = np.asarray(mb.weights[r]) > 0
      np.testing.assert_array_equal(np.asarray(mb.targets[r])[got], np.asarray(form.targets[r])[scored])
      np.testing.assert_array_equal(np.asarray(mb.mask.segment_ids[r])[got],
                                    np.asarray(form.mask.segment_ids[r])[scored])
      assert float(mb.weights[r].sum()) == float(form.weights[r].sum())
