"""Pallas kernels (splash for TPU, Triton mha for GPU) in interpret mode on CPU against the [S, S]-mask reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import pallas as pa
from models.attention import AttentionMask
from models.attention.pallas import MaskKind
from tests.test_attention import dense_mask, make_mask, random_qkv, reference

B, S, H, K, E = 2, 256, 4, 2, 16  # GQA; S holds two of splash's 128-lane blocks
BLOCKS = {'tpu': 128, 'gpu': 64}


def _without_bidirectional(mask: AttentionMask) -> AttentionMask:
  return dataclasses.replace(mask, bidirectional=jnp.zeros_like(mask.bidirectional))


def _pipeline_padding(mask: AttentionMask) -> AttentionMask:
  """Pads as data/packing.py writes them: segment 0, position 0, so every pad sees every pad (not causally)."""
  return dataclasses.replace(mask, positions=jnp.where(mask.segment_ids == 0, 0, mask.positions))


def _masked_lm(mask: AttentionMask) -> AttentionMask:
  """Every real token bidirectional within its document, pads not (as train/objectives/masked_lm.py)."""
  return dataclasses.replace(_pipeline_padding(mask), bidirectional=mask.segment_ids > 0)


CASES = {  # name -> (mask, kind)
    'causal': (lambda: make_mask('causal', B, S), MaskKind('none', packed=False)),
    'packed_causal': (lambda: _pipeline_padding(_without_bidirectional(make_mask('packed', B, S, seed=2))),
                      MaskKind('none')),
    'masked_lm': (lambda: _masked_lm(make_mask('packed', B, S, seed=3)), MaskKind('all')),
    'prefix': (lambda: make_mask('prefix', B, S, seed=4), MaskKind('prefix', packed=False)),
    'packed_prefix': (lambda: make_mask('packed', B, S, seed=5), MaskKind('prefix')),  # a short prefix per document
}


def _expected(q, k, v, do, mask):
  """Reference output (float64) and (dq, dk, dv) (float32) from the dense mask, inputs upcast."""
  visible = dense_mask(mask)
  expected = reference(*(np.asarray(x, np.float64) for x in (q, k, v)), visible)
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  grads = jax.vjp(lambda q, k, v: reference(q, k, v, jnp.asarray(visible), xp=jnp), *upcast)[1](do)
  return expected, grads


def _outputs_and_grads(q, k, v, do, mask, kind, platform):
  attend = lambda q, k, v: pa.pallas_attention(q, k, v, mask, kind=kind, platform=platform, interpret=True,
                                               q_block=BLOCKS[platform], kv_block=BLOCKS[platform])
  out, vjp = jax.vjp(attend, q, k, v)
  return out, vjp(do.astype(out.dtype))


def _real_rows(mask: AttentionMask, x: jax.Array) -> np.ndarray:
  """Rows of real tokens: pad rows (and pad keys' gradients) are free to differ when pads do not count up."""
  return np.asarray(x, np.float64)[np.asarray(mask.segment_ids) > 0]


@pytest.mark.parametrize('platform', ['tpu', 'gpu'])
@pytest.mark.parametrize('case', list(CASES))
def test_matches_reference_float32(platform, case):
  make, kind = CASES[case]
  mask = make()
  q, k, v, do = random_qkv(B, S, H, K, E, seed=1)
  out, grads = jax.jit(_outputs_and_grads, static_argnums=(5, 6))(q, k, v, do, mask, kind, platform)
  expected, expected_grads = _expected(q, k, v, do, mask)
  assert out.dtype == jnp.float32
  assert all(np.isfinite(x).all() for x in (out, *grads)), 'pad rows must stay finite too'
  np.testing.assert_allclose(_real_rows(mask, out), _real_rows(mask, expected), atol=2e-5, rtol=2e-5)
  for name, got, want in zip('qkv', grads, expected_grads):
    np.testing.assert_allclose(_real_rows(mask, got), _real_rows(mask, want), atol=1e-4, rtol=1e-4,
                               err_msg=f'd{name}')


@pytest.mark.parametrize('platform', ['tpu', 'gpu'])
def test_matches_reference_bfloat16(platform):
  """Packed prefix LM (both kernel calls) in bfloat16: every error under 1e-2 of the largest |value|."""
  make, kind = CASES['packed_prefix']
  mask = make()
  q, k, v, do = random_qkv(B, S, H, K, E, dtype=jnp.bfloat16, seed=6)
  out, grads = jax.jit(_outputs_and_grads, static_argnums=(5, 6))(q, k, v, do, mask, kind, platform)
  expected, expected_grads = _expected(q, k, v, do, mask)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  for name, got, want in zip(['out', 'dq', 'dk', 'dv'], (out, *grads), (expected, *expected_grads)):
    got, want = _real_rows(mask, got), _real_rows(mask, want)
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max(), name


@pytest.mark.parametrize('causal', [True, False])
def test_splash_ring_hops_merge_to_reference(causal):
  """Two hops over the two halves of k/v (natural order), merged by log-sum-exp, each hop's backward given the
  merged out and lse: the full attention and its gradients. The causal second hop hides every key from the first
  half of the queries (splash alone returns NaN there)."""
  mask = _without_bidirectional(make_mask('packed', B, S, seed=7))
  if not causal:
    mask = dataclasses.replace(mask, bidirectional=jnp.ones_like(mask.bidirectional))
  q, k, v, do = random_qkv(B, S, H, K, E, seed=8)
  T, seg_BS = S // 2, mask.segment_ids
  hops = [(slice(0, T), 0 if causal else None), (slice(T, S), -T if causal else None)]

  @jax.jit
  def run(q, k, v, do, seg_BS):
    options = dict(blocks=(128, 128), interpret=True)
    parts = [pa.splash_forward_with_lse(q, k[:, keys], v[:, keys], seg_BS, seg_BS[:, keys], causal_offset=offset,
                                        **options) for keys, offset in hops]
    out, lse = pa.merge(*parts[0], *parts[1])
    out = out.astype(q.dtype)
    grads = [pa.splash_backward_with_lse(q, k[:, keys], v[:, keys], seg_BS, seg_BS[:, keys], out, lse, do,
                                         causal_offset=offset, **options) for keys, offset in hops]
    dq = grads[0][0] + grads[1][0]
    dk, dv = (jnp.concatenate([g[i] for g in grads], axis=1) for i in (1, 2))
    return out, parts[1][1], (dq, dk, dv)

  out, second_lse, grads = run(q, k, v, do, seg_BS)
  if causal:
    assert np.isneginf(second_lse[:, :T]).all()
  expected, expected_grads = _expected(q, k, v, do, mask)
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)
  for name, got, want in zip('qkv', grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f'd{name}')


@pytest.mark.parametrize('platform, kind, seq_len, blocks, fragment', [
    ('cpu', MaskKind(), 256, 128, "platform 'cpu'"),
    ('tpu', MaskKind(natural_order=False), 256, 128, 'natural order'),
    ('tpu', MaskKind(bidirectional='random'), 256, 128, "'random'"),
    ('tpu', MaskKind(), 256, 64, 'multiples of 128'),
    ('gpu', MaskKind(), 192, 96, 'powers of two'),
    ('gpu', MaskKind(), 96, 64, 'must divide'),
])
def test_unsupported_reason_names_the_problem(platform, kind, seq_len, blocks, fragment):
  reason = pa.unsupported_reason(platform, kind, seq_len, blocks, blocks)
  assert fragment in reason and '\n' not in reason


@pytest.mark.parametrize('platform', ['tpu', 'gpu'])
@pytest.mark.parametrize('bidirectional', pa.BIDIRECTIONAL)
def test_every_mask_kind_is_served(platform, bidirectional):
  assert pa.unsupported_reason(platform, MaskKind(bidirectional), 1024, 128, 128) is None
