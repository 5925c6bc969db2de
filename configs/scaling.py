"""`--mode=scaling` default: 5 widths x 3 budgets of byte-level models (35k-740k params) on the embedded corpus.

Byte tokens keep the vocabulary (264) from dominating models this small and need no tokenizer training. About
N minutes on 2 CPU cores; each run evaluates and checkpoints once, at its end.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.tokenizer = 'byte'
  c.data.vocab_size = 264
  c.data.seq_len = 128
  c.model.num_layers = 4  # the base model is the rule's d_model=64; each run replaces the shape keys
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.d_ff = 192
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.log_every = 50
  c.train.eval_batches = 16
  c.scaling.flops = (3e11, 1e12, 3e12)
  c.scaling.d_models = (32, 48, 64, 80, 96)
  c.scaling.aspect_ratio = 16
  c.scaling.head_dim = 16
  return c
