"""Probes that score any model the same way, whatever objective trained it, so objectives can be compared.

Both probes run on validation batches; each reading is a set of loss sums (see train/loss.py) over the same tokens,
so readings compare directly and sums add across batches.

(a) Suffix loss. Each document piece of n >= 2 tokens is split at k = clip(floor(suffix_split * n), 1, n - 1)
(the midpoint by default) and only the suffix tokens (offsets k..n-1) are scored, three ways:
  * `suffix_causal`: plain causal mask, token t predicted from position t - 1. A causal model's natural reading;
    favours causal training (the prefix is read the way it was trained).
  * `suffix_prefix`: the prefix's keys bidirectional, the suffix causal: exactly the prefix_lm objective at a fixed
    split. Favours prefix-LM training; a causal model sees an attention pattern it never trained on.
  * `suffix_masked`: every suffix token replaced by [MASK], the whole document bidirectional, each suffix token
    predicted at its own position, all at once. Favours masked-LM training; it is not a likelihood of the suffix
    (the predictions are independent and see no suffix tokens), so it is far harder than the other two for any
    model once the suffix is long.
(b) Cloze. Real tokens with a left neighbour in their document are chosen with probability `cloze_rate` (the same
tokens for both readings):
  * `cloze_causal`: the unmasked text under a plain causal mask, token t predicted from position t - 1: only left
    context. Natural for causal and prefix-LM models.
  * `cloze_bidirectional`: chosen tokens replaced by [MASK], the document bidirectional, each predicted at its own
    position from both sides. Natural for masked-LM models, which it favours: they see right context too, so the
    two readings measure what each objective can do on the task, not the same information.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from configs.sections import ModelConfig
from models.attention import AttentionMask
from train import loss as loss_lib
from train import params as params_lib
from train import step as step_lib
from train.objectives import causal, masked_lm, prefix_lm
from train.objectives.base import ModelBatch, ObjectiveSpec

READINGS = ('suffix_causal', 'suffix_prefix', 'suffix_masked', 'cloze_causal', 'cloze_bidirectional')


def make_probe_sums(model_cfg: ModelConfig, spec: ObjectiveSpec, token_bytes: np.ndarray,
                    suffix_split: float = 0.5, cloze_rate: float = 0.15,
                    layout: Callable[[ModelBatch], ModelBatch] | None = None) -> Callable:
  """(params, batch, rng) -> {f'{reading}/{loss|correct|weight|bytes}': sum}; jittable, four forward passes.

  `layout` reorders each pass's [B, S] arrays alike before the model (ring attention's zig-zag): sums do not
  depend on the order."""
  split_spec = dataclasses.replace(spec, prefix_min_frac=suffix_split, prefix_max_frac=suffix_split)
  token_bytes_V = jnp.asarray(token_bytes, jnp.int32)

  def probe_sums(params, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
    model = params_lib.apply(model_cfg, params)

    def sums(inputs_BS, mask: AttentionMask, readings: dict[str, tuple[jax.Array, jax.Array]]):
      batches = {name: ModelBatch(inputs_BS, mask, targets_BS, weights_BS)
                 for name, (targets_BS, weights_BS) in readings.items()}
      if layout is not None:
        batches = {name: layout(mb) for name, mb in batches.items()}
      first = next(iter(batches.values()))
      h_BSD = model.hidden(first.inputs, first.mask)
      return {f'{name}/{k}': v for name, mb in batches.items()
              for k, v in loss_lib.loss_sums(h_BSD, model.head_weights_DV(), mb.targets, mb.weights,
                                             token_bytes_V, model_cfg.ffn_chunk).items()}

    tokens_BS, seg_BS = batch['tokens'], batch['segment_ids']
    real_BS = seg_BS != 0
    both_ways = AttentionMask(seg_BS, batch['positions'], real_BS, kind=masked_lm.MASK_KIND)
    split_rng, cloze_rng = jax.random.split(rng)  # the split is fixed, so split_rng changes nothing
    prefix = prefix_lm.make_batch(batch, split_rng, split_spec)  # targets t + 1, scored where t + 1 is in the suffix
    plain = causal.make_batch(batch, split_rng, spec)
    offset_BS, k_BS = prefix_lm.prefix_lengths(seg_BS, split_rng, split_spec)
    suffix_BS = real_BS & (offset_BS >= k_BS)
    chosen_BS = real_BS & (offset_BS >= 1) & (jax.random.uniform(cloze_rng, tokens_BS.shape) < cloze_rate)
    chosen_next_BS = jnp.concatenate([chosen_BS[:, 1:], jnp.zeros_like(chosen_BS[:, :1])], axis=1)
    out = sums(tokens_BS, plain.mask, {'suffix_causal': (prefix.targets, prefix.weights),
                                       'cloze_causal': (plain.targets, chosen_next_BS.astype(jnp.float32))})
    out |= sums(tokens_BS, prefix.mask, {'suffix_prefix': (prefix.targets, prefix.weights)})
    out |= sums(jnp.where(suffix_BS, spec.mask_id, tokens_BS), both_ways,
                {'suffix_masked': (tokens_BS, suffix_BS.astype(jnp.float32))})
    out |= sums(jnp.where(chosen_BS, spec.mask_id, tokens_BS), both_ways,
                {'cloze_bidirectional': (tokens_BS, chosen_BS.astype(jnp.float32))})
    return out

  return probe_sums


def summarize(sums: dict[str, float]) -> dict[str, float]:
  """Summed probe results (over batches) -> per reading loss, perplexity, accuracy, bits/byte under `probe/`."""
  out = {}
  for name in READINGS:
    out |= step_lib.summarize({k: sums[f'{name}/{k}'] for k in ('loss', 'correct', 'weight', 'bytes')},
                              f'probe/{name}')
  return out
