"""A small isoFLOP sweep for tests/test_scaling.py: 3 widths x 2 budgets of one-layer byte-level models."""

from configs import scaling


def get_config():
  c = scaling.get_config()
  c.model.d_model, c.model.num_heads, c.model.num_kv_heads = 32, 2, 2
  c.data.seq_len = 32
  c.train.batch_size = 4
  c.train.eval_batches = 1
  c.scaling.flops = (1e8, 3e8)
  c.scaling.d_models = (16, 32, 48)
  c.scaling.aspect_ratio = 48  # one layer each: compiling, not training, is what costs here
  c.scaling.head_dim = 16
  c.scaling.window = 0.0  # every width at every budget
  c.scaling.min_steps = 1
  c.scaling.bootstrap = 5
  return c
