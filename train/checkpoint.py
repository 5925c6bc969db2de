"""orbax checkpoints of the full training state plus a JSON record of what shaped it.

Each step directory holds `state` (params, optimizer state, step, RNG) and `meta` (objective, model and data shape,
data position). The data pipeline is step-indexed, so the data position is the step itself: no iterator is pickled.
orbax writes each checkpoint to a temporary directory and renames it when complete, so an interrupted save never
becomes the latest. Restoring takes the target shardings of the current mesh, so a checkpoint saved on one mesh
restores onto another.
"""

import dataclasses
import logging
import os

import orbax.checkpoint as ocp

from configs.errors import ConfigError
from configs.sections import Config, ModelConfig
from train.state import State, StateSetup


# Model keys that change parameter shapes; attention path, dtype, remat and block sizes may change across a resume.
SHAPE_KEYS = ('num_layers', 'd_model', 'num_heads', 'num_kv_heads', 'head_dim', 'd_ff', 'tie_embeddings',
              'scan_layers', 'architecture', 'num_encoder_layers', 'num_decoder_layers', 'share_embeddings')


def meta_for(config: Config) -> dict:
  """What a checkpoint must agree with to be resumed: the objective and everything that shapes the state."""
  model = {k: getattr(config.model, k) for k in SHAPE_KEYS}
  d = config.data
  # How streamed rows are laid out decides which rows each step reads (any process count reads the same ones).
  stream = None if d.local else {'stream_shards': d.stream_shards, 'shuffle_buffer': d.shuffle_buffer}
  return {'objective': config.objective, 'model': model, 'vocab_size': d.vocab_size, 'tokenizer': d.tokenizer,
          'seq_len': d.seq_len, 'stream': stream}


class Checkpointer:
  """Save every `checkpoint.every_steps` (async), keep `checkpoint.keep`, restore the latest onto this mesh."""

  def __init__(self, directory: str, config: Config):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep, create=True,
                                           enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.meta = meta_for(config)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: State, force: bool = False) -> None:
    meta = dict(self.meta, data_position=step)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=force)

  def restore(self, setup: StateSetup, step: int | None = None) -> State:
    step = self.latest_step() if step is None else step
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:
      raise self._unreadable(step, e) from e
    self._check_meta(meta, step)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(setup.abstract)))
    except Exception as e:  # orbax raises many types for missing or damaged files; all mean the same to a user
      raise self._unreadable(step, e) from e
    return restored['state']

  def _unreadable(self, step: int, error: Exception) -> ConfigError:
    earlier = [s for s in self.manager.all_steps() if s < step]
    path = os.path.join(self.directory, str(step))
    fix = (f'move it aside (mv {path} {path}.bad) to resume from step {max(earlier)}' if earlier
           else 'move it aside to start fresh, or use a new --workdir')
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return ConfigError('checkpoint', path, f'unreadable ({type(error).__name__}: {reason}); {fix}')

  def _check_meta(self, meta: dict, step: int) -> None:
    for key in ('objective', 'vocab_size', 'tokenizer', 'seq_len'):
      if meta.get(key) != self.meta[key]:
        cfg_key = key if key == 'objective' else f'data.{key}'
        raise ConfigError(cfg_key, self.meta[key],
                          f'the checkpoint at step {step} in {self.directory} was written with {meta.get(key)!r}; '
                          'use that value or a new --workdir')
    for key, value in (self.meta['stream'] or {}).items():
      stored = (meta.get('stream') or {}).get(key, value)
      if stored != value:
        raise ConfigError(f'data.{key}', value, f'the checkpoint at step {step} in {self.directory} streamed its data '
                          f'with {stored!r}, and another value reads other rows; use {stored!r} or a new --workdir')
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}  # keys newer than the checkpoint
    stored_model = dict(meta['model'])
    if stored_model.get('head_dim') == 0:  # written when 0 (= d_model / num_heads) was stored unresolved
      stored_model['head_dim'] = stored_model['d_model'] // stored_model['num_heads']
    for key, value in self.meta['model'].items():
      stored = stored_model.get(key, defaults[key])
      if stored != value:
        raise ConfigError(f'model.{key}', value,
                          f'the checkpoint at step {step} in {self.directory} has {stored!r}; '
                          'use that value or a new --workdir')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _reader(directory: str) -> ocp.CheckpointManager:
  """A manager that only reads `directory`, opened without orbax's three warnings that it is read-only."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)
  finally:
    absl_logger.setLevel(level)


def load_params(path: str, setup: StateSetup) -> dict:
  """Params only, from another run's checkpoint dir (its latest step) — for `checkpoint.init_from`."""
  manager = _reader(path)
  step = manager.latest_step()
  if step is None:
    raise ConfigError('checkpoint.init_from', path, 'no checkpoint there; point it at a run\'s checkpoints/ dir')
  target = dict(setup.abstract)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  manager.close()
  return restored['state']['params']


def all_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory`, ascending; reads nothing else (no config needed)."""
  if not os.path.isdir(directory):
    return []
  manager = _reader(directory)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def latest_step(directory: str) -> int | None:
  """The step of the latest complete checkpoint in `directory`, or None; reads nothing else (no config needed)."""
  steps = all_steps(directory)
  return steps[-1] if steps else None
