"""Causal LM: predict every next token of the same document (GPT, LLaMA)."""

import jax
import jax.numpy as jnp

from models.attention import AttentionMask
from train.objectives.base import ModelBatch, ObjectiveSpec

MASK_KIND = 'none'  # no bidirectional keys (AttentionMask.kind)


def make_batch(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec) -> ModelBatch:
  """Target at t is token t+1 when both belong to the same (non-pad) document; the row's last position scores 0."""
  del rng, spec
  tokens, seg = batch['tokens'], batch['segment_ids']
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  next_seg = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1)
  weights = ((seg != 0) & (next_seg == seg)).astype(jnp.float32)
  mask = AttentionMask(segment_ids=seg, positions=batch['positions'], bidirectional=jnp.zeros(seg.shape, bool),
                       kind=MASK_KIND)
  return ModelBatch(inputs=tokens, mask=mask, targets=targets, weights=weights)
