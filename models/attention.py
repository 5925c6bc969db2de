"""Attention entry point: one mask description for every path, dispatch on `model.attention`.

Shapes: q_BSHE, k_BSKE, v_BSKE (B batch, S length, H query heads, K kv heads, E head dim); query head h uses
kv head h // (H // K). The mask is never materialised as [S, S] outside the vanilla path.
"""

import dataclasses

import jax
import jax.numpy as jnp

from configs.errors import ConfigError
from models import blockwise_attention
from models import ring_attention

KINDS = ('vanilla', 'blockwise', 'ring')


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Who sees whom, as per-token arrays, so any path can build just the blocks it needs.

  Query i sees key j iff segment_ids[i] == segment_ids[j] and (positions[j] <= positions[i] or bidirectional[j]).
  Positions count within a document, so the rule holds under any permutation of the sequence (zig-zag ring layout).
  """
  segment_ids: jax.Array  # [B, S] int32; 0 = padding (pads only see pads)
  positions: jax.Array  # [B, S] int32; position within the document, from 0
  bidirectional: jax.Array  # [B, S] bool; key visible to every query of its segment

  @classmethod
  def causal(cls, batch: int, seq_len: int) -> 'AttentionMask':
    """One document per row, no bidirectional keys: plain causal attention."""
    shape = (batch, seq_len)
    return cls(jnp.ones(shape, jnp.int32), jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), shape),
               jnp.zeros(shape, bool))

  def sees(self, keys: 'AttentionMask') -> jax.Array:
    """[B, Sq, Sk] bool: query i of self sees key j of keys (self and keys may be different chunks)."""
    same_BQT = self.segment_ids[:, :, None] == keys.segment_ids[:, None, :]
    before_BQT = keys.positions[:, None, :] <= self.positions[:, :, None]
    return same_BQT & (before_BQT | keys.bidirectional[:, None, :])


def validate_attention(kind: str, seq_len: int, q_block: int, kv_block: int, sequence_axis_size: int,
                       num_heads: int, num_kv_heads: int) -> None:
  """Raises ConfigError naming the key, value and fix before anything compiles."""
  if kind not in KINDS:
    raise ConfigError('model.attention', kind, f'use one of {", ".join(KINDS)}')
  if num_kv_heads <= 0 or num_heads % num_kv_heads:
    raise ConfigError('model.num_kv_heads', num_kv_heads, f'must be positive and divide model.num_heads={num_heads}')
  if kind == 'vanilla':
    return
  for key, block in (('model.q_block', q_block), ('model.kv_block', kv_block)):
    if block <= 0:
      raise ConfigError(key, block, 'use a positive block length, e.g. 128')
  if kind == 'blockwise':
    for key, block in (('model.q_block', q_block), ('model.kv_block', kv_block)):
      if seq_len % blockwise_attention.effective_block(block, seq_len):
        raise ConfigError(key, block, f'must divide data.seq_len={seq_len}')
    return
  if sequence_axis_size <= 1:
    raise ConfigError('mesh.sequence', sequence_axis_size,
                      'ring attention needs a sequence axis of size > 1; set mesh.sequence or use blockwise')
  if seq_len % (2 * sequence_axis_size):
    raise ConfigError('data.seq_len', seq_len,
                      f'ring attention splits it into 2 * mesh.sequence = {2 * sequence_axis_size} zig-zag chunks')
  local, half = seq_len // sequence_axis_size, seq_len // (2 * sequence_axis_size)
  for key, block in (('model.q_block', q_block), ('model.kv_block', kv_block)):
    effective = blockwise_attention.effective_block(block, local)
    if half % effective and effective != local:
      raise ConfigError(key, block, f'must divide the zig-zag chunk length data.seq_len / (2 * mesh.sequence) = {half}')


def vanilla_attention(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array, mask: AttentionMask,
                      kv_mask: AttentionMask | None = None) -> jax.Array:
  """The simple path: full [B, K, G, S, T] logits with the mask applied; autodiff does the backward.

  kv_mask describes the keys when they are not the queries' own sequence (decoding against a cache)."""
  B, S, H, E = q_BSHE.shape
  K = k_BTKE.shape[2]
  q_BSKGE = q_BSHE.reshape(B, S, K, H // K, E)
  logits_BKGST = jnp.einsum('bskge,btke->bkgst', q_BSKGE, k_BTKE, preferred_element_type=jnp.float32)
  logits_BKGST = logits_BKGST * E**-0.5
  visible_B11ST = mask.sees(mask if kv_mask is None else kv_mask)[:, None, None]
  logits_BKGST = jnp.where(visible_B11ST, logits_BKGST, -jnp.inf)
  probs_BKGST = jax.nn.softmax(logits_BKGST, axis=-1).astype(v_BTKE.dtype)
  out_BSKGE = jnp.einsum('bkgst,btke->bskge', probs_BKGST, v_BTKE, preferred_element_type=jnp.float32)
  return out_BSKGE.reshape(B, S, H, E).astype(q_BSHE.dtype)


def attend(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask: AttentionMask, *, kind: str = 'vanilla',
           q_block: int = 128, kv_block: int = 128) -> jax.Array:
  """Scaled dot-product attention with GQA; softmax statistics in float32, output in q's dtype."""
  H, K = q_BSHE.shape[2], k_BSKE.shape[2]
  if H % K:
    raise ValueError(f'num_heads={H} must be a multiple of num_kv_heads={K}')
  if kind == 'vanilla':
    return vanilla_attention(q_BSHE, k_BSKE, v_BSKE, mask)
  if kind == 'blockwise':
    return blockwise_attention.blockwise_attention(q_BSHE, k_BSKE, v_BSKE, mask, q_block, kv_block)
  if kind == 'ring':
    return ring_attention.ring_attention(q_BSHE, k_BSKE, v_BSKE, mask, q_block, kv_block)
  raise ValueError(f'unknown attention kind {kind!r}; use one of {KINDS}')
