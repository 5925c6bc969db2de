"""`--mode=estimate`: parameters, FLOPs per token and per-device memory of the compiled train step, without data.

With `estimate.topology` the step is compiled ahead of time for a TPU slice this machine does not have, by libtpu's
compiler (`make setup ACCEL=tpu`; run with JAX_PLATFORMS=cpu on a machine without a TPU): its exact per-device
memory, and the TPU cost model's step time, from which the MFU it implies. The cost model counts no FLOPs inside a
Pallas kernel, so the MFU uses the model's FLOPs, not the compiler's.
"""

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies

from configs.errors import ConfigError
from sharding import rules
from train import flops as flops_lib
from train import optimizer as optimizer_lib
from train import step as step_lib
from train.metrics import peak_flops_per_device
from train.runtime import Run

PALLAS_TPU_CALL = 'custom_call_target="tpu_custom_call"'  # what every Mosaic (Pallas TPU) kernel compiles to


def topology_devices(topology: str) -> list[jax.Device]:
  """The devices of a TPU topology such as 'v5e:2x2', described by libtpu without any TPU attached."""
  if importlib.util.find_spec('libtpu') is None:
    raise ConfigError('estimate.topology', topology, 'compiling for a TPU needs libtpu: run `make setup ACCEL=tpu` '
                      '(or pip install -r requirements-tpu.txt)')
  try:
    return list(topologies.get_topology_desc(platform='tpu', topology_name=topology).devices)
  except Exception as e:  # libtpu's own error for a name it does not know; its first line says why
    raise ConfigError('estimate.topology', topology, f'libtpu cannot describe it ({str(e).splitlines()[0]}); use '
                      'a name like v5e:2x2, v5p:2x2x1 or v6e:2x2') from None


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its shard of each leaf)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@contextlib.contextmanager
def _abstract_mesh(mesh, logical_rules) -> Iterator[None]:
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), rules.use(logical_rules):
    yield


def _tpu_cost(compiled, run: Run, mesh) -> dict:
  """The TPU compiler's view of the step: device kind, fused kernel calls, its cost model's step time and the MFU
  that time implies (model FLOPs over the table's peak for the device kind)."""
  config = run.config
  kind = mesh.devices.flat[0].device_kind
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  result = {'topology': config.estimate.topology, 'device_kind': kind,
            'pallas_kernel_calls': compiled.as_text().count(PALLAS_TPU_CALL)}
  seconds = float(cost.get('optimal_seconds', 0.0))
  peak = peak_flops_per_device(config.train.peak_flops_per_device, config.model.dtype, kind)
  if seconds > 0:
    result['step_seconds_cost_model'] = seconds
    if peak:
      tokens = config.train.batch_size * config.data.seq_len
      result['mfu_cost_model'] = tokens * run.model_flops_per_token / (seconds * peak * mesh.size)
  return result


def _compile(lowered, topology: str):
  """The compiled step; on a TPU topology whose memory it overflows, one line saying by how much and what helps."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    message = str(e).splitlines()[0] if str(e) else ''
    if not topology or not message.startswith('RESOURCE_EXHAUSTED'):
      raise
    raise ConfigError('estimate.topology', topology, f'the train step does not fit: '
                      f'{message.removeprefix("RESOURCE_EXHAUSTED: ")}; use more chips, a smaller '
                      'train.batch_size, train.grad_accum_steps > 1 or model.remat=True') from None


def estimate(run: Run) -> dict[str, float]:
  """Compiles the run's train step for its mesh and writes WORKDIR/estimate.json.

  `flops_per_token` is PaLM's model count (every query meets all S keys); a training run also reports what its
  attention path executes, which needs its data. `memory_per_device_bytes` is what XLA allocates on the largest
  device: arguments (its shards of params, optimizer state and the batch) plus temporaries (activations kept for
  the backward pass, gradients, workspace). The params and optimizer entries break the arguments down; activations
  are the temporaries.
  """
  config, setup, mesh = run.config, run.setup, run.runtime.mesh
  # A topology's devices are descriptions: the trace sees only the abstract mesh, so nothing eager (a Pallas
  # kernel's mask tables) tries to live on them; the step's explicit shardings still name them.
  context = (_abstract_mesh(mesh, run.runtime.rules) if config.estimate.topology else run.runtime.active())
  with context:
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    step = step_lib.make_train_step(setup, mesh, config.objective, run.spec, run.token_bytes, schedule,
                                    config.train.grad_accum_steps)
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rules.batch_sharding(mesh))
             for k in ('tokens', 'segment_ids', 'positions')}
    compiled = _compile(step.lower(setup.abstract, batch), config.estimate.topology)
    memory = compiled.memory_analysis()
  counts = flops_lib.count_params(config.model)
  result = {
      'params': counts['total'],
      'params_non_embedding': counts['non_embedding'],
      'flops_per_token': run.model_flops_per_token,
      'memory_per_device_bytes': int(memory.argument_size_in_bytes + memory.temp_size_in_bytes),
      'memory_params_per_device_bytes': _bytes_per_device(setup.abstract['params']),
      'memory_optimizer_per_device_bytes': _bytes_per_device(setup.abstract['opt_state']),
      'memory_activations_per_device_bytes': int(memory.temp_size_in_bytes),
      'memory_arguments_bytes': int(memory.argument_size_in_bytes),
      'devices': mesh.size,
      'mesh': dict(mesh.shape),
  }
  if config.estimate.topology:
    result |= _tpu_cost(compiled, run, mesh)
  if run.runtime.is_main:
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, 'estimate.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
