"""Ring attention on 8 fake CPU devices against the single-device reference, natural and zig-zag layouts; its
splash hops (Pallas' interpreter) on 4."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from models.attention import AttentionMask, attend, blockwise, dispatch, ring
from models.attention.ring import zigzag_inverse_permutation, zigzag_permutation
from tests.test_attention import _outputs_and_grads, _visited, dense_mask, make_mask, random_qkv, reference
from tests.test_pallas_attention import _expected, _masked_lm, _pipeline_padding, _without_bidirectional

AXES = ('data', 'fsdp', 'tensor', 'sequence')
S, H, K, E, BLOCK = 128, 4, 2, 8, 8


def test_zigzag_permutation():
  perm = zigzag_permutation(16, 4)
  np.testing.assert_array_equal(perm[:4], [0, 1, 14, 15])  # device 0: first and last chunk
  np.testing.assert_array_equal(perm[4:8], [2, 3, 12, 13])
  x = np.arange(16) * 10
  np.testing.assert_array_equal(x[perm][zigzag_inverse_permutation(16, 4)], x)
  with pytest.raises(ValueError):
    zigzag_permutation(12, 4)


def _ring_outputs_and_grads(q, k, v, do, mask):
  out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask, kind='ring', q_block=BLOCK, kv_block=BLOCK), q, k, v)
  return out, vjp(do)


@pytest.mark.parametrize('shape, axis_type, batch', [
    ((1, 1, 1, 8), AxisType.Explicit, 3),
    ((2, 1, 1, 4), AxisType.Auto, 2),
    ((1, 1, 2, 4), AxisType.Explicit, 2),  # heads over tensor: each device keeps its query heads' kv heads
])
def test_ring_matches_reference(shape, axis_type, batch):
  mesh = jax.make_mesh(shape, AXES, axis_types=(axis_type,) * 4)
  n = shape[-1]
  perm, inverse = zigzag_permutation(S, n), zigzag_inverse_permutation(S, n)
  run = jax.jit(_ring_outputs_and_grads)
  q, k, v, do = random_qkv(batch=batch, seq_len=S, heads=H, kv_heads=K, head_dim=E, seed=7)
  cases = [('causal', False), ('causal', True), ('prefix', True), ('packed', True), ('bidirectional', False)]
  for mask_kind, zigzag in cases:
    mask = make_mask(mask_kind, batch, S, seed=8)
    visible = dense_mask(mask)
    expected = reference(*(np.asarray(x, np.float64) for x in (q, k, v)), visible)
    expected_grads = jax.vjp(lambda q, k, v: reference(q, k, v, jnp.asarray(visible), xp=jnp), q, k, v)[1](do)
    order = perm if zigzag else np.arange(S)
    layout = lambda x: x[:, order]
    with jax.set_mesh(mesh):
      out, grads = run(*map(layout, (q, k, v, do)), jax.tree.map(layout, mask))
    restore = lambda x: np.asarray(x)[:, inverse if zigzag else order]
    case = f'{mask_kind} zigzag={zigzag}'
    np.testing.assert_allclose(restore(out), expected, atol=2e-5, rtol=2e-5, err_msg=case)
    for name, got, want in zip('qkv', grads, expected_grads):
      np.testing.assert_allclose(restore(got), want, atol=1e-4, rtol=1e-4, err_msg=f'{case} d{name}')


def _ring_visited(mask: AttentionMask, n: int, block: int) -> int:
  """Block pairs the ring's forward computes, summed over its n devices (natural layout)."""
  batch, seq_len = mask.positions.shape
  q, k, v, _ = random_qkv(batch=batch, seq_len=seq_len, heads=1, kv_heads=1, head_dim=4)
  mesh = jax.make_mesh((1, 1, 1, n), AXES, axis_types=(AxisType.Auto,) * 4, devices=jax.devices()[:n])

  def local(q, k, v, mask):
    internal = blockwise.to_internal(q, k, v)
    hops = ring.JaxHops(block, block)
    return lax.psum(ring._forward(*internal, mask, mask, ring.Ring('sequence', n), hops)[2], 'sequence')

  specs = (P(None, 'sequence'),) * 4
  return int(jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=False))(q, k, v, mask))


def test_ring_skips_exactly_the_hidden_block_pairs():
  """4 devices x 2 blocks: the ring computes the block pairs single-device blockwise does on the same 8 x 8 grid,
  so causal hops from later devices (device 0 never needs device 3's chunk) and documents that never meet cost
  nothing."""
  seq_len, block = 256, 32
  tokens = np.tile(np.arange(seq_len, dtype=np.int32), (2, 1))
  packed = AttentionMask(jnp.asarray(tokens // 64 + 1), jnp.asarray(tokens % 64), jnp.zeros((2, seq_len), bool))
  for kind, mask, pairs in [('causal', make_mask('causal', 2, seq_len), 36), ('packed', packed, 12),
                            ('bidirectional', make_mask('bidirectional', 2, seq_len), 64)]:
    assert _visited(mask, block) == pairs, kind
    assert _ring_visited(mask, 4, block) == pairs, kind


def test_ring_needs_a_sequence_axis():
  q, k, v, _ = random_qkv(batch=2, seq_len=32, heads=2, kv_heads=2, head_dim=4)
  mask = AttentionMask.causal(2, 32)
  with pytest.raises(ValueError, match='sequence'):
    attend(q, k, v, mask, kind='ring')
  with jax.set_mesh(jax.make_mesh((8, 1, 1, 1), AXES)):
    with pytest.raises(ValueError, match='sequence'):
      attend(q, k, v, mask, kind='ring')
  q, k, v, _ = random_qkv(batch=2, seq_len=24, heads=2, kv_heads=2, head_dim=4)
  with jax.set_mesh(jax.make_mesh((1, 1, 1, 8), AXES)):
    with pytest.raises(ValueError, match='even per-device length'):  # 3 tokens per device: one block, not two
      attend(q, k, v, AttentionMask.causal(2, 24), kind='ring')


def test_bfloat16_outputs_and_gradients_every_path():
  """bfloat16 in and out, softmax statistics in float32: each path within bfloat16 error of a float64 reference of
  the same (rounded) inputs, relative to the reference's largest magnitude; ring on 8 devices in zig-zag order."""
  q, k, v, do = random_qkv(batch=2, seq_len=S, heads=H, kv_heads=K, head_dim=E, dtype=jnp.bfloat16, seed=9)
  do = do.astype(jnp.bfloat16)
  mask = make_mask('packed', 2, S, seed=10)
  visible = dense_mask(mask)
  with jax.enable_x64():
    q64, k64, v64, do64 = (jnp.asarray(x, jnp.float64) for x in (q, k, v, do))
    expected, vjp = jax.vjp(lambda q, k, v: reference(q, k, v, jnp.asarray(visible), xp=jnp), q64, k64, v64)
    expected = (np.asarray(expected), *map(np.asarray, vjp(do64)))
  results = _outputs_and_grads(q, k, v, do, mask)
  perm, inverse = zigzag_permutation(S, 8), zigzag_inverse_permutation(S, 8)
  with jax.set_mesh(jax.make_mesh((1, 1, 1, 8), AXES)):
    ring = jax.jit(_ring_outputs_and_grads)(*(x[:, perm] for x in (q, k, v, do)),
                                            jax.tree.map(lambda a: a[:, perm], mask))
  results['ring'] = jax.tree.map(lambda x: np.asarray(x)[:, inverse], ring)
  for kind, (out, grads) in results.items():
    for name, got, want in zip(('out', 'dq', 'dk', 'dv'), (out, *grads), expected):
      assert got.dtype == jnp.bfloat16, f'{kind} {name}'
      error = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
      assert error < 1e-2, f'{kind} {name}: max error {error:.3g} of the largest value'  # measured <= 4.3e-3


SPLASH_CASES = {  # name -> mask of 2 rows x 1024 tokens, as the objectives make it (kind set)
    'causal': lambda: dataclasses.replace(make_mask('causal', 2, 1024), kind='none'),
    'packed_causal': lambda: dataclasses.replace(
        _pipeline_padding(_without_bidirectional(make_mask('packed', 2, 1024, seed=11))), kind='none'),
    'masked_lm': lambda: dataclasses.replace(_masked_lm(make_mask('packed', 2, 1024, seed=12)), kind='all'),
}


@pytest.mark.parametrize('case, layout, dtype', [('packed_causal', 'zigzag', jnp.float32),
                                                 ('causal', 'natural', jnp.float32),
                                                 ('masked_lm', 'zigzag', jnp.float32),
                                                 ('packed_causal', 'zigzag', jnp.bfloat16)])
def test_splash_hops_match_reference(case, layout, dtype):
  """Ring attention with every hop through splash (Pallas' interpreter) on 4 devices, GQA: each device's two
  128-token half-chunks meet every visiting half-chunk under a full, causal or no mask. Out, dq, dk, dv of real
  tokens against the [S, S] reference; float32 to 1e-4, bfloat16 within 1e-2 of the largest value."""
  mask = SPLASH_CASES[case]()
  q, k, v, do = random_qkv(batch=2, seq_len=1024, heads=4, kv_heads=2, head_dim=16, dtype=dtype, seed=13)
  expected, expected_grads = _expected(q, k, v, do, mask)
  n = 4
  if layout == 'zigzag':
    perm, inverse = zigzag_permutation(1024, n), zigzag_inverse_permutation(1024, n)
    q, k, v, do, mask = ring.to_zigzag((q, k, v, do, mask), n)
    assert mask.layout == 'zigzag'
  else:
    perm = inverse = np.arange(1024)

  def outputs_and_grads(q, k, v, do, mask):
    attend_ring = lambda q, k, v: attend(q, k, v, mask, kind='ring', q_block=128, kv_block=128, kernel='pallas')
    out, vjp = jax.vjp(attend_ring, q, k, v)
    return out, vjp(do.astype(dtype))

  mesh = jax.make_mesh((1, 1, 1, n), AXES, axis_types=(AxisType.Explicit,) * 4, devices=jax.devices()[:n])
  with jax.set_mesh(mesh), dispatch.interpret_as('tpu'):
    out, grads = jax.jit(outputs_and_grads)(q, k, v, do, mask)
  restore = lambda x: np.asarray(x, np.float64)[:, inverse]
  real = lambda x: x[np.asarray(mask.segment_ids)[:, inverse] > 0]
  for name, got, want in zip(('out', 'dq', 'dk', 'dv'), (out, *grads), (expected, *expected_grads)):
    assert got.dtype == dtype, name
    got, want = real(restore(got)), real(np.asarray(want, np.float64))
    if dtype == jnp.float32:
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f'{case} {layout} {name}')
    else:
      assert np.abs(got - want).max() < 1e-2 * np.abs(want).max(), f'{case} {layout} {name}'  # measured <= 4.7e-3
