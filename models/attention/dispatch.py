"""Attention entry point: `attend` picks the path named by `model.attention`; every path takes the same mask.

Shapes: q_BSHE, k_BSKE, v_BSKE (B batch, S length, H query heads, K kv heads, E head dim); query head h uses
kv head h // (H // K). The mask is never materialised as [S, S] outside the vanilla path.
"""

from collections.abc import Callable

import jax

from models.attention.blockwise import blockwise_attention
from models.attention.mask import AttentionMask
from models.attention.ring import ring_attention
from models.attention.vanilla import vanilla_attention

# Keyed by configs.sections.ATTENTION_KINDS (a test keeps them equal).
PATHS: dict[str, Callable[..., jax.Array]] = {
    'vanilla': lambda q, k, v, mask, q_block, kv_block, kv_mask=None: vanilla_attention(q, k, v, mask, kv_mask),
    'blockwise': blockwise_attention,
    'ring': ring_attention,
}


def attend(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array, mask: AttentionMask, *, kind: str = 'vanilla',
           q_block: int = 128, kv_block: int = 128, kv_mask: AttentionMask | None = None) -> jax.Array:
  """Scaled dot-product attention with GQA; softmax statistics in float32, output in q's dtype.

  Self-attention by default; with kv_mask the keys are another sequence described by it (cross-attention: query i
  sees key j under the same rule, e.g. every key of its segment when kv_mask marks them all bidirectional).
  A query that sees no key gets output 0 on every path."""
  H, K = q_BSHE.shape[2], k_BTKE.shape[2]
  if H % K:
    raise ValueError(f'num_heads={H} must be a multiple of num_kv_heads={K}')
  if kind not in PATHS:
    raise ValueError(f'unknown attention kind {kind!r}; use one of {tuple(PATHS)}')
  return PATHS[kind](q_BSHE, k_BTKE, v_BTKE, mask, q_block, kv_block, kv_mask)
