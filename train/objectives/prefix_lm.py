"""Prefix LM (T5's non-causal decoder; Wang et al. 2022): read a document's prefix bidirectionally, predict the rest.

Split point. Each document (segment) of n tokens in the row draws a fraction f ~ U[prefix_min_frac, prefix_max_frac]
and gets a prefix of k = floor(f * n) tokens, clipped to [1, n - 1], so every document of two or more tokens has
something to read and something to predict. Fractions rather than token counts so one setting means the same for
short and long documents; the defaults U[0, 1] are T5's uniformly random split. A document cut across rows by packing
splits each piece on its own (the piece is all the model sees of it).

Scored positions. The target at t is token t + 1 of the same document, weighted 1 only where t + 1 lies in the
suffix: from the last prefix token (which predicts the first suffix token from the whole prefix) to the
second-to-last suffix token. Prefix tokens are never targets: every prefix query sees the whole prefix, its own next
token included, so scoring them would reward copying. Suffix queries stay causal, so no scored target is visible to
the query that predicts it.
"""

import dataclasses

import jax
import jax.numpy as jnp

from train.objectives import causal
from train.objectives.base import ModelBatch, ObjectiveSpec, document_offsets

MASK_KIND = 'prefix'  # a leading span of each document is bidirectional (AttentionMask.kind)


def prefix_lengths(segment_ids_BS: jax.Array, rng: jax.Array, spec: ObjectiveSpec) -> tuple[jax.Array, jax.Array]:
  """Per token: (offset in its document, its document's prefix length k), one uniform draw per document."""
  offset_BS, length_BS, start_BS = document_offsets(segment_ids_BS)
  u_BS = jnp.take_along_axis(jax.random.uniform(rng, segment_ids_BS.shape), start_BS, axis=1)
  frac_BS = spec.prefix_min_frac + (spec.prefix_max_frac - spec.prefix_min_frac) * u_BS
  k_BS = jnp.floor(frac_BS * length_BS).astype(jnp.int32)
  return offset_BS, jnp.clip(k_BS, 1, jnp.maximum(length_BS - 1, 1))


def with_prefix(batch: dict[str, jax.Array], offset_BS: jax.Array, k_BS: jax.Array, rng: jax.Array,
                spec: ObjectiveSpec) -> ModelBatch:
  """Each document's first k tokens (offsets below k_BS) read bidirectionally; causal targets scored from the last
  prefix token on. Span corruption and UL2 use it on their rewritten rows (prefix = inputs, suffix = targets)."""
  mb = causal.make_batch(batch, rng, spec)
  prefix_BS = (offset_BS < k_BS) & (batch['segment_ids'] != 0)
  weights_BS = mb.weights * (offset_BS + 1 >= k_BS)
  mask = dataclasses.replace(mb.mask, bidirectional=prefix_BS, kind=MASK_KIND)
  return dataclasses.replace(mb, mask=mask, weights=weights_BS)


def make_batch(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec) -> ModelBatch:
  """Causal targets restricted to the suffix; the prefix's keys are visible to every query of their document."""
  offset_BS, k_BS = prefix_lengths(batch['segment_ids'], rng, spec)
  return with_prefix(batch, offset_BS, k_BS, rng, spec)
