"""Attention work a batch actually costs: the (q block, kv block) pairs each path computes for its mask layout.

FLOP accounting that assumes the full [S, S] square (or half of it for causal) is wrong for packed, prefix or
padded batches under blockwise attention, which skips block pairs the mask hides. These pure numpy functions read a
batch's mask arrays (segment_ids, positions, bidirectional, each [B, S], as models.attention.AttentionMask holds
them) and count what each path computes, so FLOPs and MFU can count the work done. Attention's training FLOPs per
token are 12 * L * H * E * keys per query (`AttentionWork`), where train.flops assumes S keys per query.

The blockwise rule mirrors models.attention.blockwise (`summarize` + `hidden`) exactly: a pair is skipped only when
it is hidden in every row of the batch, judged from per-block reductions of the mask, and block sizes longer than
the sequence shrink to it (`effective_block`). Vanilla attention computes every pair. Ring attention runs the same
per-pair rule on each device's chunk of its layout (see models.attention.ring).

Dims: B batch, S sequence, Q q block (NQ = S / Q of them), J kv block (NJ = S / J).
"""

import dataclasses

import numpy as np


def _effective(block: int, seq_len: int) -> int:
  """The kernel's block size: longer than the sequence shrinks to it; otherwise it must divide the sequence."""
  if block < 1:
    raise ValueError(f'block sizes must be positive, got {block}')
  block = min(block, seq_len)
  if seq_len % block:
    raise ValueError(f'block {block} must divide the sequence length {seq_len}')
  return block


@dataclasses.dataclass(frozen=True)
class _Summary:
  """Per-block reductions of the mask, [B, num_blocks] each (models.attention.blockwise.BlockSummary in numpy)."""

  segment_min: np.ndarray
  segment_max: np.ndarray
  position_min: np.ndarray
  position_max: np.ndarray
  any_bidirectional: np.ndarray


def _summarize(segment_ids_BS: np.ndarray, positions_BS: np.ndarray, bidirectional_BS: np.ndarray,
               block: int) -> _Summary:
  B, S = segment_ids_BS.shape
  seg, pos, bid = (np.asarray(a).reshape(B, S // block, block)
                               for a in (segment_ids_BS, positions_BS, bidirectional_BS))
  return _Summary(seg.min(-1), seg.max(-1), pos.min(-1), pos.max(-1), bid.any(-1))


def _check(segment_ids_BS: np.ndarray, positions_BS: np.ndarray, bidirectional_BS: np.ndarray) -> tuple[int, int]:
  shapes = {np.shape(a) for a in (segment_ids_BS, positions_BS, bidirectional_BS)}
  if len(shapes) != 1 or len(next(iter(shapes))) != 2:
    raise ValueError(f'segment_ids, positions and bidirectional must share one [B, S] shape, got {shapes}')
  return next(iter(shapes))


def blockwise_pairs(segment_ids_BS: np.ndarray, positions_BS: np.ndarray, bidirectional_BS: np.ndarray,
                    q_block: int, kv_block: int) -> np.ndarray:
  """[NQ, NJ] bool: True where blockwise attention computes the pair (forward, and again in the backward).

  Skipped = in every row, the blocks' segment ranges are disjoint, or every key comes after every query and none
  is bidirectional. Sufficient, not exact, like the kernel's test: a computed pair may still be all masked.
  """
  _, S = _check(segment_ids_BS, positions_BS, bidirectional_BS)
  q = _summarize(segment_ids_BS, positions_BS, bidirectional_BS, _effective(q_block, S))
  kv = _summarize(segment_ids_BS, positions_BS, bidirectional_BS, _effective(kv_block, S))
  disjoint_BQJ = ((q.segment_max[:, :, None] < kv.segment_min[:, None, :])
                  | (kv.segment_max[:, None, :] < q.segment_min[:, :, None]))
  future_BQJ = ~kv.any_bidirectional[:, None, :] & (kv.position_min[:, None, :] > q.position_max[:, :, None])
  return ~np.all(disjoint_BQJ | future_BQJ, axis=0)


def vanilla_pairs(seq_len: int, q_block: int, kv_block: int) -> int:
  """Every pair of the grid: vanilla attention computes the full [S, S] square whatever the mask."""
  return (seq_len // _effective(q_block, seq_len)) * (seq_len // _effective(kv_block, seq_len))


def visible_keys(segment_ids_BS: np.ndarray, positions_BS: np.ndarray, bidirectional_BS: np.ndarray) -> np.ndarray:
  """[B, S] int: how many keys each query sees under the mask rule, exactly (no [S, S] array; O(S log S) a row).

  Query i sees key j iff same segment and (positions[j] <= positions[i] or bidirectional[j]): the keys of its
  segment not after it, plus the bidirectional ones after it. Positions must be >= 0.
  """
  B, S = _check(segment_ids_BS, positions_BS, bidirectional_BS)
  seg_BS, pos_BS = np.asarray(segment_ids_BS, np.int64), np.asarray(positions_BS, np.int64)
  bid_BS = np.asarray(bidirectional_BS, bool)
  if pos_BS.size and pos_BS.min() < 0:
    raise ValueError('positions must be >= 0')
  span = int(pos_BS.max(initial=0)) + 1
  counts_BS = np.zeros((B, S), np.int64)
  for b in range(B):
    key_S = seg_BS[b] * span + pos_BS[b]  # orders keys by (segment, position)
    segment_start_S = seg_BS[b] * span
    all_S, bidirectional_S = np.sort(key_S), np.sort(key_S[bid_BS[b]])
    not_after_S = np.searchsorted(all_S, key_S, 'right') - np.searchsorted(all_S, segment_start_S, 'left')
    after_S = (np.searchsorted(bidirectional_S, segment_start_S + span, 'left')
               - np.searchsorted(bidirectional_S, key_S, 'right'))
    counts_BS[b] = not_after_S + after_S
  return counts_BS


@dataclasses.dataclass(frozen=True)
class AttentionWork:
  """Per query, on average over the batch: keys each path multiplies against, for one batch layout and grid.

  Training FLOPs of attention per token = 12 * num_layers * num_heads * head_dim * `<path>_keys` (2 FLOPs per
  multiply-add, q.k and p.v, backward twice forward), where train.flops.flops_per_token assumes `vanilla_keys` = S.
  """

  seq_len: int
  q_block: int  # effective: min(block, seq_len)
  kv_block: int
  pairs: int  # block pairs blockwise computes
  total_pairs: int  # block pairs of the grid, all of which vanilla computes
  visible: float  # mean over the batch's queries of the keys each sees, padding included

  @property
  def blockwise_keys(self) -> float:
    return self.pairs * self.q_block * self.kv_block / self.seq_len

  @property
  def vanilla_keys(self) -> float:
    return float(self.seq_len)

  @property
  def blockwise_share(self) -> float:
    """Share of the full square that blockwise computes: multiplies train.flops' attention term."""
    return self.pairs / self.total_pairs


def attention_work(segment_ids_BS: np.ndarray, positions_BS: np.ndarray, bidirectional_BS: np.ndarray,
                   q_block: int, kv_block: int) -> AttentionWork:
  """Block pairs and keys per query of the batch described by its mask arrays, for the given block sizes."""
  _, S = _check(segment_ids_BS, positions_BS, bidirectional_BS)
  pairs_QJ = blockwise_pairs(segment_ids_BS, positions_BS, bidirectional_BS, q_block, kv_block)
  return AttentionWork(seq_len=S, q_block=_effective(q_block, S), kv_block=_effective(kv_block, S),
                       pairs=int(pairs_QJ.sum()), total_pairs=pairs_QJ.size,
                       visible=float(visible_keys(segment_ids_BS, positions_BS, bidirectional_BS).mean()))


def path_pairs(attention: str, segment_ids_BS: np.ndarray, positions_BS: np.ndarray, bidirectional_BS: np.ndarray,
               q_block: int, kv_block: int, ring_size: int = 1) -> tuple[np.ndarray, int, int]:
  """(pairs computed [NQ, NJ] bool, q block, kv block) of `attention` on the batch's (objective-made) mask.

  vanilla: the whole grid at blocks of S. blockwise: `blockwise_pairs`. ring: the ring lays the sequence out in
  zig-zag order and each device runs the blockwise rule on its chunk against every visiting block, at the ring's
  block sizes; that is the blockwise rule on the zig-zag-ordered arrays. Judged over these rows (the kernel judges
  over a device's rows, which can skip more when the batch is also split over data).
  """
  from models.attention import ring  # jax: imported only where a run measures its work

  S = np.shape(segment_ids_BS)[1]
  if attention == 'vanilla':
    return np.ones((1, 1), bool), S, S
  if attention == 'ring':
    q_block, kv_block = ring.block_sizes(S // ring_size, q_block, kv_block)
    order = ring.zigzag_permutation(S, ring_size)
    segment_ids_BS, positions_BS, bidirectional_BS = (np.asarray(a)[:, order]
                                                      for a in (segment_ids_BS, positions_BS, bidirectional_BS))
  pairs_QJ = blockwise_pairs(segment_ids_BS, positions_BS, bidirectional_BS, q_block, kv_block)
  return pairs_QJ, _effective(q_block, S), _effective(kv_block, S)
