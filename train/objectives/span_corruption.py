"""Span corruption (T5, Raffel et al. 2020) on the decoder: a prefix LM over the corrupted inputs + the targets.

Counts. Each document (segment: a packed piece, bos and eos included) of n slots in the row, less `lead` slots for
a mode token (UL2; 0 here), gets
  s  = clip(round(d * (n - lead) / (mu + 2 d)), 1, min(data.extra_ids, (n - lead) // 4))  noise spans,
  n' = n - lead - 2 s  source tokens: the document's first n' (its last 2 s tokens are dropped: the fit rule),
  m  = clip(round(d * n'), s, n' - s)  of them noise,
with d = `objectives.noise_density`, mu = `objectives.mean_span_length`; so m / n' ~ d and m / s ~ mu, and the
corrupted form (below) is exactly n slots long: each span costs two sentinels, paid for by the dropped tail.

Spans. The n' source tokens are kept run 0, noise span 0, kept run 1, ..., kept run s-1, noise span s-1 (T5's
layout: a document starts kept and ends in noise), all runs non-empty; the m noise tokens are split into s spans and
the n' - m kept tokens into s runs by uniformly random compositions (s - 1 cuts among each list's gaps).

Layout, written back into the document's own n slots (same segment id, positions 0..n-1):
  inputs  (bidirectional): [mode], kept run 0, <0>, kept run 1, <1>, ..., kept run s-1, <s-1>   lead + n' - m + s
  targets (causal):        <0>, noise span 0, <1>, noise span 1, ..., <s-1>, noise span s-1     m + s
Sentinel <i> is id vocab_size - 1 - i (T5's extra ids, kept out of text by the tokenizer). Weight 1 exactly where
the next token is a target token: from the last input slot to the second-to-last target slot, so every query that
predicts a target sees the inputs and only the targets before it. An encoder-decoder splits each document at the
end of its bidirectional part: the same example for the same step and seed. A document of fewer than lead + 4 slots
(no room for a kept token, a noise token and two sentinels) becomes padding: segment 0, nothing scored.
"""

import jax
import jax.numpy as jnp

from configs.errors import ConfigError
from train.objectives import prefix_lm
from train.objectives.base import ModelBatch, ObjectiveSpec, document_offsets


def _doc_cumsum(x_BS: jax.Array, start_BS: jax.Array) -> jax.Array:
  """Inclusive running sum of x that restarts at each document's start."""
  total_BS = jnp.cumsum(x_BS, axis=1)
  return total_BS - jnp.take_along_axis(total_BS - x_BS, start_BS, axis=1)


def _random_cuts(rng: jax.Array, count_BS: jax.Array, cuts_BS: jax.Array, offset_BS: jax.Array,
                 start_BS: jax.Array) -> jax.Array:
  """Slot o of a document is True when the gap after item o of its list of `count` items is a cut: `cuts` of the
  count - 1 gaps, chosen uniformly (the smallest random keys in the document), so the parts are a uniformly random
  composition of count into cuts + 1 positive lengths."""
  gap_BS = offset_BS < count_BS - 1
  u_BS = jnp.where(gap_BS, jax.random.uniform(rng, offset_BS.shape), 2.0)
  rank_BS = jnp.argsort(jnp.lexsort((u_BS, start_BS), axis=1), axis=1).astype(jnp.int32) - start_BS
  return gap_BS & (rank_BS < cuts_BS)


def corrupt(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec, density_BS: jax.Array,
            mean_span_BS: jax.Array, mode_BS: jax.Array | None = None) -> tuple[dict[str, jax.Array], jax.Array]:
  """The rows rewritten as the module docstring says, and each token's document's input length (its bidirectional
  part). density_BS, mean_span_BS (and the mode token id mode_BS, if any) are per token, equal within a document."""
  if spec.extra_ids < 1:
    raise ConfigError('data.extra_ids', spec.extra_ids, 'span corruption needs sentinel ids: set it, e.g. 100')
  tokens_BS, seg_BS = batch['tokens'], batch['segment_ids']
  B, S = seg_BS.shape
  lead = 0 if mode_BS is None else 1
  offset_BS, n_BS, start_BS = document_offsets(seg_BS)
  body_BS = n_BS - lead
  valid_BS = (seg_BS != 0) & (body_BS >= 4)
  spans_BS = jnp.round(density_BS * body_BS / (mean_span_BS + 2 * density_BS)).astype(jnp.int32)
  spans_BS = jnp.clip(spans_BS, 1, jnp.maximum(jnp.minimum(spec.extra_ids, body_BS // 4), 1))
  source_BS = body_BS - 2 * spans_BS
  noise_BS = jnp.clip(jnp.round(density_BS * source_BS).astype(jnp.int32), spans_BS, source_BS - spans_BS)
  kept_BS = source_BS - noise_BS

  kept_rng, noise_rng = jax.random.split(rng)
  cut_kept_BS = _random_cuts(kept_rng, kept_BS, spans_BS - 1, offset_BS, start_BS)
  cut_noise_BS = _random_cuts(noise_rng, noise_BS, spans_BS - 1, offset_BS, start_BS)
  run_kept_BS = _doc_cumsum(cut_kept_BS, start_BS) - cut_kept_BS  # which kept run item o is in
  run_noise_BS = _doc_cumsum(cut_noise_BS, start_BS) - cut_noise_BS  # which noise span item o is in
  is_kept_BS, is_noise_BS = valid_BS & (offset_BS < kept_BS), valid_BS & (offset_BS < noise_BS)
  last_kept_BS = is_kept_BS & (cut_kept_BS | (offset_BS == kept_BS - 1))
  after_cut_BS = jnp.concatenate([jnp.zeros_like(cut_noise_BS[:, :1]), cut_noise_BS[:, :-1]], axis=1)
  first_noise_BS = is_noise_BS & ((offset_BS == 0) | after_cut_BS)

  rows_B1 = jnp.arange(B)[:, None]

  def at(where_BS: jax.Array, slot_BS: jax.Array) -> jax.Array:
    """Row index start + slot where chosen, else S (dropped by the scatters)."""
    return jnp.where(where_BS, start_BS + slot_BS, S)

  def per_run(where_BS: jax.Array, run_BS: jax.Array, value_BS: jax.Array, read_run_BS: jax.Array) -> jax.Array:
    """A table of one value per run (written at the document's slot `run` by one item of it), read at read_run."""
    table_BS = jnp.zeros((B, S), jnp.int32).at[rows_B1, at(where_BS, run_BS)].set(value_BS, mode='drop')
    return jnp.take_along_axis(table_BS, jnp.minimum(start_BS + read_run_BS, S - 1), axis=1)

  # Noise item o of span r is source token o + (kept tokens in runs 0..r); kept item o of run r is source token
  # o + (noise tokens in spans 0..r-1).
  kept_end_BS = per_run(last_kept_BS, run_kept_BS, offset_BS + 1, run_noise_BS)
  noise_start_BS = per_run(first_noise_BS, run_noise_BS, offset_BS, run_kept_BS)
  kept_token_BS = jnp.take_along_axis(tokens_BS, jnp.minimum(at(is_kept_BS, offset_BS + noise_start_BS), S - 1), 1)
  noise_token_BS = jnp.take_along_axis(tokens_BS, jnp.minimum(at(is_noise_BS, offset_BS + kept_end_BS), S - 1), 1)
  inputs_len_BS = lead + kept_BS + spans_BS
  kept_slot_BS = lead + offset_BS + run_kept_BS
  noise_slot_BS = inputs_len_BS + offset_BS + run_noise_BS
  writes = [(at(is_kept_BS, kept_slot_BS), kept_token_BS),
            (at(last_kept_BS, kept_slot_BS + 1), spec.vocab_size - 1 - run_kept_BS),
            (at(first_noise_BS, noise_slot_BS), spec.vocab_size - 1 - run_noise_BS),
            (at(is_noise_BS, noise_slot_BS + 1), noise_token_BS)]
  if mode_BS is not None:
    writes.append((at(valid_BS & (offset_BS == 0), 0), mode_BS))
  index_BW = jnp.concatenate([i for i, _ in writes], axis=1)
  value_BW = jnp.concatenate([v.astype(tokens_BS.dtype) for _, v in writes], axis=1)
  out_BS = jnp.full_like(tokens_BS, spec.pad_id).at[rows_B1, index_BW].set(value_BW, mode='drop')
  rows = {'tokens': out_BS, 'segment_ids': jnp.where(valid_BS, seg_BS, 0),
          'positions': jnp.where(valid_BS, batch['positions'], 0)}
  return rows, inputs_len_BS


def make_batch(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec) -> ModelBatch:
  """T5 span corruption at `objectives.noise_density` and `objectives.mean_span_length`, as a prefix LM."""
  shape = batch['segment_ids'].shape
  rows, inputs_len_BS = corrupt(batch, rng, spec, jnp.full(shape, spec.noise_density),
                                jnp.full(shape, spec.mean_span_length))
  offset_BS, _, _ = document_offsets(batch['segment_ids'])
  return prefix_lm.with_prefix(rows, offset_BS, inputs_len_BS, rng, spec)
