"""What one command builds once and every job of it shares, and the training runs built on it.

`Runtime`: the mesh with its logical-axis rules, this process's place in a multi-process run, and the datasets,
opened on first use (only then is TensorFlow imported), keyed by their data settings so the runs of a study share
them. `Runtime.active()` is the one place a job enters the mesh and the rules.

`Run`: one training run on the runtime (a config and a workdir): its state layout, objective ids, data and
checkpointer. train, eval, sample and estimate each take a Run; the studies make one per run of theirs.
"""

import contextlib
import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from configs.errors import ConfigError
from configs.sections import Config, DataConfig
from data import tokenizers
from sharding import rules
from sharding.mesh import build_mesh
from train import block_pairs
from train import checkpoint as checkpoint_lib
from train import flops as flops_lib
from train import objectives
from train import state as state_lib
from train.objectives import ObjectiveSpec

MEASURED_STEPS = 8  # training batches whose masks set a run's executed attention FLOPs


@dataclasses.dataclass(frozen=True)
class Data:
  """A run's train and validation datasets (data.pipeline.Dataset), sharing one tokenizer."""
  train: object
  eval: object

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self.train.tokenizer


class Runtime:
  """The mesh, the rules and the data of one command (see the module docstring)."""

  def __init__(self, config: Config, devices: list[jax.Device] | None = None):
    self.mesh_config = config.mesh
    self.mesh = build_mesh(config.mesh, devices)
    self.rules = config.mesh.logical_rules
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    self.is_main = self.process_index == 0
    self._data: dict[tuple[DataConfig, int], Data] = {}
    self._attended_keys: dict[tuple, float] = {}

  @contextlib.contextmanager
  def active(self) -> Iterator[None]:
    """The mesh and the rules that activations, batches and ring attention follow while a job runs."""
    with jax.set_mesh(self.mesh), rules.use(self.rules):
      yield

  def data(self, data_config: DataConfig, seed: int) -> Data:
    """This process's view of the train and validation splits, opened (and built, on first use) once per setting."""
    key = (data_config, seed)
    if key not in self._data:
      from data import pipeline  # imports TensorFlow: only commands that read data pay for it

      def open_split(split: str):
        return pipeline.make_dataset(data_config, seed, split, self.process_index, self.process_count)

      data = Data(train=open_split(data_config.train_split), eval=open_split(data_config.eval_split))
      tok = data.tokenizer
      check_processes_agree(data_config.cache_dir, f'{tok.digest}|{data.train.num_rows}')
      if tok.vocab_size != data_config.vocab_size:
        raise ConfigError('data.vocab_size', data_config.vocab_size,
                          f'the {data_config.tokenizer} tokenizer has {tok.vocab_size} ids; set data.vocab_size to it')
      self._data[key] = data
    return self._data[key]

  def attended_keys(self, config: Config) -> float:
    """Keys per query the attention path of `config` computes, on average: S for vanilla; for blockwise and ring
    the block pairs they do not skip, counted on the objective's masks of training steps 0..MEASURED_STEPS-1 (the
    rows and noise training uses), each step's pairs ORed over processes so all count the global batch."""
    m, S = config.model, config.data.seq_len
    if m.attention == 'vanilla' or m.architecture == 'encoder_decoder':  # the latter's skipped pairs: not yet counted
      return float(S)
    key = (config.data, config.seed, config.objective, config.objectives, config.train.batch_size, m.attention,
           m.q_block, m.kv_block)
    if key not in self._attended_keys:
      ring_size = math.prod(self.mesh.shape[a] for a in rules.mesh_axes('length', self.rules))
      data, spec = self.data(config.data, config.seed), self.spec(config)
      make_batch, rng = objectives.get(config.objective), jax.random.PRNGKey(config.seed)  # the trainer's step keys
      keys = []
      for step in range(MEASURED_STEPS):
        local = {k: jnp.asarray(v) for k, v in data.train.batch(step, config.train.batch_size).items()}
        mask = make_batch(local, jax.random.fold_in(rng, step), spec).mask
        pairs_QJ, q_block, kv_block = block_pairs.path_pairs(
            m.attention, *(np.asarray(a) for a in (mask.segment_ids, mask.positions, mask.bidirectional)),
            m.q_block, m.kv_block, ring_size)
        if self.process_count > 1:
          pairs_QJ = np.asarray(multihost_utils.process_allgather(pairs_QJ)).any(axis=0)
        keys.append(pairs_QJ.sum() * q_block * kv_block / S)
      self._attended_keys[key] = float(np.mean(keys))
    return self._attended_keys[key]

  def executed_flops_per_token(self, config: Config) -> float:
    """Training FLOPs per token the attention path of `config` executes (`attended_keys`): what budgets count."""
    return flops_lib.flops_per_token(config.model, config.data.seq_len, keys=self.attended_keys(config))

  def spec(self, config: Config) -> ObjectiveSpec:
    """The objective's settings with the ids of `config`'s tokenizer; one without a mask id serves no objective or
    probe that masks tokens."""
    tok = self.data(config.data, config.seed).tokenizer
    if tok.mask_id is None:
      for key, value, needs in (('objective', config.objective, config.objective == 'masked_lm'),
                                ('train.eval_probes', config.train.eval_probes, config.train.eval_probes)):
        if needs:
          raise ConfigError(key, value, f'needs a <mask> token, and data.spm_model_path={config.data.spm_model_path} '
                            'has no <mask> control piece; use another objective / train.eval_probes=False, or a '
                            'model with one')
    return ObjectiveSpec.from_config(config.objectives, vocab_size=config.data.vocab_size, pad_id=tok.pad_id,
                                     mask_id=tok.mask_id, num_special=tok.num_special,
                                     extra_ids=config.data.extra_ids)

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> global arrays laid out by the rules' `batch` and `length`."""
    sharding = rules.named(self.mesh, ('batch', 'length'), self.rules)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

  def run(self, config: Config, workdir: str, with_data: bool = True) -> 'Run':
    """A training run of `config` in `workdir` on this runtime; without data (estimate) the ids are the defaults."""
    if config.mesh != self.mesh_config:
      raise ConfigError('mesh', config.to_dict()['mesh'], 'every run of one command shares the command\'s mesh; '
                        'run the other mesh as its own command')
    data = self.data(config.data, config.seed) if with_data else None
    rows, t = data and data.eval.num_rows, config.train
    if rows is not None and t.eval_batches * t.batch_size > rows:
      raise ConfigError('train.eval_batches', t.eval_batches,
                        f'the validation split has {rows} rows: at most {rows // t.batch_size} batches of '
                        f'train.batch_size={t.batch_size}; lower it or hold out more (data.validation_percent)')
    tok = tokenizers.Tokenizer  # the class holds the ids every tokenizer shares (estimate opens no data)
    spec = self.spec(config) if with_data else ObjectiveSpec.from_config(
        config.objectives, vocab_size=config.data.vocab_size, pad_id=tok.pad_id, mask_id=tok.mask_id,
        num_special=tokenizers.NUM_SPECIAL, extra_ids=config.data.extra_ids)
    setup = state_lib.build(config, self.mesh)
    return Run(runtime=self, config=config, workdir=workdir, setup=setup, spec=spec, data=data)


@dataclasses.dataclass
class Run:
  """One training run: its config and workdir on a runtime, with everything built from them once."""

  runtime: Runtime
  config: Config
  workdir: str
  setup: state_lib.StateSetup
  spec: ObjectiveSpec
  data: Data | None

  @property
  def token_bytes(self) -> np.ndarray:
    """[V] UTF-8 bytes per id (for bits per byte); ones when the run has no data (estimate)."""
    if self.data is None:
      return np.ones(self.config.data.vocab_size, np.int32)
    return self.data.tokenizer.token_bytes

  def checkpointer(self) -> checkpoint_lib.Checkpointer:
    return checkpoint_lib.Checkpointer(os.path.join(self.workdir, 'checkpoints'), self.config)

  @property
  def attended_keys(self) -> float:
    return self.runtime.attended_keys(self.config)

  @property
  def model_flops_per_token(self) -> float:
    """PaLM's model FLOPs per training token (every query meets all S keys): the same for every attention path."""
    return flops_lib.flops_per_token(self.config.model, self.config.data.seq_len)

  @property
  def executed_flops_per_token(self) -> float:
    """Training FLOPs per token the run's attention path executes (`attended_keys`): what compute budgets count."""
    return self.runtime.executed_flops_per_token(self.config)


def check_processes_agree(cache_dir: str, data_digest: str) -> None:
  """Every process builds its own tokenizer and local corpus unless data.cache_dir is shared: a host whose corpus
  (the embedded one is its Python's stdlib) or sentencepiece differs would train on other ids, silently."""
  if jax.process_count() > 1:
    mine = np.frombuffer(hashlib.sha256(data_digest.encode()).digest()[:8], np.int64)
    raise_unless_equal(cache_dir, np.asarray(multihost_utils.process_allgather(mine)).reshape(-1))


def raise_unless_equal(cache_dir: str, digests: np.ndarray) -> None:
  """digests: each process's data digest, by process index."""
  different = np.flatnonzero(digests != digests[0]).tolist()
  if different:
    raise ConfigError('data.cache_dir', cache_dir,
                      f'processes {different} built other tokenizers or corpora than process 0; give every host the '
                      'same data and Python, or share data.cache_dir')
