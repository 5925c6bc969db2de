"""One transformer block, fwd+bwd: compiled temp memory and median time for vanilla, blockwise and BPT layers.

  .venv/bin/python benchmarks/layer.py --seq_lens=2048,8192 --ffn_mults=4,16 --runs=3

Measures the real models.transformer.Block (pre-norm attention + SwiGLU FFN), gradients of its params and input.
Layers: `vanilla` (vanilla attention, standard FFN), `blockwise` (blockwise attention, standard FFN), `bpt`
(blockwise attention, blockwise FFN). Prints one JSON object per line; `--runs=0` only compiles, which is how
layers too large for host memory (vanilla at long lengths) still get their memory number.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from configs.sections import ModelConfig  # noqa: E402
from models.attention import AttentionMask  # noqa: E402
from models.transformer import Block  # noqa: E402

LAYERS = {'vanilla': ('vanilla', 'standard'), 'blockwise': ('blockwise', 'standard'), 'bpt': ('blockwise', 'blockwise')}


def layer_config(layer: str, d_model: int, heads: int, head_dim: int, d_ff: int, dtype: str, q_block: int = 128,
                 kv_block: int = 128, ffn_block: int = 128) -> ModelConfig:
  """A ModelConfig for one block; vocab and depth do not matter to a single Block. The pure-JAX attention kernels
  (model.attention_kernel=jax), so each layer is what its name says on every platform."""
  attention, ffn = LAYERS[layer]
  return ModelConfig(vocab_size=1, num_layers=1, d_model=d_model, num_heads=heads, num_kv_heads=heads,
                     head_dim=head_dim, d_ff=d_ff, attention=attention, ffn=ffn, q_block=q_block, kv_block=kv_block,
                     ffn_block=ffn_block, dtype=dtype, attention_kernel='jax')


def compile_layer(cfg: ModelConfig, batch: int, seq_len: int) -> jax.stages.Compiled:
  """Value and gradients (params and input) of sum(block(x) * dy), compiled from shapes alone (no init)."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Block(cfg, nnx.Rngs(0))), nnx.Param)
  x = jax.ShapeDtypeStruct((batch, seq_len, cfg.d_model), jnp.dtype(cfg.dtype))
  mask = jax.eval_shape(lambda: AttentionMask.causal(batch, seq_len))

  def step(params, x, dy, mask):
    def loss(params, x):
      return (nnx.merge(graphdef, params)(x, mask) * dy).astype(jnp.float32).sum()
    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

  return jax.jit(step).lower(params, x, x, mask).compile()


def temp_bytes(cfg: ModelConfig, batch: int, seq_len: int) -> int:
  return compile_layer(cfg, batch, seq_len).memory_analysis().temp_size_in_bytes


def measure(cfg: ModelConfig, batch: int, seq_len: int, runs: int, run_cap_bytes: float) -> dict:
  """Memory always; times only when the temp memory is under run_cap_bytes (compiling never allocates it)."""
  compiled = compile_layer(cfg, batch, seq_len)
  memory = compiled.memory_analysis()
  runs = runs if memory.temp_size_in_bytes <= run_cap_bytes else 0
  times = []
  if runs:
    params = nnx.split(Block(cfg, nnx.Rngs(0)), nnx.Param)[1]
    kx, ky = jax.random.split(jax.random.key(1))
    x, dy = (jax.random.normal(key, (batch, seq_len, cfg.d_model), jnp.dtype(cfg.dtype)) for key in (kx, ky))
    inputs = (params, x, dy, AttentionMask.causal(batch, seq_len))
    jax.block_until_ready(compiled(*inputs))  # warm-up
    for _ in range(runs):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*inputs))
      times.append(time.perf_counter() - start)
  return dict(temp_bytes=memory.temp_size_in_bytes, argument_bytes=memory.argument_size_in_bytes,
              output_bytes=memory.output_size_in_bytes, median_s=statistics.median(times) if times else None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seq_lens', default='2048,8192')
  parser.add_argument('--layers', default='vanilla,blockwise,bpt')
  parser.add_argument('--ffn_mults', default='4,16', help='d_ff as multiples of d_model')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--d_model', type=int, default=512)
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--head_dim', type=int, default=64)
  parser.add_argument('--q_block', type=int, default=128)
  parser.add_argument('--kv_block', type=int, default=128)
  parser.add_argument('--ffn_block', type=int, default=128)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--runs', type=int, default=3, help='timed runs after one warm-up; 0 = compile only')
  parser.add_argument('--run_cap_gb', type=float, default=4.0,
                      help='layers whose compiled temp memory exceeds this only compile (protects host memory)')
  args = parser.parse_args()
  for seq_len in map(int, args.seq_lens.split(',')):
    for mult in map(int, args.ffn_mults.split(',')):
      for layer in args.layers.split(','):
        cfg = layer_config(layer, args.d_model, args.heads, args.head_dim, mult * args.d_model, args.dtype,
                           args.q_block, args.kv_block, args.ffn_block)
        row = measure(cfg, args.batch, seq_len, args.runs, args.run_cap_gb * 2**30)
        print(json.dumps(dict(layer=layer, attention=cfg.attention, ffn=cfg.ffn, seq_len=seq_len, ffn_mult=mult,
                              d_ff=cfg.d_ff, **row, batch=args.batch, d_model=args.d_model, heads=args.heads,
                              head_dim=args.head_dim, q_block=args.q_block, kv_block=args.kv_block,
                              ffn_block=args.ffn_block, dtype=args.dtype, backend=jax.default_backend())),
              flush=True)


if __name__ == '__main__':
  main()
