"""`--mode=compare` over tokenizers: byte, and sentencepiece char, word, BPE and unigram, at matched training FLOPs.

The tiny model (4 layers, d_model 128) at seq_len 256 and batch 16 for every variant; only the tokenizer and its
vocabulary change. Budgets count executed FLOPs, so the vocabulary's share (the LM head, D x V per token) is paid
for: the byte model (V = 264) runs more steps than the 2048-entry ones. Compared in bits per byte (the only unit
they share); results also list bytes per token and training tokens/s. BPE first: the baseline the others' power
laws are compared with. sentencepiece's char model keeps its own vocabulary whatever vocab_size asks (354 ids here:
the 256 byte-fallback pieces, the specials and the characters it keeps); ringlm requires the exact count. Sized for
about half an hour on 2 idle CPU cores.
"""

from configs import tiny

TOKENIZER_VARIANTS = ('bpe: data.spm_model_type=bpe; '
                      'unigram: data.spm_model_type=unigram; '
                      'word: data.spm_model_type=word; '
                      'char: data.spm_model_type=char data.vocab_size=354; '
                      'byte: data.tokenizer=byte data.vocab_size=264')


def get_config():
  c = tiny.get_config()
  c.compare.variants = TOKENIZER_VARIANTS
  c.compare.flops_budgets = (1e12, 3e12, 1e13)
  c.train.warmup_steps = 30  # a run warms up for at most a tenth of its steps
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 1000
  return c
