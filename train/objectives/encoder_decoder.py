"""Any objective's decoder-form batch as an encoder-decoder batch, so every objective serves both architectures.

The decoder form (train.objectives.base.ModelBatch) marks, per document, its input part bidirectional and lets the
target part follow it in the same segment, scoring (weight 1) the positions whose next token is a target-part token.
The adapter moves each document's input part into the encoder row and its target part into the decoder row:

  document            x0 x1 x2 | y0 y1 y2        (input part k = 3 tokens, target part m = 3)
  decoder form        inputs x0 x1 x2 y0 y1 y2, scored at x2 y0 y1 (targets y0 y1 y2)
  encoder row         x0 x1 x2                    positions 0 1 2, bidirectional
  decoder row         <s> y0 y1                   positions 0 1 2, causal; targets y0 y1 y2

The decoder row is the decoder form's positions k-1 .. n-2 (those whose next token is a target-part token), with
the last input token replaced by the start token <s> (the pad id, as T5's decoder starts with pad); targets and
weights are carried over unchanged, so exactly the same target tokens are scored with the same weights, and an
objective's noise (span corruption's spans) is the same example on both architectures. A document whose input part
is empty keeps its target part as is (nothing predicts its first token, as in the decoder form).

Rows: both the encoder and the decoder row are S long (the batch's length), each document's tokens packed to the
front in order, then padding (segment 0). Static shapes whatever the split; the cost is padding: together the two
rows hold about S real tokens, in 2S slots. Segment ids are kept, so packed documents never see each other, in
self-attention or across (a decoder token cross-attends only to the encoder tokens of its own document).

`encode_all` is the other reading, for a batch with no target part (masked LM's form, the probes' masked readings):
the encoder reads the whole (corrupted) row as is, and the decoder predicts each document's scored tokens in order,
one slot each, every slot reading the mask id rather than the previous target (no teacher forcing), so each
prediction sees what the decoder form's sees (the corrupted document and which token it is for) and nothing more.
"""

import dataclasses

import jax
import jax.numpy as jnp

from models.attention import AttentionMask
from train.objectives.base import ModelBatch, ObjectiveSpec, document_offsets


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EncoderDecoderBatch:
  """What the encoder-decoder and the loss see; the decoder's fields are named as ModelBatch's. All [B, S]."""

  encoder_inputs: jax.Array  # int32 token ids the encoder reads
  encoder_mask: AttentionMask  # every token bidirectional within its segment
  inputs: jax.Array  # int32 decoder token ids (a start token first in each document)
  mask: AttentionMask  # the decoder's: causal within each segment
  targets: jax.Array  # int32 ids the decoder predicts at each position
  weights: jax.Array  # float32 loss weight per decoder position


def _next(x_BS: jax.Array, fill) -> jax.Array:
  """x shifted one left: x[:, t + 1] at t, `fill` at the end."""
  return jnp.concatenate([x_BS[:, 1:], jnp.full_like(x_BS[:, :1], fill)], axis=1)


def _pack_front(keep_BS: jax.Array, arrays: tuple, fills: tuple) -> tuple:
  """Each row's kept entries of every array moved to its front in order, the rest `fill`."""
  B, S = keep_BS.shape
  dest_BS = jnp.where(keep_BS, jnp.cumsum(keep_BS, axis=1) - 1, S)  # S: out of range, dropped
  rows_B1 = jnp.arange(B)[:, None]
  return tuple(jnp.full((B, S), fill, x.dtype).at[rows_B1, dest_BS].set(x, mode='drop')
               for x, fill in zip(arrays, fills))


def _mask(segment_ids_BS: jax.Array, bidirectional: bool) -> AttentionMask:
  """Positions restart at 0 in each document run (pads form runs too; nothing reads theirs)."""
  return AttentionMask(segment_ids_BS, document_offsets(segment_ids_BS)[0],
                       jnp.full(segment_ids_BS.shape, bidirectional))


def to_encoder_decoder(mb: ModelBatch, spec: ObjectiveSpec) -> EncoderDecoderBatch:
  """The encoder-decoder batch of a decoder-form batch (see the module docstring)."""
  seg_BS, input_part_BS = mb.mask.segment_ids, mb.mask.bidirectional
  real_BS = seg_BS != 0
  encoder_BS = input_part_BS & real_BS
  decoder_BS = real_BS & (_next(seg_BS, 0) == seg_BS) & ~_next(input_part_BS, True)
  enc_tokens_BS, enc_seg_BS = _pack_front(encoder_BS, (mb.inputs, seg_BS), (spec.pad_id, 0))
  dec_inputs_BS = jnp.where(input_part_BS, spec.pad_id, mb.inputs)  # the last input token becomes the start token
  dec_tokens_BS, dec_seg_BS, targets_BS, weights_BS = _pack_front(
      decoder_BS, (dec_inputs_BS, seg_BS, mb.targets, mb.weights), (spec.pad_id, 0, 0, 0.0))
  return EncoderDecoderBatch(encoder_inputs=enc_tokens_BS, encoder_mask=_mask(enc_seg_BS, True),
                             inputs=dec_tokens_BS, mask=_mask(dec_seg_BS, False), targets=targets_BS,
                             weights=weights_BS)


def encode_all(mb: ModelBatch, spec: ObjectiveSpec) -> EncoderDecoderBatch:
  """The encoder-decoder batch of a decoder-form batch whose real tokens are all bidirectional (masked LM's form):
  the encoder reads its inputs and mask as they are, the decoder predicts its scored targets in order from mask ids
  (see the module docstring), with the same weights."""
  dec_seg_BS, targets_BS, weights_BS = _pack_front(mb.weights > 0, (mb.mask.segment_ids, mb.targets, mb.weights),
                                                   (0, 0, 0.0))
  return EncoderDecoderBatch(encoder_inputs=mb.inputs, encoder_mask=mb.mask,
                             inputs=jnp.where(dec_seg_BS != 0, spec.mask_id, spec.pad_id),
                             mask=_mask(dec_seg_BS, False), targets=targets_BS, weights=weights_BS)
