"""Evaluation: the objective's own validation loss and the shared probes, during training and for `--mode=eval`."""

import jax
import numpy as np

from configs.errors import ConfigError
from sharding import rules
from train import probes
from train import step as step_lib
from train.metrics import MetricsWriter
from train.runtime import Run


def make_eval_step(run: Run):
  """The jitted step of the run's own objective: params, batch, rng -> loss sums."""
  return step_lib.make_eval_step(run.setup, run.runtime.mesh, run.config.objective, run.spec, run.token_bytes)


def make_probe_step(run: Run):
  """The jitted shared-probe step (train/probes.py, either architecture), or None when train.eval_probes is off."""
  if not run.config.train.eval_probes:
    return None
  mesh = run.runtime.mesh
  layout = (lambda mb: step_lib.ring_layout(mb, mesh)) if run.config.model.attention == 'ring' else None
  fn = probes.make_probe_sums(run.setup.model_cfg, run.spec, run.token_bytes, layout=layout)
  replicated = rules.replicated(mesh)
  return jax.jit(fn, in_shardings=(run.setup.shardings['params'], rules.batch_sharding(mesh), replicated),
                 out_shardings=replicated)


def evaluate(run: Run, params, eval_step, probe_step=None) -> dict[str, float]:
  """The objective's own loss, perplexity, accuracy and bits/byte, plus the shared probes, over the first
  `train.eval_batches` validation batches (the same batches and noise every time, so evaluations compare)."""
  cfg = run.config
  total: dict[str, float] = {}
  probe_total: dict[str, float] = {}
  for i in range(cfg.train.eval_batches):
    batch = run.runtime.global_batch(run.data.eval.batch(i, cfg.train.batch_size))
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), i)
    sums = jax.device_get(eval_step(params, batch, rng))
    total = {k: total.get(k, 0.0) + np.asarray(v, np.float64) for k, v in sums.items()}
    if probe_step is not None:
      sums = jax.device_get(probe_step(params, batch, rng))
      probe_total = {k: probe_total.get(k, 0.0) + np.asarray(v, np.float64) for k, v in sums.items()}
  result = step_lib.summarize(total, 'eval')
  if probe_total:
    result |= probes.summarize(probe_total)
  return result


def evaluate_checkpoint(run: Run) -> dict[str, float]:
  """`--mode=eval`: the latest checkpoint in the run's workdir, evaluated; the metrics are written at its step."""
  ckpt = run.checkpointer()
  try:
    step = ckpt.latest_step()
    if step is None:
      raise ConfigError('--workdir', run.workdir, 'no checkpoint to evaluate there; train first (--mode=train)')
    with run.runtime.active():
      params = ckpt.restore(run.setup, step)['params']
      result = evaluate(run, params, make_eval_step(run), make_probe_step(run))
  finally:
    ckpt.close()
  writer = MetricsWriter(run.workdir, run.runtime.is_main)
  writer.write(step, result)
  writer.close()
  return result
