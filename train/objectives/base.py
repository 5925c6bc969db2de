"""The types and the document bookkeeping every objective shares."""

import dataclasses

import jax
import jax.numpy as jnp

from configs.default import UL2_MIXTURE
from configs.sections import ObjectivesConfig, parse_ul2_mixture
from data.tokenizers import UL2_MODE_IDS
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
  """The static facts an objective may need beyond the batch; the defaults mirror `objectives.*` in the config."""

  vocab_size: int
  pad_id: int
  mask_id: int | None  # None: the tokenizer has no mask token (masked LM and the probes refuse it)
  num_special: int  # ids below this are special (pad, bos, eos, mask, spares): never drawn as random tokens
  mask_rate: float = 0.15  # masked_lm: chance that a real token is chosen for prediction
  prefix_min_frac: float = 0.0  # prefix_lm: lower end of the prefix fraction of each document
  prefix_max_frac: float = 1.0  # prefix_lm: upper end of the prefix fraction of each document
  extra_ids: int = 0  # the top ids no text uses: span-corruption sentinels, sentinel i = vocab_size - 1 - i
  noise_density: float = 0.15  # span_corruption: share of a document's corrupted tokens that become targets
  mean_span_length: float = 3.0  # span_corruption: mean noise span length
  # ul2: (mode, mean span length, noise density, weight) per denoiser; mode S is a prefix LM (span, density unused)
  ul2_denoisers: tuple[tuple[str, float, float, float], ...] = parse_ul2_mixture(UL2_MIXTURE)
  ul2_mode_ids: tuple[tuple[str, int], ...] = tuple(UL2_MODE_IDS.items())  # [R] [S] [X]: reserved ids

  @classmethod
  def from_config(cls, objectives_cfg: ObjectivesConfig, *, vocab_size: int, pad_id: int, mask_id: int | None,
                  num_special: int, extra_ids: int = 0) -> 'ObjectiveSpec':
    """The tokenizer's ids plus the `objectives.*` settings."""
    o = objectives_cfg
    return cls(vocab_size=vocab_size, pad_id=pad_id, mask_id=mask_id, num_special=num_special,
               mask_rate=float(o.mask_rate), prefix_min_frac=float(o.prefix_min_frac),
               prefix_max_frac=float(o.prefix_max_frac), extra_ids=extra_ids,
               noise_density=float(o.noise_density), mean_span_length=float(o.mean_span_length),
               ul2_denoisers=o.ul2_denoisers)


def document_offsets(segment_ids_BS: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per token: (offset in its document piece, that piece's length, the row index where the piece starts).

  Packing writes each segment as one contiguous run (the ring zig-zag comes after the objective), so two cumulative
  scans find every run in O(S) without [S, S] or per-segment tables. Pads form runs too; callers mask them out.
  """
  S = segment_ids_BS.shape[1]
  idx_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), segment_ids_BS.shape)
  starts_BS = jnp.concatenate([jnp.ones_like(segment_ids_BS[:, :1], bool),
                               segment_ids_BS[:, 1:] != segment_ids_BS[:, :-1]], axis=1)
  ends_BS = jnp.concatenate([segment_ids_BS[:, 1:] != segment_ids_BS[:, :-1],
                             jnp.ones_like(segment_ids_BS[:, :1], bool)], axis=1)
  start_BS = jax.lax.cummax(jnp.where(starts_BS, idx_BS, 0), axis=1)
  end_BS = jax.lax.cummin(jnp.where(ends_BS, idx_BS, S - 1), axis=1, reverse=True)
  return idx_BS - start_BS, end_BS - start_BS + 1, start_BS
