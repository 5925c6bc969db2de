"""A ~1.0B-parameter LLaMA-shaped model at 4K context in bfloat16, for a TPU VM or GPU node.

  python main.py --config=configs/llama1b.py --workdir=gs://BUCKET/runs/llama1b --config.data.tfds_name=c4/en:3.1.0
  python main.py --config=configs/llama1b.py --workdir=/tmp/est --mode=estimate   # describe it on any machine
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.num_layers = 20
  c.model.d_model = 2048
  c.model.num_heads = 16
  c.model.num_kv_heads = 8  # GQA: 2 query heads per kv head
  c.model.d_ff = 5632  # ~2.75 x d_model, the SwiGLU width that matches a 4x standard MLP in parameters
  c.model.attention = 'blockwise'
  c.model.q_block = 512
  c.model.kv_block = 512
  c.model.dtype = 'bfloat16'
  c.model.remat = True
  c.model.tie_embeddings = False
  c.data.seq_len = 4096
  c.data.vocab_size = 32_000
  c.data.stream_shards = 32  # a catalogue dataset: each of up to 32 hosts reads only its own shards
  c.train.steps = 100_000
  c.train.batch_size = 256  # 1M tokens per step
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 2000
  c.train.eval_every = 2000
  c.train.eval_batches = 32
  c.checkpoint.every_steps = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
