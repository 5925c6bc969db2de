"""What `--mode=compare` runs by default: causal, prefix_lm and masked_lm on the tiny model at four FLOP budgets.

Vanilla attention, so every variant executes the same FLOPs per token and runs the same steps at a budget:
budget / (batch_size x seq_len x flops_per_token). Sized for about half an hour on 2 idle CPU cores.
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.seq_len = 128
  c.compare.flops_budgets = (1e12, 2.5e12, 6e12, 1.5e13)  # 69 to 1034 steps of the tiny model
  c.train.warmup_steps = 50  # a run warms up for at most a tenth of its steps
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 250
  return c
