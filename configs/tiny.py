"""What `make train` runs: a ~1.5M-parameter model on the embedded stdlib corpus, ~10 minutes on 2 CPU cores."""

from configs import default


def get_config():
  c = default.get_config()
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.d_ff = 384
  c.data.seq_len = 256
  c.data.vocab_size = 2048
  c.train.steps = 600
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 50
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 200
  return c
