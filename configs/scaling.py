"""`--mode=scaling` default: byte-level models of 14k-970k params on the embedded corpus, 5 widths x 3 budgets.

The sweep itself is configs/default.py's: budgets 3e11, 1e12, 3e12 FLOPs; d_model 24, 48, 72, 96, 120 with
num_layers = d_model / 24 and 24-wide heads. Byte tokens keep the vocabulary (264) from dominating models this small
and need no tokenizer training. Each run evaluates and checkpoints once, at its end.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.tokenizer = 'byte'
  c.data.vocab_size = 264
  c.data.seq_len = 128
  c.model.num_layers = 2  # the base model is the rule's d_model=48; each run replaces the shape keys
  c.model.d_model = 48
  c.model.num_heads = 2
  c.model.num_kv_heads = 2
  c.model.d_ff = 144
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.log_every = 50
  c.train.eval_batches = 16
  c.train.eval_probes = False  # the sweep needs the eval loss only
  return c
