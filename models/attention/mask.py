"""The one mask description every attention path takes: per-token arrays, never an [S, S] matrix."""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Who sees whom, as per-token arrays, so any path can build just the blocks it needs.

  Query i sees key j iff segment_ids[i] == segment_ids[j] and (positions[j] <= positions[i] or bidirectional[j]).
  Positions count within a document, so the rule holds under any permutation of the sequence (zig-zag ring layout).

  `kind` is static (part of the jit cache key, not data): the pattern the maker guarantees for `bidirectional`,
  'none' (causal), 'prefix' (a leading span of each document) or 'all' (every real token), which lets a fused
  kernel with static masks serve it (models/attention/pallas.py); None promises nothing, so only the pure-JAX
  paths take it. `layout` (static) is the token order, 'natural' or 'zigzag' (ring.to_zigzag sets it): the pure-JAX
  paths never need it, the fused ring hops do (they mask by token index within chunks).
  """
  segment_ids: jax.Array  # [B, S] int32; 0 = padding (pads only see pads)
  positions: jax.Array  # [B, S] int32; position within the document, from 0
  bidirectional: jax.Array  # [B, S] bool; key visible to every query of its segment
  kind: str | None = dataclasses.field(default=None, metadata={'static': True})  # none | prefix | all | None
  layout: str = dataclasses.field(default='natural', metadata={'static': True})  # natural | zigzag

  @classmethod
  def causal(cls, batch: int, seq_len: int) -> 'AttentionMask':
    """One document per row, no bidirectional keys: plain causal attention."""
    shape = (batch, seq_len)
    return cls(jnp.ones(shape, jnp.int32), jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), shape),
               jnp.zeros(shape, bool), kind='none')

  def sees(self, keys: 'AttentionMask') -> jax.Array:
    """[B, S, T] bool: query i of self sees key j of keys (self and keys may be different chunks)."""
    same_BST = self.segment_ids[:, :, None] == keys.segment_ids[:, None, :]
    before_BST = keys.positions[:, None, :] <= self.positions[:, :, None]
    return same_BST & (before_BST | keys.bidirectional[:, None, :])
