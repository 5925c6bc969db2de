"""What `--mode=compare` runs by default: causal, prefix_lm and masked_lm on the tiny model at four FLOP budgets.

Vanilla attention, so every variant executes the same FLOPs per token and runs the same steps at a budget:
budget / (batch_size x seq_len x flops_per_token), 41 to 689 steps. Sized for about 25 minutes on 2 idle CPU cores.
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.seq_len = 128
  c.compare.flops_budgets = (6e11, 1.5e12, 4e12, 1e13)  # 41 to 689 steps of the tiny model
  c.train.warmup_steps = 50  # a run warms up for at most a tenth of its steps
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 250
  return c
