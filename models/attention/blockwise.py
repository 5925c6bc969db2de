"""Memory-efficient (flash-style) attention in pure JAX: O(S) memory in forward and backward.

Both passes loop over kv blocks outside and q blocks inside. Forward: each kv block is folded into an online
softmax over all queries. Backward (custom VJP): each kv block's probabilities are recomputed from the saved
log-sum-exp, adding into dq and finishing that block's dk, dv. Block pairs the mask hides entirely are skipped with
lax.cond, judged from per-block reductions of the mask arrays; the cond carries only the pair's own block of the
accumulators (read before, written back after), since a cond over the full-length ones costs a copy of them.

Internal layout: q_BKGSE (G = H // K query heads share a kv head), k_BKTE, v_BKTE, so GQA never repeats k/v.
The per-kv-block steps are shared: blockwise attention loops them over its own k/v; ring attention over the k/v
blocks visiting from other devices, sending each on as soon as it is done.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from models.attention.mask import AttentionMask


def effective_block(block: int, length: int) -> int:
  """Blocks longer than the sequence (tiny configs) shrink to it rather than fail."""
  return min(block, length)


def block_sizes(length: int, q_block: int, kv_block: int) -> tuple[int, int]:
  """The (q, kv) block lengths used on a chunk of `length` tokens; a ValueError when they do not divide it.
  configs/validate.py checks the same rule, naming the config key, before anything compiles."""
  q_block, kv_block = effective_block(q_block, length), effective_block(kv_block, length)
  if length % q_block or length % kv_block:
    raise ValueError(f'q_block={q_block} and kv_block={kv_block} must divide the (per-device) length {length}')
  return q_block, kv_block


class BlockSummary(NamedTuple):
  """Per-block reductions of the mask, [B, num_blocks] each: enough to prove a block pair invisible."""
  segment_min: jax.Array
  segment_max: jax.Array
  position_min: jax.Array
  position_max: jax.Array
  any_bidirectional: jax.Array


def summarize(mask: AttentionMask, block: int) -> BlockSummary:
  """Reduces each [B, S] mask array over blocks of `block` tokens: N = S / block per row."""
  B, S = mask.segment_ids.shape
  blocks = lambda x: x.reshape(B, S // block, block)
  seg, pos = blocks(mask.segment_ids), blocks(mask.positions)
  return BlockSummary(seg.min(-1), seg.max(-1), pos.min(-1), pos.max(-1), blocks(mask.bidirectional).any(-1))


def hidden(q: BlockSummary, kv: BlockSummary) -> jax.Array:
  """True when no query of the q block sees any key of the kv block, in every row of the batch.

  Sufficient, not exact: disjoint segment ranges, or every key after every query with no bidirectional key.
  """
  disjoint_B = (q.segment_max < kv.segment_min) | (kv.segment_max < q.segment_min)
  future_B = ~kv.any_bidirectional & (kv.position_min > q.position_max)
  return jnp.all(disjoint_B | future_B)


def take(x: jax.Array, index: jax.Array, block: int, axis: int) -> jax.Array:
  """Block `index` of length `block` along `axis`."""
  return lax.dynamic_slice_in_dim(x, index * block, block, axis=axis)


def take_mask(mask: AttentionMask, index: jax.Array, block: int) -> AttentionMask:
  return jax.tree.map(lambda a: take(a, index, block, axis=1), mask)


def _put(x: jax.Array, x_block: jax.Array, index: jax.Array, block: int, axis: int) -> jax.Array:
  return lax.dynamic_update_slice_in_dim(x, x_block, index * block, axis=axis)


def _pick(summary: BlockSummary, index: jax.Array) -> BlockSummary:
  return BlockSummary(*(a[:, index] for a in summary))


def _logits(q_BKGQE: jax.Array, k_BKTE: jax.Array, q_mask: AttentionMask, kv_mask: AttentionMask) -> tuple:
  """Scaled float32 logits of one block pair and where they are visible."""
  s_BKGQT = jnp.einsum('bkgqe,bkte->bkgqt', q_BKGQE, k_BKTE, preferred_element_type=jnp.float32)
  s_BKGQT = s_BKGQT * q_BKGQE.shape[-1]**-0.5
  return s_BKGQT, q_mask.sees(kv_mask)[:, None, None]


class Softmax(NamedTuple):
  """Online-softmax accumulators for every query, float32: unnormalised output, running max and running sum."""
  o_BKGSE: jax.Array
  m_BKGS: jax.Array
  l_BKGS: jax.Array

  @classmethod
  def start(cls, q_BKGSE: jax.Array) -> 'Softmax':
    stats = q_BKGSE.shape[:-1]
    return cls(jnp.zeros(q_BKGSE.shape, jnp.float32), jnp.full(stats, -jnp.inf), jnp.zeros(stats, jnp.float32))

  def finish(self) -> tuple:
    """(out_BKGSE normalised, lse_BKGS); queries that saw no key get out 0 and lse -inf."""
    seen = self.l_BKGS > 0
    l_safe = jnp.where(seen, self.l_BKGS, 1.0)
    return self.o_BKGSE / l_safe[..., None], jnp.where(seen, self.m_BKGS + jnp.log(l_safe), -jnp.inf)


def forward_kv_block(softmax: Softmax, visited: jax.Array, q_BKGSE: jax.Array, q_mask: AttentionMask,
                     q_summary: BlockSummary, k_BKJE: jax.Array, v_BKJE: jax.Array, kv_mask: AttentionMask,
                     q_block: int) -> tuple:
  """Folds one kv block into the softmax of every q block that sees any of it; returns (softmax, visited + pairs).

  The kv block is the outer loop (of blockwise attention, and of each ring hop), so a block can move on as soon as
  it is done: ring attention sends k/v block by block.
  """
  kv_summary = _pick(summarize(kv_mask, kv_mask.positions.shape[1]), 0)

  def q_step(i, carry):
    softmax, visited = carry
    o_BKGQE, m_BKGQ, l_BKGQ = blocks = tuple(take(a, i, q_block, axis=3) for a in softmax)

    def compute(blocks):
      s_BKGQJ, vis_B11QJ = _logits(take(q_BKGSE, i, q_block, axis=3), k_BKJE, take_mask(q_mask, i, q_block), kv_mask)
      s_BKGQJ = jnp.where(vis_B11QJ, s_BKGQJ, -jnp.inf)
      m_new = jnp.maximum(m_BKGQ, s_BKGQJ.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p_BKGQJ = jnp.exp(s_BKGQJ - m_safe[..., None])
      correction = jnp.exp(m_BKGQ - m_safe)
      pv_BKGQE = jnp.einsum('bkgqj,bkje->bkgqe', p_BKGQJ.astype(v_BKJE.dtype), v_BKJE,
                            preferred_element_type=jnp.float32)
      return o_BKGQE * correction[..., None] + pv_BKGQE, m_new, l_BKGQ * correction + p_BKGQJ.sum(-1)

    skip = hidden(_pick(q_summary, i), kv_summary)
    blocks = lax.cond(skip, lambda b: b, compute, blocks)
    return Softmax(*(_put(a, b, i, q_block, axis=3) for a, b in zip(softmax, blocks))), visited + (~skip)

  return lax.fori_loop(0, q_BKGSE.shape[3] // q_block, q_step, (softmax, visited))


def forward_chunk(q_BKGSE: jax.Array, k_BKTE: jax.Array, v_BKTE: jax.Array, q_mask: AttentionMask,
                  kv_mask: AttentionMask, q_block: int, kv_block: int) -> tuple:
  """Returns (out_BKGSE float32 normalised, lse_BKGS float32, visited block pairs)."""
  q_summary = summarize(q_mask, q_block)

  def kv_step(j, carry):
    return forward_kv_block(*carry, q_BKGSE, q_mask, q_summary, take(k_BKTE, j, kv_block, axis=2),
                            take(v_BKTE, j, kv_block, axis=2), take_mask(kv_mask, j, kv_block), q_block)

  softmax, visited = lax.fori_loop(0, k_BKTE.shape[2] // kv_block, kv_step, (Softmax.start(q_BKGSE), jnp.int32(0)))
  return *softmax.finish(), visited


def backward_kv_block(grads: tuple, q_BKGSE: jax.Array, do_BKGSE: jax.Array, lse_BKGS: jax.Array,
                      delta_BKGS: jax.Array, q_mask: AttentionMask, q_summary: BlockSummary, k_BKJE: jax.Array,
                      v_BKJE: jax.Array, kv_mask: AttentionMask, q_block: int) -> tuple:
  """grads = (dq_BKGSE, dk_BKJE, dv_BKJE), float32: adds this kv block's share into the full-length dq (in place)
  and the block's own dk, dv, given the global lse and delta = sum(do * out). Recomputes probabilities block by
  block: memory O(S), never [S, S].
  """
  kv_summary = _pick(summarize(kv_mask, kv_mask.positions.shape[1]), 0)
  scale = q_BKGSE.shape[-1]**-0.5

  def q_step(i, grads):
    dq_BKGSE, dk_BKJE, dv_BKJE = grads

    def compute(block_grads):
      dq_BKGQE, dk_BKJE, dv_BKJE = block_grads
      q_BKGQE = take(q_BKGSE, i, q_block, axis=3)
      do_BKGQE = take(do_BKGSE, i, q_block, axis=3)
      s_BKGQJ, vis_B11QJ = _logits(q_BKGQE, k_BKJE, take_mask(q_mask, i, q_block), kv_mask)
      lse_BKGQ = take(lse_BKGS, i, q_block, axis=3)
      p_BKGQJ = jnp.where(vis_B11QJ, jnp.exp(s_BKGQJ - lse_BKGQ[..., None]), 0.0)
      dv_BKJE = dv_BKJE + jnp.einsum('bkgqj,bkgqe->bkje', p_BKGQJ.astype(do_BKGQE.dtype), do_BKGQE,
                                     preferred_element_type=jnp.float32)
      dp_BKGQJ = jnp.einsum('bkgqe,bkje->bkgqj', do_BKGQE, v_BKJE, preferred_element_type=jnp.float32)
      ds_BKGQJ = p_BKGQJ * (dp_BKGQJ - take(delta_BKGS, i, q_block, axis=3)[..., None]) * scale
      dq_BKGQE = dq_BKGQE + jnp.einsum('bkgqj,bkje->bkgqe', ds_BKGQJ.astype(k_BKJE.dtype), k_BKJE,
                                       preferred_element_type=jnp.float32)
      dk_BKJE = dk_BKJE + jnp.einsum('bkgqj,bkgqe->bkje', ds_BKGQJ.astype(q_BKGQE.dtype), q_BKGQE,
                                     preferred_element_type=jnp.float32)
      return dq_BKGQE, dk_BKJE, dv_BKJE

    block_grads = (take(dq_BKGSE, i, q_block, axis=3), dk_BKJE, dv_BKJE)
    dq_BKGQE, dk_BKJE, dv_BKJE = lax.cond(hidden(_pick(q_summary, i), kv_summary), lambda g: g, compute,
                                          block_grads)
    return _put(dq_BKGSE, dq_BKGQE, i, q_block, axis=3), dk_BKJE, dv_BKJE

  return lax.fori_loop(0, q_BKGSE.shape[3] // q_block, q_step, grads)


def backward_chunk(q_BKGSE: jax.Array, k_BKTE: jax.Array, v_BKTE: jax.Array, q_mask: AttentionMask,
                   kv_mask: AttentionMask, do_BKGSE: jax.Array, lse_BKGS: jax.Array, delta_BKGS: jax.Array,
                   q_block: int, kv_block: int) -> tuple:
  """(dq_BKGSE, dk_BKTE, dv_BKTE), float32: kv blocks outer, each block's dk/dv written once when done."""
  q_summary = summarize(q_mask, q_block)
  B, K, T, E = k_BKTE.shape

  def kv_step(j, grads):
    dq_BKGSE, dk_BKTE, dv_BKTE = grads
    zeros_BKJE = jnp.zeros((B, K, kv_block, E), jnp.float32)
    dq_BKGSE, dk_BKJE, dv_BKJE = backward_kv_block(
        (dq_BKGSE, zeros_BKJE, zeros_BKJE), q_BKGSE, do_BKGSE, lse_BKGS, delta_BKGS, q_mask, q_summary,
        take(k_BKTE, j, kv_block, axis=2), take(v_BKTE, j, kv_block, axis=2), take_mask(kv_mask, j, kv_block),
        q_block)
    return dq_BKGSE, _put(dk_BKTE, dk_BKJE, j, kv_block, axis=2), _put(dv_BKTE, dv_BKJE, j, kv_block, axis=2)

  zeros = (jnp.zeros(q_BKGSE.shape, jnp.float32), jnp.zeros(k_BKTE.shape, jnp.float32),
           jnp.zeros(v_BKTE.shape, jnp.float32))
  return lax.fori_loop(0, T // kv_block, kv_step, zeros)


def delta(do_BKGSE: jax.Array, out_BKGSE: jax.Array) -> jax.Array:
  """sum(do * out) per query: the softmax-backward term that replaces the full probability matrix."""
  return jnp.einsum('bkgse,bkgse->bkgs', do_BKGSE.astype(jnp.float32), out_BKGSE.astype(jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blockwise(q_BKGSE: jax.Array, k_BKTE: jax.Array, v_BKTE: jax.Array, q_mask: AttentionMask,
               kv_mask: AttentionMask, q_block: int, kv_block: int) -> jax.Array:
  out_BKGSE, _, _ = forward_chunk(q_BKGSE, k_BKTE, v_BKTE, q_mask, kv_mask, q_block, kv_block)
  return out_BKGSE.astype(q_BKGSE.dtype)


def _blockwise_fwd(q_BKGSE, k_BKTE, v_BKTE, q_mask, kv_mask, q_block, kv_block):
  out_BKGSE, lse_BKGS, _ = forward_chunk(q_BKGSE, k_BKTE, v_BKTE, q_mask, kv_mask, q_block, kv_block)
  out_BKGSE = out_BKGSE.astype(q_BKGSE.dtype)
  return out_BKGSE, (q_BKGSE, k_BKTE, v_BKTE, q_mask, kv_mask, out_BKGSE, lse_BKGS)


def _blockwise_bwd(q_block, kv_block, residuals, do_BKGSE):
  q_BKGSE, k_BKTE, v_BKTE, q_mask, kv_mask, out_BKGSE, lse_BKGS = residuals
  dq, dk, dv = backward_chunk(q_BKGSE, k_BKTE, v_BKTE, q_mask, kv_mask, do_BKGSE, lse_BKGS,
                              delta(do_BKGSE, out_BKGSE), q_block, kv_block)
  return dq.astype(q_BKGSE.dtype), dk.astype(k_BKTE.dtype), dv.astype(v_BKTE.dtype), None, None


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


def blockwise_attention(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array, mask: AttentionMask,
                        q_block: int, kv_block: int, kv_mask: AttentionMask | None = None) -> jax.Array:
  """kv_mask describes the keys when they are another sequence than the queries (cross-attention)."""
  q_block = block_sizes(q_BSHE.shape[1], q_block, q_block)[0]
  kv_block = block_sizes(k_BTKE.shape[1], kv_block, kv_block)[1]
  return from_internal(_blockwise(*to_internal(q_BSHE, k_BTKE, v_BTKE), mask, mask if kv_mask is None else kv_mask,
                                  q_block, kv_block))
