"""`--mode=train`: train a run to `train.steps`, resuming from its latest checkpoint, saving on preemption.

The batch for step k depends only on (seed, k) and the objective's noise on (seed, k), so a resumed run repeats
exactly what an uninterrupted one does.
"""

import math
import os
import signal
import time

import jax
from jax.experimental import multihost_utils

from configs.errors import TrainingDiverged
from train import checkpoint as checkpoint_lib
from train import hf_checkpoint
from train import optimizer as optimizer_lib
from train import params as params_lib
from train import step as step_lib
from train.evaluate import evaluate, make_eval_step, make_probe_step
from train.metrics import MetricsWriter, Progress, loss_by_position, peak_flops_per_device, plot_loss_by_position
from train.profile import StepProfiler
from train.runtime import Run


class Preemption:
  """SIGTERM (as a preemptible TPU VM or SLURM sends) or Ctrl-C asks the loop to save and exit after this step.

  A second Ctrl-C interrupts at once. With several processes SIGTERM is left to JAX's preemption notifier (installed
  by jax.distributed.initialize; a Python handler would replace it): whichever process gets the signal, its sync
  point makes them all stop at the same step.
  """

  def __init__(self):
    self._requested = False
    self._multiprocess = jax.process_count() > 1
    signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

  def _handle(self, signum, frame) -> None:
    del frame
    self._requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def should_stop(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step) or self._requested
    return self._requested

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _initial_state(run: Run, ckpt: checkpoint_lib.Checkpointer) -> dict:
  if ckpt.latest_step() is not None:
    return ckpt.restore(run.setup)
  state = run.setup.init()
  if run.config.checkpoint.init_from:
    state['params'] = checkpoint_lib.load_params(run.config.checkpoint.init_from, run.setup)
  if run.config.checkpoint.init_from_hf:
    del state['params']  # freed before the import fills the devices again
    state['params'] = hf_checkpoint.import_params(run.config.checkpoint.init_from_hf, run.setup)
  return state


def train(run: Run) -> dict[str, float]:
  """Train to `train.steps`, resuming from the latest checkpoint in the run's workdir. Returns the last eval."""
  ckpt = run.checkpointer()
  preemption = Preemption()
  try:
    with run.runtime.active():
      return _train_loop(run, ckpt, preemption)
  finally:
    preemption.close()
    ckpt.close()  # waits for an in-flight async save, so a crash after a save still leaves it complete


def _train_loop(run: Run, ckpt: checkpoint_lib.Checkpointer, preemption: Preemption) -> dict[str, float]:
  cfg, t, is_main = run.config, run.config.train, run.runtime.is_main
  state = _initial_state(run, ckpt)
  start = int(jax.device_get(state['step']))
  schedule = optimizer_lib.learning_rate_schedule(t)
  train_step = step_lib.make_train_step(run.setup, run.runtime.mesh, cfg.objective, run.spec, run.token_bytes,
                                        schedule, t.grad_accum_steps)
  eval_step, probe_step = make_eval_step(run), make_probe_step(run)
  writer = MetricsWriter(run.workdir, is_main, resume_step=start)
  progress = Progress(t.steps, start, is_main)
  if is_main:
    print(f'{"resuming at" if start else "starting"} step {start}/{t.steps}: '
          f'{params_lib.count(state["params"]):,} params, mesh {dict(run.runtime.mesh.shape)}', flush=True)
    if cfg.model.attention != 'vanilla':
      S = cfg.data.seq_len
      print(f'{cfg.model.attention} attention computes {run.attended_keys:.1f} of {S} keys per query '
            f'({run.attended_keys / S:.0%} of the square) on this run\'s batches: {run.executed_flops_per_token:.4g} '
            f'executed vs {run.model_flops_per_token:.4g} model FLOPs per token', flush=True)
    entropy = run.data.eval.unigram_entropy()
    if entropy is not None:
      print(f'validation unigram entropy {entropy:.4f} nats/token (the loss of a model that ignores context)',
            flush=True)
  tokens_per_step = t.batch_size * cfg.data.seq_len
  peak = peak_flops_per_device(t.peak_flops_per_device, cfg.model.dtype)
  model_fpt, executed_fpt = run.model_flops_per_token, run.executed_flops_per_token
  last_eval: dict[str, float] = {}
  if start == 0 and t.eval_every:  # the untrained baseline, so curves start where training starts
    writer.write(0, evaluate(run, state['params'], eval_step, probe_step))
  tick, tick_step = time.time(), start
  profiler = StepProfiler(run.workdir, t.profile_start, t.profile_steps)
  for step in range(start, t.steps):
    with profiler.step(step):
      state, metrics = train_step(state, run.runtime.global_batch(run.data.train.batch(step, t.batch_size)))
    profiler.done(step, state)
    done = step + 1
    is_last = done == t.steps
    preempted = preemption.should_stop(done)
    saving = done % cfg.checkpoint.every_steps == 0 or is_last or preempted
    if done % t.log_every == 0 or saving:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not (math.isfinite(metrics['train/loss']) and math.isfinite(metrics['train/grad_norm'])):
        raise TrainingDiverged(f'non-finite loss or gradient at step {done}; the last checkpoint (step '
                               f'{ckpt.latest_step()}) is intact: lower train.learning_rate and resume from it')
      now = time.time()
      tps = tokens_per_step * (done - tick_step) / max(now - tick, 1e-9)
      tick, tick_step = now, done
      metrics['perf/tokens_per_sec'] = tps
      if peak:  # model FLOPs (PaLM), the same whatever the attention path; and what the path executed
        metrics['perf/mfu'] = tps * model_fpt / (peak * jax.device_count())
        metrics['perf/mfu_executed'] = tps * executed_fpt / (peak * jax.device_count())
      writer.write(done, metrics)
      progress.line(done, metrics['train/loss'], tps)
    if (t.eval_every and done % t.eval_every == 0) or is_last:
      last_eval = evaluate(run, state['params'], eval_step, probe_step)
      writer.write(done, last_eval)
      if is_main:
        print('  ' + '  '.join(f'{k} {v:.4f}' for k, v in last_eval.items()
                               if k.startswith('eval/') and '/loss_by_position/' not in k), flush=True)
        if is_last:
          plot_loss_by_position({f'step {done}': loss_by_position(last_eval)},
                                os.path.join(run.workdir, 'loss_by_position.png'), 'validation loss by position')
      tick = time.time()
    if saving:
      ckpt.save(done, state, force=True)
    if preempted:
      ckpt.wait()
      if is_main:
        print(f'preempted: saved step {done}; run the same command again to resume', flush=True)
      break
  profiler.close()
  writer.close()
  return last_eval
