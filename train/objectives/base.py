"""The types every objective shares."""

import dataclasses

import jax

from models.attention import AttentionMask


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModelBatch:
  """What the model and the loss see. All [B, S]."""

  inputs: jax.Array  # int32 token ids fed to the model
  mask: AttentionMask  # segments, positions, bidirectional keys
  targets: jax.Array  # int32 ids to predict at each position
  weights: jax.Array  # float32 loss weight per position (0 = not scored)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """The static facts an objective may need beyond the batch."""

  vocab_size: int
  pad_id: int
  mask_id: int
  num_special: int  # ids below this are special (pad, bos, eos, mask, spares): never drawn as random tokens
