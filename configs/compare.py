"""What `--mode=compare` runs by default: causal, prefix_lm and masked_lm on the tiny model at one FLOP budget.

Vanilla attention, so every objective costs the same per token and runs train.steps steps; the budget is therefore
train.steps x batch_size x seq_len x flops_per_token. Sized for about half an hour on 2 CPU cores.
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.seq_len = 128
  c.train.steps = 600
  c.train.warmup_steps = 50
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 200
  return c
