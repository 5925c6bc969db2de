"""A seconds-long isoFLOP sweep for tests/test_scaling.py: 3 widths x 2 budgets of 1- to 3-layer byte-level models."""

from configs import scaling


def get_config():
  c = scaling.get_config()
  c.model.d_model = 32
  c.data.seq_len = 32
  c.train.batch_size = 4
  c.train.eval_batches = 1
  c.scaling.flops = (1e8, 3e8)
  c.scaling.d_models = (16, 32, 48)
  c.scaling.aspect_ratio = 16
  c.scaling.head_dim = 16
  c.scaling.bootstrap = 5
  return c
