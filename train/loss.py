"""Weighted token cross-entropy on final hidden states, optionally blockwise over the sequence.

The loss takes hidden states and the [D, V] head rather than logits, so with `block` it scans over sequence chunks
and [B, S, V] logits never exist at once (the BPT loss); each chunk is recomputed in the backward pass. Results are
sums (not means) so they add up across chunks, devices and eval batches; divide by `weight` at the end.

Given each query's position in its document, the sums are also split by position in the context (Kaplan et al.'s
per-token loss against position): bucket b holds positions p with 2^b <= p + 1 < 2^(b+1), i.e. the predictions made
from 1, 2-3, 4-7, ... tokens of the document (the query and those before it).
"""

import math

import jax
import jax.numpy as jnp

from sharding.rules import length_shards, sequence_chunks


def position_buckets(seq_len: int) -> list[tuple[int, int]]:
  """(first, last) context length, 1-based, of each position bucket of a row of seq_len tokens."""
  return [(2 ** b, min(2 ** (b + 1) - 1, seq_len)) for b in range(int(math.log2(seq_len)) + 1)]


def _chunk_sums(h_BCD: jax.Array, w_DV: jax.Array, targets_BC: jax.Array, weights_BC: jax.Array,
                token_bytes_V: jax.Array, positions_BC: jax.Array | None,
                num_buckets: int) -> dict[str, jax.Array]:
  """Sums over a [B, C] chunk, or a [B, P, C] one (a chunk of each sequence shard)."""
  logits_BCV = jnp.einsum('...d,dv->...v', h_BCD, w_DV).astype(jnp.float32)
  target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
  nll_BC = jax.nn.logsumexp(logits_BCV, axis=-1) - target_logit_BC
  correct_BC = (jnp.argmax(logits_BCV, axis=-1) == targets_BC).astype(jnp.float32)
  sums = {
      'loss': jnp.sum(nll_BC * weights_BC),
      'correct': jnp.sum(correct_BC * weights_BC),
      'weight': jnp.sum(weights_BC),
      'bytes': jnp.sum(token_bytes_V[targets_BC].astype(jnp.float32) * weights_BC),
  }
  if positions_BC is not None:  # one-hot over the buckets: [..., num_buckets]
    bucket_BC = jnp.floor(jnp.log2(positions_BC.astype(jnp.float32) + 1)).astype(jnp.int32)
    in_bucket = (bucket_BC[..., None] == jnp.arange(num_buckets)) * weights_BC[..., None]
    axes = tuple(range(in_bucket.ndim - 1))
    sums['position_loss'] = jnp.sum(in_bucket * nll_BC[..., None], axis=axes)
    sums['position_weight'] = jnp.sum(in_bucket, axis=axes)
  return sums


def loss_sums(h_BSD: jax.Array, w_DV: jax.Array, targets_BS: jax.Array, weights_BS: jax.Array,
              token_bytes_V: jax.Array, block: int | None = None,
              positions_BS: jax.Array | None = None) -> dict[str, jax.Array]:
  """Sums of weighted NLL (nats), correct predictions, weights and target UTF-8 bytes (for bits per byte); with
  each query's position in its document, also `position_loss` and `position_weight` per position bucket."""
  num_buckets = len(position_buckets(h_BSD.shape[1]))
  if block is None or block * length_shards() >= h_BSD.shape[1]:
    return _chunk_sums(h_BSD, w_DV, targets_BS, weights_BS, token_bytes_V, positions_BS, num_buckets)
  arrays = (h_BSD, targets_BS, weights_BS) + (() if positions_BS is None else (positions_BS,))
  chunks = tuple(sequence_chunks(x, block) for x in arrays)
  chunk_fn = jax.checkpoint(lambda h, t, w, *p: _chunk_sums(h, w_DV, t, w, token_bytes_V, p[0] if p else None,
                                                            num_buckets))

  def body(total, chunk):
    return jax.tree.map(jnp.add, total, chunk_fn(*chunk)), None

  zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(chunk_fn, *(c[0] for c in chunks)))
  return jax.lax.scan(body, zero, chunks)[0]
