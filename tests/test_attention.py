"""Vanilla and blockwise attention against a plain [S, S]-mask reference written here, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from configs.errors import ConfigError
from configs.validate import validate
from models.attention import AttentionMask, attend, blockwise
from tests.conftest import typed

B, S, H, K, E = 3, 64, 4, 2, 16  # odd batch, GQA
Q_BLOCK, KV_BLOCK = 16, 8
MASK_KINDS = ('causal', 'prefix', 'bidirectional', 'packed')


def make_mask(kind: str, batch: int, seq_len: int, seed: int = 0) -> AttentionMask:
  """Masks as the data pipeline builds them: segments from 1, 0 = trailing padding, positions per document."""
  rng = np.random.default_rng(seed)
  segment_ids = np.ones((batch, seq_len), np.int32)
  positions = np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1))
  bidirectional = np.zeros((batch, seq_len), bool)
  if kind == 'prefix':
    bidirectional = positions < rng.integers(1, seq_len, size=(batch, 1))
  elif kind == 'bidirectional':
    bidirectional[:] = True
  elif kind == 'packed':
    for b in range(batch):
      ends = np.sort(rng.choice(np.arange(1, seq_len - 4), size=3, replace=False))
      starts = np.concatenate([[0], ends])
      for doc, (start, end) in enumerate(zip(starts, np.concatenate([ends, [seq_len - 3]]))):
        segment_ids[b, start:end] = doc + 1
        positions[b, start:end] = np.arange(end - start)
        bidirectional[b, start:start + rng.integers(0, 3)] = True  # a short prefix in some documents
      segment_ids[b, seq_len - 3:] = 0
      positions[b, seq_len - 3:] = np.arange(3)
  else:
    assert kind == 'causal', kind
  return AttentionMask(jnp.asarray(segment_ids), jnp.asarray(positions), jnp.asarray(bidirectional))


def dense_mask(mask: AttentionMask) -> np.ndarray:
  """The rule spelled out directly, [B, S, S]: same segment and (key not after query or key bidirectional)."""
  seg, pos, bidi = (np.asarray(a) for a in (mask.segment_ids, mask.positions, mask.bidirectional))
  return (seg[:, :, None] == seg[:, None, :]) & ((pos[:, None, :] <= pos[:, :, None]) | bidi[:, None, :])


def reference(q, k, v, visible_BST, xp=np):
  """Plain attention with repeated kv heads; numpy float64 for forward, jax float32 for gradients."""
  groups = q.shape[2] // k.shape[2]
  k, v = xp.repeat(k, groups, axis=2), xp.repeat(v, groups, axis=2)
  logits = xp.einsum('bshe,bthe->bhst', q, k) / np.sqrt(q.shape[-1])
  logits = xp.where(visible_BST[:, None], logits, -np.inf)
  probs = xp.exp(logits - logits.max(-1, keepdims=True))
  probs = probs / probs.sum(-1, keepdims=True)
  return xp.einsum('bhst,bthe->bshe', probs, v)


def random_qkv(batch=B, seq_len=S, heads=H, kv_heads=K, head_dim=E, dtype=jnp.float32, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(kq, (batch, seq_len, heads, head_dim), dtype),
          jax.random.normal(kk, (batch, seq_len, kv_heads, head_dim), dtype),
          jax.random.normal(kv, (batch, seq_len, kv_heads, head_dim), dtype),
          jax.random.normal(kd, (batch, seq_len, heads, head_dim), jnp.float32))


def test_reference_is_causal_softmax():
  """The reference itself: row 0 of a causal mask copies v[0]; a bidirectional mask averages uniformly at q = 0."""
  q, k, v, _ = (np.asarray(x, np.float64) for x in random_qkv())
  out = reference(q, k, v, dense_mask(make_mask('causal', B, S)))
  np.testing.assert_allclose(out[:, 0], np.repeat(v[:, 0], H // K, axis=1), atol=1e-12)
  out = reference(np.zeros_like(q), k, v, dense_mask(make_mask('bidirectional', B, S)))
  np.testing.assert_allclose(out, np.repeat(v.mean(1, keepdims=True), H // K, axis=2).repeat(S, 1), atol=1e-12)


@jax.jit
def _outputs_and_grads(q, k, v, do, mask):
  """Every single-device path's output and (dq, dk, dv) for cotangent do, in one compile."""
  results = {}
  for kind in ('vanilla', 'blockwise'):
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask, kind=kind, q_block=Q_BLOCK, kv_block=KV_BLOCK), q, k, v)
    results[kind] = (out, vjp(do.astype(out.dtype)))
  return results


@pytest.mark.parametrize('mask_kind', MASK_KINDS)
def test_paths_match_reference(mask_kind):
  q, k, v, do = random_qkv(seed=1)
  mask = make_mask(mask_kind, B, S, seed=2)
  visible = dense_mask(mask)
  expected = reference(*(np.asarray(x, np.float64) for x in (q, k, v)), visible)
  expected_grads = jax.vjp(lambda q, k, v: reference(q, k, v, jnp.asarray(visible), xp=jnp), q, k, v)[1](do)
  for kind, (out, grads) in _outputs_and_grads(q, k, v, do, mask).items():
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5, err_msg=kind)
    for name, got, want in zip('qkv', grads, expected_grads):
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f'{kind} d{name}')


def test_bfloat16_forward():
  q, k, v, _ = random_qkv(dtype=jnp.bfloat16, seed=3)
  mask = make_mask('packed', B, S, seed=4)
  expected = reference(*(np.asarray(x, np.float64) for x in (q, k, v)), dense_mask(mask))
  for kind in ('vanilla', 'blockwise'):
    out = jax.jit(lambda q, k, v, m: attend(q, k, v, m, kind=kind, q_block=Q_BLOCK, kv_block=KV_BLOCK))(q, k, v, mask)
    assert out.dtype == jnp.bfloat16, kind
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=3e-2, rtol=3e-2, err_msg=kind)


def test_multi_head_attention_without_gqa():
  q, k, v, _ = random_qkv(batch=2, kv_heads=H, seed=5)
  mask = make_mask('prefix', 2, S, seed=6)
  out = jax.jit(lambda q, k, v, m: attend(q, k, v, m, kind='blockwise', q_block=8, kv_block=32))(q, k, v, mask)
  expected = reference(*(np.asarray(x, np.float64) for x in (q, k, v)), dense_mask(mask))
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)


def _visited(mask: AttentionMask, block: int) -> int:
  q, k, v, _ = random_qkv(batch=mask.positions.shape[0], seq_len=mask.positions.shape[1], heads=1, kv_heads=1,
                          head_dim=4)
  internal = blockwise.to_internal(q, k, v)
  return int(jax.jit(blockwise.forward_chunk, static_argnums=(5, 6))(
      *internal, mask, mask, block, block)[2])


def test_blockwise_skips_hidden_blocks():
  """8 x 8 blocks: causal visits the lower triangle, 4 aligned documents only their own triangles."""
  seq_len, block = 256, 32
  assert _visited(make_mask('bidirectional', 2, seq_len), block) == 64
  assert _visited(make_mask('causal', 2, seq_len), block) == 36
  tokens = np.tile(np.arange(seq_len, dtype=np.int32), (2, 1))
  packed = AttentionMask(jnp.asarray(tokens // 64 + 1), jnp.asarray(tokens % 64), jnp.zeros((2, seq_len), bool))
  assert _visited(packed, block) == 4 * 3


def test_blockwise_memory_is_linear():
  """fwd+bwd temporaries at S=2048: vanilla holds [S, S] probabilities, blockwise only O(S) blocks."""
  seq_len = 2048
  q, k, v, _ = (jax.ShapeDtypeStruct((1, seq_len, 2, 32), jnp.float32) for _ in range(4))
  mask = jax.eval_shape(lambda: AttentionMask.causal(1, seq_len))

  def temp_bytes(kind):
    loss = lambda q, k, v, m: attend(q, k, v, m, kind=kind).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  vanilla, blockwise = temp_bytes('vanilla'), temp_bytes('blockwise')
  assert vanilla > 2 * seq_len * seq_len * 4  # at least one [H, S, S] float32 buffer
  assert blockwise < vanilla / 16, (blockwise, vanilla)


def _validate_attention(kind: str, seq_len: int, q_block: int, kv_block: int, sequence: int, num_heads: int,
                        num_kv_heads: int) -> None:
  """The config checks of an attention setting: its section's own, then those spanning sections, on `sequence`
  devices forming the sequence axis."""
  c = tiny.get_config()
  c.model.attention, c.model.q_block, c.model.kv_block = kind, q_block, kv_block
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = num_heads, num_kv_heads, 8
  c.data.seq_len, c.mesh.data, c.mesh.sequence, c.train.batch_size = seq_len, 1, sequence, 4
  validate(typed(c), sequence)


@pytest.mark.parametrize('args, key', [
    (('flash', 256, 128, 128, 1, 4, 4), 'model.attention'),
    (('blockwise', 256, 0, 128, 1, 4, 4), 'model.q_block'),
    (('blockwise', 256, 128, 96, 1, 4, 4), 'model.kv_block'),
    (('ring', 256, 128, 128, 1, 4, 4), 'mesh.sequence'),
    (('ring', 100, 8, 8, 4, 4, 4), 'data.seq_len'),
    (('ring', 256, 48, 32, 4, 4, 4), 'model.q_block'),
    (('vanilla', 256, 128, 128, 1, 4, 3), 'model.num_kv_heads'),
])
def test_validate_attention_names_the_key(args, key):
  with pytest.raises(ConfigError) as error:
    _validate_attention(*args)
  assert error.value.key == key


def test_validate_attention_accepts_good_configs():
  _validate_attention('vanilla', 100, 128, 128, 1, 4, 2)
  _validate_attention('blockwise', 64, 128, 128, 1, 4, 4)  # blocks shrink to short sequences
  _validate_attention('ring', 256, 16, 32, 4, 8, 2)
