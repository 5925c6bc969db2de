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

Encoder-decoder. Each reading's decoder-form batch above goes through the adapter (train/objectives/
encoder_decoder.py), so both architectures score exactly the same target tokens with the same weights:
  * `suffix_causal`, `cloze_causal`: no bidirectional part, so the encoder is empty (every decoder query sees no
    encoder key: cross-attention adds 0) and the decoder reads the document causally, token t from t - 1.
  * `suffix_prefix`: the encoder reads the prefix, the decoder starts from <s> and predicts the suffix, teacher
    forced: the encoder-decoder's prefix-LM objective at a fixed split.
  * `suffix_masked`, `cloze_bidirectional`: the encoder reads the decoder form's masked document (the same inputs
    and mask), the decoder predicts the masked tokens in order, each decoder slot reading the [MASK] id instead of
    the previous target (`encode_all`). Not teacher forced on purpose: with the true earlier targets the
    encoder-decoder would see tokens the decoder's reading hides (for suffix_masked the whole suffix before the
    token, i.e. suffix_prefix again), so the two architectures' numbers would not measure the same task.
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
from train.objectives.encoder_decoder import EncoderDecoderBatch, encode_all, to_encoder_decoder

READINGS = ('suffix_causal', 'suffix_prefix', 'suffix_masked', 'cloze_causal', 'cloze_bidirectional')
Reading = ModelBatch | EncoderDecoderBatch


def probe_batches(batch: dict[str, jax.Array], rng: jax.Array, spec: ObjectiveSpec, architecture: str,
                  suffix_split: float = 0.5, cloze_rate: float = 0.15) -> list[dict[str, Reading]]:
  """Every reading's batch for a model of `architecture`, one dict per forward pass: the readings of a pass share
  inputs and masks (only targets and weights differ), so one forward serves them."""
  split_spec = dataclasses.replace(spec, prefix_min_frac=suffix_split, prefix_max_frac=suffix_split)
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
  left_to_right = [{'suffix_causal': dataclasses.replace(plain, weights=prefix.weights),
                    'cloze_causal': dataclasses.replace(plain, weights=chosen_next_BS.astype(jnp.float32))},
                   {'suffix_prefix': prefix}]
  masked = [{name: ModelBatch(jnp.where(where_BS, spec.mask_id, tokens_BS), both_ways, tokens_BS,
                              where_BS.astype(jnp.float32))}
            for name, where_BS in (('suffix_masked', suffix_BS), ('cloze_bidirectional', chosen_BS))]
  if architecture == 'decoder':
    return left_to_right + masked
  return ([{name: to_encoder_decoder(mb, spec) for name, mb in p.items()} for p in left_to_right] +
          [{name: encode_all(mb, spec) for name, mb in p.items()} for p in masked])


def make_probe_sums(model_cfg: ModelConfig, spec: ObjectiveSpec, token_bytes: np.ndarray,
                    suffix_split: float = 0.5, cloze_rate: float = 0.15,
                    layout: Callable[[Reading], Reading] | None = None) -> Callable:
  """(params, batch, rng) -> {f'{reading}/{loss|correct|weight|bytes}': sum}; jittable, four forward passes.

  `layout` reorders each pass's [B, S] arrays alike before the model (ring attention's zig-zag): sums do not
  depend on the order."""
  token_bytes_V = jnp.asarray(token_bytes, jnp.int32)

  def probe_sums(params, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
    model = params_lib.apply(model_cfg, params)
    out = {}
    for readings in probe_batches(batch, rng, spec, model_cfg.architecture, suffix_split, cloze_rate):
      if layout is not None:
        readings = {name: layout(mb) for name, mb in readings.items()}
      h_BSD = step_lib.hidden(model, next(iter(readings.values())))
      out |= {f'{name}/{k}': v for name, mb in readings.items()
              for k, v in loss_lib.loss_sums(h_BSD, model.head_weights_DV(), mb.targets, mb.weights,
                                             token_bytes_V, model_cfg.ffn_chunk).items()}
    return out

  return probe_sums


def summarize(sums: dict[str, float]) -> dict[str, float]:
  """Summed probe results (over batches) -> per reading loss, perplexity, accuracy, bits/byte under `probe/`."""
  out = {}
  for name in READINGS:
    out |= step_lib.summarize({k: sums[f'{name}/{k}'] for k in ('loss', 'correct', 'weight', 'bytes')},
                              f'probe/{name}')
  return out
