"""The simple path and the reference the others are tested against: full [S, T] logits, autodiff backward."""

import jax
import jax.numpy as jnp

from models.attention.mask import AttentionMask


def vanilla_attention(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array, mask: AttentionMask,
                      kv_mask: AttentionMask | None = None) -> jax.Array:
  """Softmax over the masked [B, K, G, S, T] logits, statistics in float32, output in q's dtype.

  kv_mask describes the keys when they are not the queries' own sequence (decoding against a cache, cross-
  attention)."""
  B, S, H, E = q_BSHE.shape
  K = k_BTKE.shape[2]
  q_BSKGE = q_BSHE.reshape(B, S, K, H // K, E)
  logits_BKGST = jnp.einsum('bskge,btke->bkgst', q_BSKGE, k_BTKE, preferred_element_type=jnp.float32)
  logits_BKGST = logits_BKGST * E**-0.5
  visible_B11ST = mask.sees(mask if kv_mask is None else kv_mask)[:, None, None]
  logits_BKGST = jnp.where(visible_B11ST, logits_BKGST, -jnp.inf)
  probs_BKGST = jax.nn.softmax(logits_BKGST, axis=-1)
  # a query that sees no key (cross-attention to a document with no encoder part) gets 0, as in blockwise and ring
  probs_BKGST = jnp.where(visible_B11ST.any(-1, keepdims=True), probs_BKGST, 0.0).astype(v_BTKE.dtype)
  out_BSKGE = jnp.einsum('bkgst,btke->bskge', probs_BKGST, v_BTKE, preferred_element_type=jnp.float32)
  return out_BSKGE.reshape(B, S, H, E).astype(q_BSHE.dtype)
