"""Block-pair counts against the blockwise kernel's own `visited` counter, and visible keys against the dense mask."""

import jax
import numpy as np
import pytest

from models.attention import blockwise as blockwise_attention
from models.attention import AttentionMask
from tests.test_attention import MASK_KINDS, dense_mask, make_mask, random_qkv
from train import block_pairs

GRIDS = ((16, 16), (8, 32), (64, 16))  # (q_block, kv_block) on a 128-long sequence


def _arrays(mask: AttentionMask) -> tuple[np.ndarray, ...]:
  return tuple(np.asarray(a) for a in (mask.segment_ids, mask.positions, mask.bidirectional))


def _kernel_pairs(mask: AttentionMask, q_block: int, kv_block: int) -> int:
  """Pairs the blockwise kernel visits (forward_chunk's third output), at its effective block sizes."""
  B, S = mask.positions.shape
  q_block, kv_block = blockwise_attention.block_sizes(S, q_block, kv_block)
  q, k, v, _ = random_qkv(batch=B, seq_len=S, heads=1, kv_heads=1, head_dim=4)
  forward = jax.jit(blockwise_attention.forward_chunk, static_argnums=(5, 6))
  return int(forward(*blockwise_attention.to_internal(q, k, v), mask, mask, q_block, kv_block)[2])


@pytest.mark.parametrize('kind', MASK_KINDS)
@pytest.mark.parametrize('q_block, kv_block', GRIDS)
def test_blockwise_pairs_match_the_kernel(kind, q_block, kv_block):
  mask = make_mask(kind, 3, 128, seed=1)
  counted = int(block_pairs.blockwise_pairs(*_arrays(mask), q_block, kv_block).sum())
  assert counted == _kernel_pairs(mask, q_block, kv_block)
  every = block_pairs.vanilla_pairs(128, q_block, kv_block)
  assert counted == every if kind == 'bidirectional' else counted <= every
  if kind == 'causal':
    assert counted < every


def test_a_pair_is_skipped_only_when_hidden_in_every_row():
  """Row 0: two 64-token documents (the off-diagonal 64 x 64 pair is hidden); row 1: one document (it is not)."""
  tokens = np.arange(128)
  two_docs = AttentionMask(tokens // 64 + 1, tokens % 64, np.zeros(128, bool))
  alone = block_pairs.blockwise_pairs(*(a[None] for a in _arrays(two_docs)), 64, 64)
  assert alone.tolist() == [[True, False], [False, True]]
  causal = np.ones(128, int), tokens, np.zeros(128, bool)
  together = block_pairs.blockwise_pairs(*(np.stack([a, b]) for a, b in zip(_arrays(two_docs), causal)), 64, 64)
  assert together.tolist() == [[True, False], [True, True]]
  assert together.sum() == _kernel_pairs(AttentionMask(*(np.stack([a, b]) for a, b in zip(_arrays(two_docs), causal))),
                                         64, 64)


@pytest.mark.parametrize('seq_len, pairs, total', [(128, 1, 1), (256, 3, 4), (1024, 36, 64)])
def test_causal_pairs_at_128_blocks(seq_len, pairs, total):
  mask = _arrays(AttentionMask.causal(2, seq_len))
  work = block_pairs.attention_work(*mask, 128, 128)
  assert (work.pairs, work.total_pairs) == (pairs, total) == (pairs, block_pairs.vanilla_pairs(seq_len, 128, 128))
  assert work.blockwise_keys == pairs * 128 * 128 / seq_len and work.vanilla_keys == seq_len
  assert work.visible == (seq_len + 1) / 2


def test_blocks_longer_than_the_sequence_shrink_to_it():
  work = block_pairs.attention_work(*_arrays(AttentionMask.causal(1, 64)), 128, 256)
  assert (work.q_block, work.kv_block, work.pairs, work.total_pairs) == (64, 64, 1, 1)
  assert _kernel_pairs(AttentionMask.causal(1, 64), 128, 256) == 1
  with pytest.raises(ValueError, match='must divide'):
    block_pairs.blockwise_pairs(*_arrays(AttentionMask.causal(1, 96)), 64, 32)


@pytest.mark.parametrize('kind', MASK_KINDS)
def test_visible_keys_count_the_dense_mask(kind):
  mask = make_mask(kind, 3, 128, seed=2)
  expected = dense_mask(mask).sum(-1)
  np.testing.assert_array_equal(block_pairs.visible_keys(*_arrays(mask)), expected)
  work = block_pairs.attention_work(*_arrays(mask), 16, 16)
  assert work.visible == pytest.approx(expected.mean())
  assert work.visible <= work.blockwise_keys <= work.vanilla_keys  # blockwise meets every visible key, and more
