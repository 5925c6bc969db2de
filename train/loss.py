"""Weighted token cross-entropy on final hidden states, optionally blockwise over the sequence.

The loss takes hidden states and the [D, V] head rather than logits, so with `block` it scans over sequence chunks
and [B, S, V] logits never exist at once (the BPT loss); each chunk is recomputed in the backward pass. Results are
sums (not means) so they add up across chunks, devices and eval batches; divide by `weight` at the end.
"""

import jax
import jax.numpy as jnp

from sharding.rules import length_shards, sequence_chunks


def _chunk_sums(h_BCD: jax.Array, w_DV: jax.Array, targets_BC: jax.Array, weights_BC: jax.Array,
                token_bytes_V: jax.Array) -> dict[str, jax.Array]:
  """Sums over a [B, C] chunk, or a [B, P, C] one (a chunk of each sequence shard)."""
  logits_BCV = jnp.einsum('...d,dv->...v', h_BCD, w_DV).astype(jnp.float32)
  target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
  nll_BC = jax.nn.logsumexp(logits_BCV, axis=-1) - target_logit_BC
  correct_BC = (jnp.argmax(logits_BCV, axis=-1) == targets_BC).astype(jnp.float32)
  return {
      'loss': jnp.sum(nll_BC * weights_BC),
      'correct': jnp.sum(correct_BC * weights_BC),
      'weight': jnp.sum(weights_BC),
      'bytes': jnp.sum(token_bytes_V[targets_BC].astype(jnp.float32) * weights_BC),
  }


def loss_sums(h_BSD: jax.Array, w_DV: jax.Array, targets_BS: jax.Array, weights_BS: jax.Array,
              token_bytes_V: jax.Array, block: int | None = None) -> dict[str, jax.Array]:
  """Sums of weighted NLL (nats), correct predictions, weights and target UTF-8 bytes (for bits per byte)."""
  if block is None or block * length_shards() >= h_BSD.shape[1]:
    return _chunk_sums(h_BSD, w_DV, targets_BS, weights_BS, token_bytes_V)
  chunks = tuple(sequence_chunks(x, block) for x in (h_BSD, targets_BS, weights_BS))
  chunk_fn = jax.checkpoint(lambda h, t, w: _chunk_sums(h, w_DV, t, w, token_bytes_V))

  def body(total, chunk):
    return jax.tree.map(jnp.add, total, chunk_fn(*chunk)), None

  zero = {k: jnp.zeros((), jnp.float32) for k in ('loss', 'correct', 'weight', 'bytes')}
  return jax.lax.scan(body, zero, chunks)[0]
