"""Long context on a CPU: the tiny model at 2048 tokens with ring attention over 4 (fake) devices on the sequence axis.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 .venv/bin/python main.py --config=configs/long_context.py \
    --workdir=runs/long_context

Each device holds 512 tokens of every row (zig-zag layout) and passes its keys and values around the ring. The point
is the loss by position it writes (WORKDIR/loss_by_position.png): how much the model gains from context far beyond
what one device holds. The embedded corpus's longer files (the packing restarts positions per document) supply the
late positions.
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.seq_len = 2048
  c.model.attention = 'ring'
  c.mesh.sequence = 4
  c.train.batch_size = 4
  c.train.steps = 300
  c.train.warmup_steps = 30
  c.train.eval_every = 300
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 300
  return c
