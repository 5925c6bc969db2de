"""`--mode=scaling` default: byte-level models of 10k-390k params on the embedded corpus, 6 budgets over 32x.

Budgets 1.25e11 to 4e12 executed training FLOPs, doubling. Each trains the widths of `scaling.d_models` whose N lies
within 4x of N_c = 0.06 C^0.5 (Chinchilla's N_opt ~ C^0.5; the constant from an earlier sweep here), so each
isoFLOP curve brackets its minimum with 5-7 sizes; depth follows width (num_layers = round(d_model / 24)), heads
are 8 wide. Six budgets rather than four wider-spaced ones: the allocation exponent is a slope through the budgets'
minima, and more minima pin it better than a larger top budget at the same cost (the top budget's runs are most of
the sweep's time). Byte tokens keep the vocabulary (264) from dominating models this small and need no tokenizer
training. Batches of 8 x 128 tokens give every run at least 200 optimizer steps. Each run evaluates and
checkpoints once, at its end.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.tokenizer = 'byte'
  c.data.vocab_size = 264
  c.data.seq_len = 128
  c.model.num_layers = 2  # the base model is the rule's d_model=48; each run replaces the shape keys
  c.model.d_model = 48
  c.model.num_heads = 6
  c.model.num_kv_heads = 6
  c.model.d_ff = 144
  c.train.batch_size = 8
  c.train.learning_rate = 3e-3
  c.train.log_every = 100
  c.train.eval_batches = 32
  c.train.eval_probes = False  # the sweep needs the eval loss only
  c.scaling.flops = (1.25e11, 2.5e11, 5e11, 1e12, 2e12, 4e12)
  c.scaling.d_models = (16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128)
  c.scaling.head_dim = 8
  c.scaling.window = 4.0
  c.scaling.min_steps = 200
  return c
