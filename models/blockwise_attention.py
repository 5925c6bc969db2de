"""Memory-efficient (flash-style) attention in pure JAX: O(S) memory in forward and backward.

Forward: a scan over q blocks, each an online softmax over kv blocks. Backward (custom VJP) recomputes the
probabilities block by block from the saved output and log-sum-exp. Block pairs the mask hides entirely are skipped
with lax.cond, judged from per-block reductions of the mask arrays.

Internal layout: q_BKGSE (G = H // K query heads share a kv head), k_BKTE, v_BKTE, so GQA never repeats k/v.
The chunk functions take a q chunk and a kv chunk of any lengths: blockwise attention is one chunk pair, ring
attention one chunk pair per hop.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

if TYPE_CHECKING:
  from models.attention import AttentionMask


def effective_block(block: int, length: int) -> int:
  """Blocks longer than the sequence (tiny configs) shrink to it rather than fail."""
  return min(block, length)


class BlockSummary(NamedTuple):
  """Per-block reductions of the mask, [B, num_blocks] each: enough to prove a block pair invisible."""
  segment_min: jax.Array
  segment_max: jax.Array
  position_min: jax.Array
  position_max: jax.Array
  any_bidirectional: jax.Array


def summarize(mask: AttentionMask, block: int) -> BlockSummary:
  B, S = mask.segment_ids.shape
  seg_BNL = mask.segment_ids.reshape(B, S // block, block)
  pos_BNL = mask.positions.reshape(B, S // block, block)
  return BlockSummary(seg_BNL.min(-1), seg_BNL.max(-1), pos_BNL.min(-1), pos_BNL.max(-1),
                      mask.bidirectional.reshape(B, S // block, block).any(-1))


def hidden(q: BlockSummary, kv: BlockSummary) -> jax.Array:
  """True when no query of the q block sees any key of the kv block, in every row of the batch.

  Sufficient, not exact: disjoint segment ranges, or every key after every query with no bidirectional key.
  """
  disjoint_B = (q.segment_max < kv.segment_min) | (kv.segment_max < q.segment_min)
  future_B = ~kv.any_bidirectional & (kv.position_min > q.position_max)
  return jnp.all(disjoint_B | future_B)


def _take(x: jax.Array, index: jax.Array, block: int, axis: int) -> jax.Array:
  return lax.dynamic_slice_in_dim(x, index * block, block, axis=axis)


def _take_mask(mask: AttentionMask, index: jax.Array, block: int) -> AttentionMask:
  return jax.tree.map(lambda a: _take(a, index, block, axis=1), mask)


def _pick(summary: BlockSummary, index: jax.Array) -> BlockSummary:
  return BlockSummary(*(a[:, index] for a in summary))


def _logits(q_BKGQE: jax.Array, k_BKTE: jax.Array, q_mask: AttentionMask, kv_mask: AttentionMask) -> tuple:
  """Scaled float32 logits of one block pair and where they are visible."""
  s_BKGQT = jnp.einsum('bkgqe,bkte->bkgqt', q_BKGQE, k_BKTE, preferred_element_type=jnp.float32)
  s_BKGQT = s_BKGQT * q_BKGQE.shape[-1]**-0.5
  return s_BKGQT, q_mask.sees(kv_mask)[:, None, None]


def forward_chunk(q_BKGSE: jax.Array, k_BKTE: jax.Array, v_BKTE: jax.Array, q_mask: AttentionMask,
                  kv_mask: AttentionMask, q_block: int, kv_block: int, skip: jax.Array | bool = False) -> tuple:
  """Returns (out_BKGSE float32 normalised, lse_BKGS float32, visited block pairs).

  Queries that see no key of this chunk get out 0 and lse -inf, which merge cleanly across ring hops. skip=True
  (a ring hop known to be hidden) skips every block pair: cheaper than a cond around the whole chunk, which would
  copy its full-length carry.
  """
  B, K, G, S, E = q_BKGSE.shape
  nq, nk = S // q_block, k_BKTE.shape[2] // kv_block
  q_sum, kv_sum = summarize(q_mask, q_block), summarize(kv_mask, kv_block)

  def q_step(visited, i):
    q_BKGQE = _take(q_BKGSE, i, q_block, axis=3)
    qm = _take_mask(q_mask, i, q_block)

    def kv_step(j, carry):
      def compute(carry):
        o_BKGQE, m_BKGQ, l_BKGQ, count = carry
        v_BKLE = _take(v_BKTE, j, kv_block, axis=2)
        s_BKGQL, vis_B11QL = _logits(q_BKGQE, _take(k_BKTE, j, kv_block, axis=2), qm,
                                     _take_mask(kv_mask, j, kv_block))
        s_BKGQL = jnp.where(vis_B11QL, s_BKGQL, -jnp.inf)
        m_new = jnp.maximum(m_BKGQ, s_BKGQL.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p_BKGQL = jnp.exp(s_BKGQL - m_safe[..., None])
        correction = jnp.exp(m_BKGQ - m_safe)
        pv_BKGQE = jnp.einsum('bkgql,bkle->bkgqe', p_BKGQL.astype(v_BKLE.dtype), v_BKLE,
                              preferred_element_type=jnp.float32)
        return (o_BKGQE * correction[..., None] + pv_BKGQE, m_new, l_BKGQ * correction + p_BKGQL.sum(-1),
                count + 1)

      return lax.cond(skip | hidden(_pick(q_sum, i), _pick(kv_sum, j)), lambda c: c, compute, carry)

    init = (jnp.zeros((B, K, G, q_block, E), jnp.float32), jnp.full((B, K, G, q_block), -jnp.inf),
            jnp.zeros((B, K, G, q_block), jnp.float32), visited)
    o_BKGQE, m_BKGQ, l_BKGQ, visited = lax.fori_loop(0, nk, kv_step, init)
    seen = l_BKGQ > 0
    lse_BKGQ = jnp.where(seen, m_BKGQ + jnp.log(jnp.where(seen, l_BKGQ, 1.0)), -jnp.inf)
    return visited, (o_BKGQE / jnp.where(seen, l_BKGQ, 1.0)[..., None], lse_BKGQ)

  visited, (o_NBKGQE, lse_NBKGQ) = lax.scan(q_step, jnp.int32(0), jnp.arange(nq))
  out_BKGSE = jnp.moveaxis(o_NBKGQE, 0, 3).reshape(B, K, G, S, E)
  lse_BKGS = jnp.moveaxis(lse_NBKGQ, 0, 3).reshape(B, K, G, S)
  return out_BKGSE, lse_BKGS, visited


def backward_chunk(q_BKGSE: jax.Array, k_BKTE: jax.Array, v_BKTE: jax.Array, q_mask: AttentionMask,
                   kv_mask: AttentionMask, do_BKGSE: jax.Array, lse_BKGS: jax.Array, delta_BKGS: jax.Array,
                   grads: tuple, q_block: int, kv_block: int, skip: jax.Array | bool = False) -> tuple:
  """Adds one chunk pair's gradients into grads = (dq_BKGSE, dk_BKTE, dv_BKTE), float32, given the global lse and
  delta = sum(do * out). skip as in forward_chunk.

  Outer loop over kv blocks (a block's dk/dv live in the loop carry), inner loop over q blocks that adds into the
  full-length dq: memory O(S), never [S, S]. Accumulating in place keeps no second copy of any gradient.
  """
  B, K, G, S, E = q_BKGSE.shape
  T = k_BKTE.shape[2]
  nq, nk = S // q_block, T // kv_block
  q_sum, kv_sum = summarize(q_mask, q_block), summarize(kv_mask, kv_block)
  scale = E**-0.5

  def kv_step(j, grads):
    dq_BKGSE, dk_BKTE, dv_BKTE = grads
    k_BKLE = _take(k_BKTE, j, kv_block, axis=2)
    v_BKLE = _take(v_BKTE, j, kv_block, axis=2)
    kvm = _take_mask(kv_mask, j, kv_block)

    def q_step(i, carry):
      def compute(carry):
        dq_BKGSE, dk_BKLE, dv_BKLE = carry
        q_BKGQE = _take(q_BKGSE, i, q_block, axis=3)
        do_BKGQE = _take(do_BKGSE, i, q_block, axis=3)
        s_BKGQL, vis_B11QL = _logits(q_BKGQE, k_BKLE, _take_mask(q_mask, i, q_block), kvm)
        lse_BKGQ = _take(lse_BKGS, i, q_block, axis=3)
        p_BKGQL = jnp.where(vis_B11QL, jnp.exp(s_BKGQL - lse_BKGQ[..., None]), 0.0)
        dv_BKLE = dv_BKLE + jnp.einsum('bkgql,bkgqe->bkle', p_BKGQL.astype(do_BKGQE.dtype), do_BKGQE,
                                       preferred_element_type=jnp.float32)
        dp_BKGQL = jnp.einsum('bkgqe,bkle->bkgql', do_BKGQE, v_BKLE, preferred_element_type=jnp.float32)
        ds_BKGQL = p_BKGQL * (dp_BKGQL - _take(delta_BKGS, i, q_block, axis=3)[..., None]) * scale
        dq_BKGQE = jnp.einsum('bkgql,bkle->bkgqe', ds_BKGQL.astype(k_BKLE.dtype), k_BKLE,
                              preferred_element_type=jnp.float32)
        dq_BKGSE = lax.dynamic_update_slice_in_dim(
            dq_BKGSE, _take(dq_BKGSE, i, q_block, axis=3) + dq_BKGQE, i * q_block, axis=3)
        dk_BKLE = dk_BKLE + jnp.einsum('bkgql,bkgqe->bkle', ds_BKGQL.astype(q_BKGQE.dtype), q_BKGQE,
                                       preferred_element_type=jnp.float32)
        return dq_BKGSE, dk_BKLE, dv_BKLE

      return lax.cond(skip | hidden(_pick(q_sum, i), _pick(kv_sum, j)), lambda c: c, compute, carry)

    init = (dq_BKGSE, _take(dk_BKTE, j, kv_block, axis=2), _take(dv_BKTE, j, kv_block, axis=2))
    dq_BKGSE, dk_BKLE, dv_BKLE = lax.fori_loop(0, nq, q_step, init)
    return (dq_BKGSE, lax.dynamic_update_slice_in_dim(dk_BKTE, dk_BKLE, j * kv_block, axis=2),
            lax.dynamic_update_slice_in_dim(dv_BKTE, dv_BKLE, j * kv_block, axis=2))

  return lax.fori_loop(0, nk, kv_step, grads)


def delta(do_BKGSE: jax.Array, out_BKGSE: jax.Array) -> jax.Array:
  """sum(do * out) per query: the softmax-backward term that replaces the full probability matrix."""
  return jnp.einsum('bkgse,bkgse->bkgs', do_BKGSE.astype(jnp.float32), out_BKGSE.astype(jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blockwise(q_BKGSE: jax.Array, k_BKSE: jax.Array, v_BKSE: jax.Array, mask: AttentionMask, q_block: int,
               kv_block: int) -> jax.Array:
  out_BKGSE, _, _ = forward_chunk(q_BKGSE, k_BKSE, v_BKSE, mask, mask, q_block, kv_block)
  return out_BKGSE.astype(q_BKGSE.dtype)


def _blockwise_fwd(q_BKGSE, k_BKSE, v_BKSE, mask, q_block, kv_block):
  out_BKGSE, lse_BKGS, _ = forward_chunk(q_BKGSE, k_BKSE, v_BKSE, mask, mask, q_block, kv_block)
  out_BKGSE = out_BKGSE.astype(q_BKGSE.dtype)
  return out_BKGSE, (q_BKGSE, k_BKSE, v_BKSE, mask, out_BKGSE, lse_BKGS)


def _blockwise_bwd(q_block, kv_block, residuals, do_BKGSE):
  q_BKGSE, k_BKSE, v_BKSE, mask, out_BKGSE, lse_BKGS = residuals
  grads = (jnp.zeros(q_BKGSE.shape, jnp.float32), jnp.zeros(k_BKSE.shape, jnp.float32),
           jnp.zeros(v_BKSE.shape, jnp.float32))
  dq, dk, dv = backward_chunk(q_BKGSE, k_BKSE, v_BKSE, mask, mask, do_BKGSE, lse_BKGS,
                              delta(do_BKGSE, out_BKGSE), grads, q_block, kv_block)
  return dq.astype(q_BKGSE.dtype), dk.astype(k_BKSE.dtype), dv.astype(v_BKSE.dtype), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def to_internal(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array) -> tuple:
  """[B, S, H, E] -> q_BKGSE, k_BKSE, v_BKSE: heads grouped by kv head, length next to the head dim."""
  B, S, H, E = q_BSHE.shape
  K = k_BSKE.shape[2]
  q_BKGSE = q_BSHE.reshape(B, S, K, H // K, E).transpose(0, 2, 3, 1, 4)
  return q_BKGSE, k_BSKE.transpose(0, 2, 1, 3), v_BSKE.transpose(0, 2, 1, 3)


def from_internal(out_BKGSE: jax.Array) -> jax.Array:
  B, K, G, S, E = out_BKGSE.shape
  return out_BKGSE.transpose(0, 3, 1, 2, 4).reshape(B, S, K * G, E)


def check_blocks(length: int, q_block: int, kv_block: int) -> tuple:
  """Effective block sizes for a chunk of this length; a clear error when they do not divide it."""
  q_block, kv_block = effective_block(q_block, length), effective_block(kv_block, length)
  if length % q_block or length % kv_block:
    raise ValueError(f'q_block={q_block} and kv_block={kv_block} must divide the (per-device) length {length}')
  return q_block, kv_block


def blockwise_attention(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask: AttentionMask,
                        q_block: int, kv_block: int) -> jax.Array:
  q_block, kv_block = check_blocks(q_BSHE.shape[1], q_block, kv_block)
  return from_internal(_blockwise(*to_internal(q_BSHE, k_BSKE, v_BSKE), mask, q_block, kv_block))
