"""UL2's mixture of denoisers (Tay et al. 2022) on the decoder, each document drawing its own denoiser.

`objectives.ul2_mixture` lists the denoisers with their weights; each document (segment) of the row draws one with
probability weight / total, independently. Every denoiser starts the document's inputs with its mode token ([R],
[S] or [X], the reserved ids 5, 6, 7), which tells the model which task it is on:
  R and X: span corruption (train/objectives/span_corruption.py) at the denoiser's mean span length and noise
    density, one lead slot for the mode token: R the regular T5 settings (short spans, low density), X extreme ones
    (long spans or high density).
  S: a prefix LM. The document's first n - 1 tokens (its last one dropped, to make room for the mode token) split
    at k = clip(floor(f * (n - 1)), 1, n - 2), f ~ U[objectives.prefix_min_frac, prefix_max_frac] as prefix_lm.
Each result is a prefix LM over inputs + targets: the mode token and the inputs bidirectional, targets scored
(the contract of span_corruption.py). Documents too short for their denoiser (R/X: under 5 slots, S: under 3)
become padding.
"""

import jax
import jax.numpy as jnp

from train.objectives import prefix_lm, span_corruption
from train.objectives.base import ModelBatch, ObjectiveSpec, document_offsets


def make_batch(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec) -> ModelBatch:
  """One denoiser per document, drawn from the mixture; R/X span corruption or S prefix LM behind a mode token.
  S documents take dummy span settings (0.5, 1) so the span arithmetic stays finite; their rows are not used."""
  modes, spans, densities, weights = zip(*spec.ul2_denoisers)
  mode_ids = dict(spec.ul2_mode_ids)
  tokens_BS, seg_BS = batch['tokens'], batch['segment_ids']
  choose_rng, span_rng, split_rng = jax.random.split(rng, 3)
  offset_BS, n_BS, start_BS = document_offsets(seg_BS)
  logits = jnp.log(jnp.asarray(weights, jnp.float32) / sum(weights))
  drawn_BS = jax.random.categorical(choose_rng, logits, shape=seg_BS.shape)
  denoiser_BS = jnp.take_along_axis(drawn_BS, start_BS, axis=1)
  sequential_BS = jnp.asarray([m == 'S' for m in modes])[denoiser_BS]
  mode_BS = jnp.asarray([mode_ids[m] for m in modes], tokens_BS.dtype)[denoiser_BS]
  u_BS = jnp.take_along_axis(jax.random.uniform(split_rng, seg_BS.shape), start_BS, axis=1)
  frac_BS = spec.prefix_min_frac + (spec.prefix_max_frac - spec.prefix_min_frac) * u_BS
  prefix_BS = jnp.clip(jnp.floor(frac_BS * (n_BS - 1)).astype(jnp.int32), 1, n_BS - 2)
  shifted_BS = jnp.concatenate([tokens_BS[:, :1], tokens_BS[:, :-1]], axis=1)
  valid_BS = (seg_BS != 0) & (n_BS >= 3)
  rows = {'tokens': jnp.where(valid_BS, jnp.where(offset_BS == 0, mode_BS, shifted_BS), spec.pad_id),
          'segment_ids': jnp.where(valid_BS, seg_BS, 0), 'positions': jnp.where(valid_BS, batch['positions'], 0)}
  inputs_len_BS = 1 + prefix_BS
  if set(modes) != {'S'}:  # span corruption needs sentinel ids; a mixture of S alone has none
    spans_rows, spans_len_BS = span_corruption.corrupt(
        batch, span_rng, spec, jnp.asarray([d or 0.5 for d in densities], jnp.float32)[denoiser_BS],
        jnp.asarray([s or 1.0 for s in spans], jnp.float32)[denoiser_BS], mode_BS)
    rows = {k: jnp.where(sequential_BS, v, spans_rows[k]) for k, v in rows.items()}
    inputs_len_BS = jnp.where(sequential_BS, inputs_len_BS, spans_len_BS)
  return prefix_lm.with_prefix(rows, offset_BS, inputs_len_BS, rng, spec)
