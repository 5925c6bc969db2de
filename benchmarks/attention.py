"""Attention paths compared: fwd+bwd compiled temp memory (per device), median step time, longest length under a cap.

  .venv/bin/python benchmarks/attention.py --seq_lens=1024,2048,4096,8192 --paths=vanilla,blockwise,ring
  python benchmarks/attention.py --paths=blockwise --kernel=pallas --dtype=bfloat16 ...   # a GPU or TPU: fused
  .venv/bin/python benchmarks/attention.py --paths=blockwise --kernel=pallas --interpret=gpu --seq_lens=256  # CPU

Prints one JSON object per line. On CPU, ring runs on 8 fake host devices (set before jax is imported), so its
times measure overhead, not speed-up; its memory is per device, which is what the ring saves. --ring_devices
measures the ring over fewer devices too (a sequence axis of each size), to show memory falling as 1/n.
--kernel is model.attention_kernel: `pallas` runs blockwise attention through the platform's fused kernel (splash on
TPU, Triton flash on GPU); `--interpret` runs a platform's kernel in Pallas' interpreter, which checks that the path
runs on CPU (its times mean nothing).
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from models.attention import AttentionMask, attend, dispatch, ring  # noqa: E402

AXES = ('data', 'fsdp', 'tensor', 'sequence')


def make_mask(kind: str, batch: int, seq_len: int) -> AttentionMask:
  mask = AttentionMask.causal(batch, seq_len)
  if kind == 'bidirectional':
    mask = AttentionMask(mask.segment_ids, mask.positions, jnp.ones((batch, seq_len), bool), kind='all')
  return mask


def build(args: argparse.Namespace, path: str, seq_len: int, devices: int = 1):
  """(compiled fwd+bwd step, its inputs, mesh or None); ring runs on a sequence-only mesh over `devices`."""
  dtype = jnp.dtype(args.dtype)
  shapes = [(args.batch, seq_len, h, args.head_dim) for h in (args.heads, args.kv_heads, args.kv_heads, args.heads)]
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, do = (jax.random.normal(key, shape, dtype) for key, shape in zip(keys, shapes))
  mask = make_mask(args.mask, args.batch, seq_len)

  def step(q, k, v, do, mask):
    loss = lambda q, k, v: (attend(q, k, v, mask, kind=path, q_block=args.q_block, kv_block=args.kv_block,
                                   kernel=args.kernel) * do).astype(jnp.float32).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  mesh = None
  inputs = (q, k, v, do, mask)
  if path == 'ring':  # in the trainer's zig-zag layout, which balances the causal work
    mesh = jax.make_mesh((1, 1, 1, devices), AXES, devices=jax.devices()[:devices])
    sharded = NamedSharding(mesh, P(None, 'sequence'))
    inputs = jax.device_put(ring.to_zigzag(inputs, devices), sharded)
  interpret = dispatch.interpret_as(args.interpret) if args.interpret else contextlib.nullcontext()
  with interpret, jax.set_mesh(mesh) if mesh else contextlib.nullcontext():
    compiled = jax.jit(step).lower(*inputs).compile()
  return compiled, inputs, mesh


def temp_bytes(args: argparse.Namespace, path: str, seq_len: int, devices: int = 1) -> int:
  return build(args, path, seq_len, devices)[0].memory_analysis().temp_size_in_bytes


def measure(args: argparse.Namespace, path: str, seq_len: int, devices: int = 1) -> dict:
  """Memory always; times only when the temp memory is under --run_cap_gb (compiling never allocates it)."""
  compiled, inputs, mesh = build(args, path, seq_len, devices)
  memory = compiled.memory_analysis()
  runs = args.runs if memory.temp_size_in_bytes <= args.run_cap_gb * 2**30 else 0
  times = []
  with jax.set_mesh(mesh) if mesh else contextlib.nullcontext():
    if runs:
      jax.block_until_ready(compiled(*inputs))  # warm-up
    for _ in range(runs):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*inputs))
      times.append(time.perf_counter() - start)
  return dict(path=path, seq_len=seq_len, temp_bytes_per_device=memory.temp_size_in_bytes,
              argument_bytes_per_device=memory.argument_size_in_bytes,
              median_s=statistics.median(times) if times else None, devices=mesh.size if mesh else 1)


def max_seq_len(args: argparse.Namespace, path: str, devices: int = 1) -> dict:
  """Longest power-of-two multiple of the block lengths whose compiled temp memory fits under the cap."""
  chunks = 2 * devices if path == 'ring' else 1  # ring: two zig-zag chunks per device
  cap, seq_len, best = args.memory_cap_gb * 2**30, max(args.q_block, args.kv_block) * chunks, None
  while seq_len <= args.max_search_len and temp_bytes(args, path, seq_len, devices) <= cap:
    best, seq_len = seq_len, seq_len * 2
  return dict(path=path, devices=devices, memory_cap_gb=args.memory_cap_gb, max_seq_len=best)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seq_lens', default='1024,2048,4096,8192')
  parser.add_argument('--paths', default='vanilla,blockwise,ring')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--kv_heads', type=int, default=8)
  parser.add_argument('--head_dim', type=int, default=64)
  parser.add_argument('--q_block', type=int, default=128)
  parser.add_argument('--kv_block', type=int, default=128)
  parser.add_argument('--mask', default='causal', choices=('causal', 'bidirectional'))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--runs', type=int, default=3, help='timed runs after one warm-up; 0 = compile only')
  parser.add_argument('--run_cap_gb', type=float, default=4.0,
                      help='paths whose compiled temp memory exceeds this only compile (protects host memory)')
  parser.add_argument('--memory_cap_gb', type=float, default=0.0, help='> 0: also search the longest fitting length')
  parser.add_argument('--max_search_len', type=int, default=2**20)
  parser.add_argument('--ring_devices', default='', help='sequence axis sizes for ring; default: every device')
  parser.add_argument('--kernel', default='jax', choices=dispatch.KERNELS, help='model.attention_kernel')
  parser.add_argument('--interpret', choices=('tpu', 'gpu'), help="run that platform's Pallas kernels interpreted")
  args = parser.parse_args()
  config = dict(batch=args.batch, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, mask=args.mask,
                dtype=args.dtype, q_block=args.q_block, kv_block=args.kv_block, kernel=args.kernel,
                interpret=args.interpret, backend=jax.default_backend())
  ring_devices = [int(n) for n in args.ring_devices.split(',')] if args.ring_devices else [jax.device_count()]
  runs = [(path, n) for path in args.paths.split(',') for n in (ring_devices if path == 'ring' else [1])]
  for seq_len in map(int, args.seq_lens.split(',')):
    for path, devices in runs:
      print(json.dumps({**measure(args, path, seq_len, devices), **config}), flush=True)
  if args.memory_cap_gb > 0:
    for path, devices in runs:
      print(json.dumps({**max_seq_len(args, path, devices), **config}), flush=True)


if __name__ == '__main__':
  main()
