"""Compile for a TPU this machine does not have: libtpu's compiler, ahead of time, from CPU; prints JSON.

The project's .venv is CPU-only, so this runs from its own venv with libtpu (the version jax 0.10.2 pins):
  python3.11 -m venv /tmp/tpuvenv && /tmp/tpuvenv/bin/pip install "jax[tpu]==0.10.2"
  JAX_PLATFORMS=cpu /tmp/tpuvenv/bin/python scripts/tpu_aot_probe.py --topology=v5e:2x2 --topology=v5p:2x2x1
For each topology (jax.experimental.topologies names: 'v5e:2x2', 'v5p:2x2x1', 'v6e:2x2', 'v4:2x2x1'; at least one
host's chips) one JSON object per line: the devices it describes, and for a data-parallel MLP step and for splash
attention forward + backward (shard_map over the batch) the compile time, every field of memory_analysis(), the
cost_analysis() dict, and whether the compiled HLO holds the Pallas kernel (custom call target 'tpu_custom_call').
cost_analysis() counts no FLOPs inside a Pallas kernel (splash gives the compiler no cost estimate): count attention
FLOPs analytically. libtpu logs warnings about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES on stderr; harmless here.
"""

import argparse
import json
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from models.attention import AttentionMask  # noqa: E402
from models.attention.pallas import MaskKind, pallas_attention  # noqa: E402

PALLAS_CALL = 'tpu_custom_call'  # the custom call every Mosaic (Pallas TPU) kernel lowers to
SPLASH_KERNEL = re.compile(r'splash_m[hq]a_(?:fwd|dq|dkv)\w*')  # its instructions' names, e.g. splash_mha_fwd_...


def memory_fields(compiled) -> dict:
  stats = compiled.memory_analysis()
  return {name: getattr(stats, name) for name in dir(stats)
          if not name.startswith('_') and isinstance(getattr(stats, name), (int, float))}


def compile_report(fn, args: tuple) -> dict:
  """Lower and compile for the described devices; what the TPU compiler says about the program."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  hlo = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {'compile_seconds': round(seconds, 2), 'memory_analysis': memory_fields(compiled),
          'cost_analysis': {k: float(v) for k, v in sorted(cost.items())},
          'pallas_custom_calls': hlo.count(f'custom_call_target="{PALLAS_CALL}"'),
          'splash_kernels': sorted(set(SPLASH_KERNEL.findall(hlo)))}


def mlp_step(mesh, batch_per_device: int = 8, width: int = 1024) -> dict:
  """Loss and gradients of a two-layer MLP, batch over every device, weights replicated."""
  def loss(w1, w2, x):
    return jnp.mean(jax.nn.gelu(x @ w1) @ w2)

  spec = lambda shape, *axes: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, P(*axes)))
  args = (spec((width, 4 * width)), spec((4 * width, width)), spec((batch_per_device * mesh.size, width), 'data'))
  return compile_report(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), args)


def splash_step(mesh, kind: MaskKind, batch_per_device: int = 1, seq_len: int = 2048, heads: int = 8,
                kv_heads: int = 2, head_dim: int = 128) -> dict:
  """Splash attention forward + dq/dk/dv, each device running the kernel on its share of the batch.

  check_vma=False: splash declares its outputs without the varying-axes type shard_map would check.
  """
  def attend(q, k, v, mask):
    return pallas_attention(q, k, v, mask, kind=kind, platform='tpu', q_block=512, kv_block=512)

  def loss(q, k, v, mask):
    sharded = jax.shard_map(attend, mesh=mesh, in_specs=P('data'), out_specs=P('data'), check_vma=False)
    return jnp.mean(sharded(q, k, v, mask).astype(jnp.float32))

  B = batch_per_device * mesh.size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P('data')))
  mask = AttentionMask(spec((B, seq_len), jnp.int32), spec((B, seq_len), jnp.int32), spec((B, seq_len), bool))
  kv = spec((B, seq_len, kv_heads, head_dim), jnp.bfloat16)
  args = (spec((B, seq_len, heads, head_dim), jnp.bfloat16), kv, kv, mask)
  return compile_report(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), args)


def probe(topology: str, kind: MaskKind) -> dict:
  start = time.perf_counter()
  devices = topologies.get_topology_desc(platform='tpu', topology_name=topology).devices
  result = {'topology': topology, 'topology_seconds': round(time.perf_counter() - start, 2),
            'num_devices': len(devices), 'device_kind': devices[0].device_kind,
            'processes': len({d.process_index for d in devices}), 'coords': [list(d.coords) for d in devices]}
  mesh = jax.sharding.Mesh(devices, ('data',))
  result['mlp'] = mlp_step(mesh)
  result['splash'] = splash_step(mesh, kind)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--topology', action='append', help="e.g. v5e:2x2 (repeatable; default v5e:2x2, v5p:2x2x1)")
  parser.add_argument('--bidirectional', default='none', choices=('none', 'prefix', 'all'),
                      help='the mask kind splash serves in the attention step')
  args = parser.parse_args()
  for topology in args.topology or ['v5e:2x2', 'v5p:2x2x1']:
    print(json.dumps(probe(topology, MaskKind(args.bidirectional))), flush=True)


if __name__ == '__main__':
  main()
