"""The whole train step's speed against this machine's own matmul peak, measured in the same run; prints JSON.

  .venv/bin/python benchmarks/train_step.py                                   # the d_model-512 model, CPU
  python benchmarks/train_step.py --kernel=pallas --dtype=bfloat16 ...        # a GPU or TPU, the fused kernels
  .venv/bin/python benchmarks/train_step.py --kernel=pallas --interpret=tpu --steps=1   # that path, on CPU

The real train step (train/step.py: causal objective, loss, AdamW update) on synthetic packed rows (no dataset, no
TensorFlow), data-parallel over every device. Reports tokens/s, model FLOPs/s (PaLM's count, train/flops.py: 6N
plus attention over every key) and their fraction of the peak of a jitted 2048^3 matmul in the same dtype, timed
here in the same process, so the fraction stays honest on a machine whose nominal peak nobody knows. Times are
medians of single steps after a warm-up (compile) step; on a shared machine they vary with the load.
`--interpret` runs a platform's Pallas kernels in the interpreter: it checks the path runs, its times mean nothing.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from configs.sections import Config  # noqa: E402
from configs.validate import attention_kernel  # noqa: E402
from models.attention import dispatch  # noqa: E402
from sharding.mesh import build_mesh  # noqa: E402
from train import flops as flops_lib  # noqa: E402
from train import optimizer as optimizer_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.objectives import ObjectiveSpec  # noqa: E402

PEAK_MATMUL = 2048  # M = N = K of the matmul that stands for the machine's peak


def timed(fn, runs: int) -> float:
  """Median seconds of `runs` calls of fn() after one warm-up call, each waited for on device."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak(dtype: str, runs: int) -> float:
  """FLOP/s of a jitted 2048^3 matmul on one device (the step's devices each get as much)."""
  a, b = (jax.random.normal(key, (PEAK_MATMUL, PEAK_MATMUL), jnp.dtype(dtype)) for key in jax.random.split(
      jax.random.key(0)))
  matmul = jax.jit(lambda a, b: a @ b)
  return 2 * PEAK_MATMUL**3 / timed(lambda: matmul(a, b), runs)


def packed_rows(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Rows of documents of random lengths (mean seq_len / 4) packed back to back, positions restarting per document."""
  rng = np.random.default_rng(seed)
  starts_BS = rng.random((batch, seq_len)) < 4 / seq_len
  starts_BS[:, 0] = True
  segment_ids = np.cumsum(starts_BS, axis=1).astype(np.int32)
  index = np.arange(seq_len)
  positions = index - np.maximum.accumulate(np.where(starts_BS, index, 0), axis=1)
  return {'tokens': rng.integers(8, vocab, (batch, seq_len)).astype(np.int32), 'segment_ids': segment_ids,
          'positions': positions.astype(np.int32)}


def step_config(args: argparse.Namespace) -> Config:
  c = default.get_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.d_ff = (args.num_layers, args.d_model, args.num_heads,
                                                                  args.num_kv_heads, args.d_ff)
  m.attention, m.attention_kernel, m.q_block, m.kv_block = args.attention, args.kernel, args.block, args.block
  m.dtype, m.remat, m.tie_embeddings = args.dtype, args.remat, False
  c.data.vocab_size, c.data.seq_len = args.vocab_size, args.seq_len
  c.train.batch_size, c.train.warmup_steps = args.batch, 0
  return Config.from_dict(c.to_dict())


def measure(args: argparse.Namespace) -> dict:
  config = step_config(args)
  mesh = build_mesh(config.mesh)
  setup = state_lib.build(config, mesh)
  spec = ObjectiveSpec(vocab_size=args.vocab_size, pad_id=0, mask_id=3, num_special=8)
  interpret = dispatch.interpret_as(args.interpret) if args.interpret else contextlib.nullcontext()
  with interpret, jax.set_mesh(mesh):
    kernel, why = attention_kernel(config, dispatch.target_platform(), mesh.size)
    step = step_lib.make_train_step(setup, mesh, 'causal', spec, np.ones(args.vocab_size, np.int32),
                                    optimizer_lib.learning_rate_schedule(config.train))
    batch = packed_rows(args.batch, args.seq_len, args.vocab_size)
    state = setup.init()

    def one_step():
      nonlocal state
      state, metrics = step(state, batch)
      return metrics

    step_s = timed(one_step, args.steps)
  peak = matmul_peak(args.dtype, args.steps)
  tokens_per_s = args.batch * args.seq_len / step_s
  model_flops_per_s = tokens_per_s * flops_lib.flops_per_token(config.model, args.seq_len)
  devices = jax.device_count()
  return dict(step_s=step_s, tokens_per_s=tokens_per_s, model_flops_per_s=model_flops_per_s,
              matmul_peak_flops_per_s_per_device=peak, fraction_of_matmul_peak=model_flops_per_s / (peak * devices),
              kernel_used=kernel, kernel_reason=why, devices=devices, backend=jax.default_backend(),
              device_kind=jax.devices()[0].device_kind, **vars(args))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_layers', type=int, default=4)
  parser.add_argument('--d_model', type=int, default=512)
  parser.add_argument('--num_heads', type=int, default=8)
  parser.add_argument('--num_kv_heads', type=int, default=8)
  parser.add_argument('--d_ff', type=int, default=1536)
  parser.add_argument('--vocab_size', type=int, default=2048)
  parser.add_argument('--seq_len', type=int, default=512)
  parser.add_argument('--batch', type=int, default=8, help='global rows per step (divisible by the device count)')
  parser.add_argument('--attention', default='blockwise', choices=('vanilla', 'blockwise'))
  parser.add_argument('--kernel', default='auto', choices=dispatch.KERNELS, help='model.attention_kernel')
  parser.add_argument('--block', type=int, default=128, help='q and kv block length')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--remat', action='store_true', help='recompute each block in the backward pass')
  parser.add_argument('--steps', type=int, default=5, help='timed steps (and matmuls) after one warm-up')
  parser.add_argument('--interpret', choices=('tpu', 'gpu'), help="run that platform's Pallas kernels interpreted")
  print(json.dumps(measure(parser.parse_args())), flush=True)


if __name__ == '__main__':
  main()
