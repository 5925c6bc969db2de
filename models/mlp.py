"""SwiGLU feed-forward, whole-sequence or blockwise (the Blockwise Parallel Transformer's FFN)."""

import jax

from sharding.rules import length_shards, merge_sequence_chunks, sequence_chunks


def _swiglu(x_BCD: jax.Array, w_gate_DF: jax.Array, w_up_DF: jax.Array, w_down_FD: jax.Array) -> jax.Array:
  h_BCF = jax.nn.silu(x_BCD @ w_gate_DF) * (x_BCD @ w_up_DF)
  return h_BCF @ w_down_FD


def swiglu_ffn(x_BSD: jax.Array, w_gate_DF: jax.Array, w_up_DF: jax.Array, w_down_FD: jax.Array,
               block: int | None = None) -> jax.Array:
  """SwiGLU MLP. With `block`, a scan over sequence chunks of that length computes it chunk by chunk.

  Each chunk is rematerialised in the backward pass, so only one [B, block, F] hidden activation is alive at a time
  (per sequence shard), forward or backward: peak FFN activation memory drops by S / block, for the cost of one
  extra chunk forward.
  """
  if block is None or block * length_shards() >= x_BSD.shape[1]:
    return _swiglu(x_BSD, w_gate_DF, w_up_DF, w_down_FD)
  chunk_fn = jax.checkpoint(lambda x: _swiglu(x, w_gate_DF, w_up_DF, w_down_FD))
  _, y_NBPCD = jax.lax.scan(lambda carry, x: (carry, chunk_fn(x)), None, sequence_chunks(x_BSD, block))
  return merge_sequence_chunks(y_NBPCD)
