"""`--mode=compare` over architectures: the lecture's causal decoder, non-causal decoder and encoder-decoder, and
span corruption on both, at matched training FLOPs.

The tokenizer study's setup (configs/compare_tokenizers.py: the tiny model, d_model 128, seq_len 256, batch 16,
vanilla attention, budgets 1e12, 3e12 and 1e13, its schedule and evaluation) with its 2048-piece BPE throughout.
The decoders have 4 layers; the encoder-decoder 2 + 2: as many blocks per token slot (its encoder and decoder rows
are each a training row long, train/objectives/encoder_decoder.py, so every token costs one encoder and one decoder
slot), plus cross-attention, which makes it ~1.2x the decoder's FLOPs per token; budgets count executed FLOPs
(train/flops.py), so it simply runs fewer steps. Causal LM first: the baseline the others' power laws are compared
with. Every variant has the same 100 sentinel ids (T5's extra ids) on top of the BPE, so all read the same tokens;
only span corruption uses them. The shared probes read the encoder-decoder as train/probes.py documents.

Steps per budget, decoder | encoder-decoder: 1e12: 30 | 26, 3e12: 92 | 78, 1e13: 307 | 262 (15 runs). Measured
CPU-seconds per training step (2 cores under a load of 5): causal 1.00, prefix_lm 1.10, span 1.13, encdec_prefix_lm
1.19, encdec_span 1.29; per evaluation (8 batches: own loss and the probes) 13 (decoder) and 17 (encoder-decoder).
With compiles, about 54 CPU-minutes in all: an estimated 30-40 minutes on 2 idle cores.
"""

from configs import compare_tokenizers

ARCHITECTURE_VARIANTS = ('causal: objective=causal; '
                         'prefix_lm: objective=prefix_lm; '
                         'encdec_prefix_lm: objective=prefix_lm model.architecture=encoder_decoder; '
                         'span: objective=span_corruption; '
                         'encdec_span: objective=span_corruption model.architecture=encoder_decoder')


def get_config():
  c = compare_tokenizers.get_config()  # its tiny model, budgets and schedule, so the two studies' numbers line up
  c.compare.variants = ARCHITECTURE_VARIANTS
  c.model.num_encoder_layers = 2  # the encoder_decoder variants: 2 + 2 layers against the decoders' 4
  c.model.num_decoder_layers = 2
  c.data.extra_ids = 100
  c.data.vocab_size = 2048 + c.data.extra_ids
  return c
