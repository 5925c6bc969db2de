"""Masked LM (BERT): corrupt some tokens, read everything bidirectionally, predict the originals where corrupted.

Each real (non-pad) token is chosen independently with probability `mask_rate` (Bernoulli per token, not an exact
count per row: cheap, and the expected rate is exact; a short document may get none). Of the chosen, 80% become the
[MASK] id, 10% a uniformly random ordinary token (ids in [num_special, vocab), which may happen to be the original),
10% stay as they are, so the model cannot tell corrupted positions apart and must model every input token.
Targets are the original tokens; weight 1 exactly at chosen positions. Every real key is bidirectional within its
document; pads stay non-bidirectional and in segment 0, which only pads see.
"""

import jax
import jax.numpy as jnp

from models.attention import AttentionMask
from train.objectives.base import ModelBatch, ObjectiveSpec

MASK_SHARE = 0.8  # of chosen tokens, replaced by [MASK]
RANDOM_SHARE = 0.1  # of chosen tokens, replaced by a random ordinary token; the rest stay unchanged
MASK_KIND = 'all'  # every real token is a bidirectional key (AttentionMask.kind)


def make_batch(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec) -> ModelBatch:
  """Inputs corrupted 80/10/10 at chosen tokens; targets the original tokens, scored only where chosen."""
  tokens_BS, seg_BS = batch['tokens'], batch['segment_ids']
  choose_rng, how_rng, random_rng = jax.random.split(rng, 3)
  real_BS = seg_BS != 0
  chosen_BS = real_BS & (jax.random.uniform(choose_rng, tokens_BS.shape) < spec.mask_rate)
  how_BS = jax.random.uniform(how_rng, tokens_BS.shape)
  random_BS = jax.random.randint(random_rng, tokens_BS.shape, spec.num_special, spec.vocab_size, tokens_BS.dtype)
  inputs_BS = jnp.where(how_BS < MASK_SHARE, spec.mask_id, jnp.where(how_BS < MASK_SHARE + RANDOM_SHARE,
                                                                      random_BS, tokens_BS))
  inputs_BS = jnp.where(chosen_BS, inputs_BS, tokens_BS)
  mask = AttentionMask(segment_ids=seg_BS, positions=batch['positions'], bidirectional=real_BS, kind=MASK_KIND)
  return ModelBatch(inputs=inputs_BS, mask=mask, targets=tokens_BS, weights=chosen_BS.astype(jnp.float32))
