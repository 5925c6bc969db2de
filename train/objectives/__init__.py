"""Pretraining objectives: each turns a packed batch into model inputs, a mask description, targets and weights.

An objective is a function `(batch, rng, spec) -> ModelBatch` run inside the jitted step (so its noise comes from
a step-derived key and resumes exactly). Adding one is one module, a line in OBJECTIVES and its name in
configs/sections.py's OBJECTIVES (the config's choices; a test keeps the two equal).
"""

from collections.abc import Callable

import jax

from configs.errors import ConfigError
from train.objectives import causal, masked_lm, prefix_lm, span_corruption, ul2
from train.objectives.base import ModelBatch, ObjectiveSpec


Objective = Callable[[dict[str, jax.Array], jax.Array, ObjectiveSpec], ModelBatch]

OBJECTIVES: dict[str, Objective] = {
    'causal': causal.make_batch,
    'prefix_lm': prefix_lm.make_batch,
    'masked_lm': masked_lm.make_batch,
    'span_corruption': span_corruption.make_batch,
    'ul2': ul2.make_batch,
}
# The static bidirectional pattern of each objective's masks (AttentionMask.kind): which fused kernels serve it.
MASK_KINDS: dict[str, str] = {'causal': causal.MASK_KIND, 'prefix_lm': prefix_lm.MASK_KIND,
                              'masked_lm': masked_lm.MASK_KIND, 'span_corruption': prefix_lm.MASK_KIND,
                              'ul2': prefix_lm.MASK_KIND}  # both rewrite rows into prefix-LM form (with_prefix)


def get(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError('objective', name, f'choose one of {sorted(OBJECTIVES)}')
  return OBJECTIVES[name]
