"""`--mode=estimate`: parameters, FLOPs per token and per-device memory of the compiled train step, without data."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from sharding import rules
from train import flops as flops_lib
from train import optimizer as optimizer_lib
from train import step as step_lib
from train.runtime import Run


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its shard of each leaf)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def estimate(run: Run) -> dict[str, float]:
  """Compiles the run's train step for its mesh and writes WORKDIR/estimate.json.

  `flops_per_token` is PaLM's model count (every query meets all S keys); a training run also reports what its
  attention path executes, which needs its data. `memory_per_device_bytes` is what XLA allocates on the largest
  device: arguments (its shards of params, optimizer state and the batch) plus temporaries (activations kept for
  the backward pass, gradients, workspace). The params and optimizer entries break the arguments down; activations
  are the temporaries.
  """
  config, setup, mesh = run.config, run.setup, run.runtime.mesh
  with run.runtime.active():
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    step = step_lib.make_train_step(setup, mesh, config.objective, run.spec, run.token_bytes, schedule,
                                    config.train.grad_accum_steps)
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rules.batch_sharding(mesh))
             for k in ('tokens', 'segment_ids', 'positions')}
    memory = step.lower(setup.abstract, batch).compile().memory_analysis()
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
      'devices': jax.device_count(),
      'mesh': dict(mesh.shape),
  }
  if run.runtime.is_main:
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, 'estimate.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
