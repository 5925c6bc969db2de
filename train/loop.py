"""The jobs `main.py` runs on one mesh: train (resuming), eval, estimate.

A `Run` wires data, tokenizer, mesh, state and steps together once; each job is a short function over it.
"""

import dataclasses
import hashlib
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from configs.errors import ConfigError
from data import pipeline
from data import tokenizers
from sharding import rules
from sharding.mesh import build_mesh
from train import checkpoint as checkpoint_lib
from train import flops as flops_lib
from train import optimizer as optimizer_lib
from train import params as params_lib
from train import probes
from train import state as state_lib
from train import step as step_lib
from train.metrics import MetricsWriter, Progress, peak_flops_per_device
from train.objectives import ObjectiveSpec


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  train_data: pipeline.Dataset
  eval_data: pipeline.Dataset
  spec: ObjectiveSpec
  setup: state_lib.StateSetup
  is_main: bool

  @property
  def token_bytes(self) -> np.ndarray:
    return self.train_data.tokenizer.token_bytes

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded batch over (data, fsdp), length over sequence."""
    sharding = rules.batch_sharding(self.mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def make_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
  mesh = build_mesh(config.mesh)
  pid, nproc = jax.process_index(), jax.process_count()
  train_data = pipeline.make_dataset(config, config.data.train_split, pid, nproc)
  eval_data = pipeline.make_dataset(config, config.data.eval_split, pid, nproc)
  tok = train_data.tokenizer
  check_processes_agree(config, f'{tok.digest}|{train_data.num_rows}')
  if tok.vocab_size != config.data.vocab_size:
    raise ConfigError('data.vocab_size', config.data.vocab_size,
                      f'the {config.data.tokenizer} tokenizer has {tok.vocab_size} ids; set data.vocab_size to it')
  spec = ObjectiveSpec.from_config(config.objectives, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                   mask_id=tok.mask_id, num_special=tokenizers.NUM_SPECIAL)
  return Run(config=config, workdir=workdir, mesh=mesh, train_data=train_data, eval_data=eval_data, spec=spec,
             setup=state_lib.build(config, mesh), is_main=pid == 0)


def check_processes_agree(config: ml_collections.ConfigDict, data_digest: str) -> None:
  """Every process builds its own tokenizer and local corpus unless data.cache_dir is shared: a host whose corpus
  (the embedded one is its Python's stdlib) or sentencepiece differs would train on other ids, silently."""
  if jax.process_count() > 1:
    mine = np.frombuffer(hashlib.sha256(data_digest.encode()).digest()[:8], np.int64)
    _raise_unless_equal(config, np.asarray(multihost_utils.process_allgather(mine)).reshape(-1))


def _raise_unless_equal(config: ml_collections.ConfigDict, digests_P: np.ndarray) -> None:
  different = np.flatnonzero(digests_P != digests_P[0]).tolist()
  if different:
    raise ConfigError('data.cache_dir', config.data.cache_dir,
                      f'processes {different} built other tokenizers or corpora than process 0; give every host the '
                      'same data and Python, or share data.cache_dir')


def make_probe_step(run: Run):
  """The jitted shared-probe step (train/probes.py), or None when train.eval_probes is off."""
  if not run.config.train.eval_probes:
    return None
  layout = (lambda mb: step_lib.ring_layout(mb, run.mesh)) if run.config.model.attention == 'ring' else None
  fn = probes.make_probe_sums(run.setup.model_cfg, run.spec, run.token_bytes, layout=layout)
  replicated = rules.replicated(run.mesh)
  return jax.jit(fn, in_shardings=(run.setup.shardings['params'], rules.batch_sharding(run.mesh), replicated),
                 out_shardings=replicated)


def evaluate(run: Run, params, eval_step, probe_step=None) -> dict[str, float]:
  """The objective's own loss, perplexity, accuracy and bits/byte, plus the shared probes, over the first
  `train.eval_batches` validation batches (the same batches and noise every time, so evaluations compare)."""
  cfg = run.config
  total: dict[str, float] = {}
  probe_total: dict[str, float] = {}
  for i in range(cfg.train.eval_batches):
    batch = run.global_batch(run.eval_data.batch(i, cfg.train.batch_size))
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), i)
    sums = jax.device_get(eval_step(params, batch, rng))
    total = {k: total.get(k, 0.0) + float(v) for k, v in sums.items()}
    if probe_step is not None:
      sums = jax.device_get(probe_step(params, batch, rng))
      probe_total = {k: probe_total.get(k, 0.0) + float(v) for k, v in sums.items()}
  result = step_lib.summarize(total, 'eval')
  if probe_total:
    result |= probes.summarize(probe_total)
  return result


def skips_causal_blocks(config: ml_collections.ConfigDict) -> bool:
  """Blockwise and ring paths skip the hidden upper triangle, halving attention FLOPs, under a causal mask only."""
  return config.objective == 'causal' and config.model.attention != 'vanilla'


def flops_per_token(run: Run) -> float:
  cfg = run.config
  return flops_lib.flops_per_token(run.setup.model_cfg, cfg.data.seq_len, cfg.data.vocab_size,
                                   causal_skip=skips_causal_blocks(cfg))


class TrainingDiverged(RuntimeError):
  """A non-finite loss or gradient: training stops before saving it, so the last checkpoint stays good."""


class Preemption:
  """SIGTERM (as a preemptible TPU VM or SLURM sends) or Ctrl-C asks the loop to save and exit after this step.

  A second Ctrl-C interrupts at once. With several processes, JAX's preemption sync point makes them all stop at
  the same step.
  """

  def __init__(self):
    self._requested = False
    self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame) -> None:
    del frame
    self._requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
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
  return state


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Train to `train.steps`, resuming from the latest checkpoint in workdir/checkpoints. Returns the last eval.

  The batch for step k depends only on (seed, k) and the objective's noise on (seed, k), so a resumed run repeats
  exactly what an uninterrupted one does.
  """
  run = make_run(config, workdir)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config)
  preemption = Preemption()
  try:
    with jax.set_mesh(run.mesh), rules.use(rules.parse(config.mesh.rules)):
      return _train_loop(run, ckpt, preemption)
  finally:
    preemption.close()
    ckpt.close()  # waits for an in-flight async save, so a crash after a save still leaves it complete


def _train_loop(run: Run, ckpt: checkpoint_lib.Checkpointer, preemption: Preemption) -> dict[str, float]:
  cfg, t = run.config, run.config.train
  state = _initial_state(run, ckpt)
  start = int(jax.device_get(state['step']))
  schedule = optimizer_lib.learning_rate_schedule(t)
  train_step = step_lib.make_train_step(run.setup, run.mesh, cfg.objective, run.spec, run.token_bytes, schedule,
                                        cfg.train.grad_accum_steps)
  eval_step = step_lib.make_eval_step(run.setup, run.mesh, cfg.objective, run.spec, run.token_bytes)
  probe_step = make_probe_step(run)
  writer = MetricsWriter(run.workdir, run.is_main, resume_step=start)
  progress = Progress(t.steps, start, run.is_main)
  if run.is_main:
    print(f'{"resuming at" if start else "starting"} step {start}/{t.steps}: '
          f'{params_lib.count(state["params"]):,} params, mesh {dict(run.mesh.shape)}', flush=True)
    entropy = run.eval_data.unigram_entropy()
    if entropy is not None:
      print(f'validation unigram entropy {entropy:.4f} nats/token (the loss of a model that ignores context)',
            flush=True)
  tokens_per_step = t.batch_size * cfg.data.seq_len
  peak = peak_flops_per_device(t.peak_flops_per_device)
  fpt = flops_per_token(run)
  last_eval: dict[str, float] = {}
  if start == 0 and t.eval_every:  # the untrained baseline, so curves start where training starts
    writer.write(0, evaluate(run, state['params'], eval_step, probe_step))
  tick, tick_step = time.time(), start
  for step in range(start, t.steps):
    state, metrics = train_step(state, run.global_batch(run.train_data.batch(step, t.batch_size)))
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
      if peak:
        metrics['perf/mfu'] = tps * fpt / (peak * jax.device_count())
      writer.write(done, metrics)
      progress.line(done, metrics['train/loss'], tps)
    if (t.eval_every and done % t.eval_every == 0) or is_last:
      last_eval = evaluate(run, state['params'], eval_step, probe_step)
      writer.write(done, last_eval)
      if run.is_main:
        print('  ' + '  '.join(f'{k} {v:.4f}' for k, v in last_eval.items() if k.startswith('eval/')), flush=True)
      tick = time.time()
    if saving:
      ckpt.save(done, state, force=True)
    if preempted:
      ckpt.wait()
      if run.is_main:
        print(f'preempted: saved step {done}; run the same command again to resume', flush=True)
      break
  writer.close()
  return last_eval


def eval_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluate the latest checkpoint in workdir; writes the metrics at its step."""
  run = make_run(config, workdir)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config)
  step = ckpt.latest_step()
  if step is None:
    raise ConfigError('--workdir', workdir, 'no checkpoint to evaluate there; train first (--mode=train)')
  with jax.set_mesh(run.mesh), rules.use(rules.parse(config.mesh.rules)):
    state = ckpt.restore(run.setup, step)
    eval_step = step_lib.make_eval_step(run.setup, run.mesh, config.objective, run.spec, run.token_bytes)
    result = evaluate(run, state['params'], eval_step, make_probe_step(run))
  ckpt.close()
  writer = MetricsWriter(workdir, run.is_main)
  writer.write(step, result)
  writer.close()
  return result


def sample_only(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Samples from the latest checkpoint in workdir (see train/sample.py)."""
  from train import sample as sample_lib

  mesh = build_mesh(config.mesh)
  setup = state_lib.build(config, mesh)
  tokenizer = pipeline.make_dataset(config, config.data.train_split).tokenizer
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config)
  if ckpt.latest_step() is None:
    raise ConfigError('--workdir', workdir, 'no checkpoint to sample from there; train first (--mode=train)')
  with jax.set_mesh(mesh), rules.use(rules.parse(config.mesh.rules)):
    params = ckpt.restore(setup)['params']
    texts = sample_lib.sample(setup, params, tokenizer, config)
  ckpt.close()
  return texts


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its shard of each leaf)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def estimate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Params, FLOPs per token and per-device memory of the compiled train step, without data or training.

  `memory_per_device_bytes` is what XLA allocates on the largest device: arguments (its shards of params,
  optimizer state and the batch) plus temporaries (activations kept for the backward pass, gradients, workspace).
  The params and optimizer entries break the arguments down; activations are the temporaries.
  """
  mesh = build_mesh(config.mesh)
  setup = state_lib.build(config, mesh)
  vocab = config.data.vocab_size
  spec = ObjectiveSpec.from_config(config.objectives, vocab_size=vocab, pad_id=tokenizers.PAD_ID,
                                   mask_id=tokenizers.MASK_ID, num_special=tokenizers.NUM_SPECIAL)
  with jax.set_mesh(mesh), rules.use(rules.parse(config.mesh.rules)):
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    step = step_lib.make_train_step(setup, mesh, config.objective, spec, np.ones(vocab, np.int32), schedule,
                                    config.train.grad_accum_steps)
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rules.batch_sharding(mesh))
             for k in ('tokens', 'segment_ids', 'positions')}
    memory = step.lower(setup.abstract, batch).compile().memory_analysis()
  counts = flops_lib.count_params(setup.model_cfg, vocab)
  result = {
      'params': counts['total'],
      'params_non_embedding': counts['non_embedding'],
      'flops_per_token': flops_lib.flops_per_token(setup.model_cfg, config.data.seq_len, vocab,
                                                   causal_skip=skips_causal_blocks(config)),
      'memory_per_device_bytes': int(memory.argument_size_in_bytes + memory.temp_size_in_bytes),
      'memory_params_per_device_bytes': _bytes_per_device(setup.abstract['params']),
      'memory_optimizer_per_device_bytes': _bytes_per_device(setup.abstract['opt_state']),
      'memory_activations_per_device_bytes': int(memory.temp_size_in_bytes),
      'memory_arguments_bytes': int(memory.argument_size_in_bytes),
      'devices': jax.device_count(),
      'mesh': dict(mesh.shape),
  }
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'estimate.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
