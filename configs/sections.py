"""The typed config: one frozen dataclass per section of configs/default.py, built once by `Config.from_dict`.

ml-collections is the user's format (presets, `--config.x.y=` overrides); main.py turns it into a `Config` once and
every module below it takes the section it needs. Each section checks its own fields when it is built (a value
outside a field's domain is one ConfigError naming `section.key`), so nothing downstream re-checks them; rules that
span sections (mesh vs devices, blocks vs lengths) are in configs/validate.py. Derived values (the model's head
width, the FFN chunk, the parsed logical-axis rules) are computed here, once.

Importing this module imports neither jax nor TensorFlow, so a bad config is reported in well under a second.
Whether the tokenizer can have `data.vocab_size` ids is checked where the tokenizer is made (data/tokenizers.py):
it depends on the tokenizer, not only on the config.
"""

import ast
import copy
import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from configs.errors import ConfigError

# Names a key may take, each listed once. The registries that implement them (train/objectives, models/attention)
# are keyed by these names; tests keep the two equal.
OBJECTIVES = ('causal', 'prefix_lm', 'masked_lm', 'span_corruption', 'ul2')
UL2_MODES = ('R', 'S', 'X')  # regular and extreme span corruption, sequential (prefix LM)
ATTENTION_KINDS = ('vanilla', 'blockwise', 'ring')
ARCHITECTURES = ('decoder', 'encoder_decoder')
ATTENTION_KERNELS = ('auto', 'jax', 'pallas')
FFN_KINDS = ('standard', 'blockwise')
DTYPES = ('float32', 'bfloat16')
TOKENIZERS = ('sentencepiece', 'byte')
SPM_MODEL_TYPES = ('bpe', 'unigram', 'char', 'word')
MESH_AXES = ('data', 'fsdp', 'tensor', 'sequence')
# Every logical dimension name the model and the trainer use; `mesh.rules` must map each one.
LOGICAL_NAMES = ('batch', 'length', 'embed', 'heads', 'kv_heads', 'mlp', 'vocab', 'head_dim', 'norm', 'layers')

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
Check = Callable[[Any], str | None]  # None if the value is in the field's domain, else how to fix it


# ------------------------------------------------------------------------------------------------ field domains


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def positive_int(v: Any) -> str | None:
  return None if _is_int(v) and v > 0 else 'use a positive integer'


def non_negative_int(v: Any) -> str | None:
  return None if _is_int(v) and v >= 0 else 'use an integer >= 0'


def step_or_latest(v: Any) -> str | None:
  return None if _is_int(v) and v >= -1 else 'use a checkpoint step, or -1 for the latest'


def positive(v: Any) -> str | None:
  return None if _is_number(v) and v > 0 else 'use a positive number'


def non_negative(v: Any) -> str | None:
  return None if _is_number(v) and v >= 0 else 'use a number >= 0'


def boolean(v: Any) -> str | None:
  return None if isinstance(v, bool) else 'use True or False'


def text(v: Any) -> str | None:
  return None if isinstance(v, str) else 'use a string'


def non_empty_text(v: Any) -> str | None:
  return None if isinstance(v, str) and v else 'use a non-empty string'


def interval(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
  """A number in [low, high], with either end open."""
  def check(v: Any) -> str | None:
    ok = _is_number(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    return None if ok else f'use a number in {"(" if open_low else "["}{low}, {high}{")" if open_high else "]"}'
  return check


def int_range(low: int, high: int) -> Check:
  """An integer in [low, high]."""
  def check(v: Any) -> str | None:
    return None if _is_int(v) and low <= v <= high else f'use an integer in {low}..{high}'
  return check


def one_of(*choices: str) -> Check:
  def check(v: Any) -> str | None:
    return None if v in choices else f'choose one of {", ".join(choices)}'
  return check


def positive_numbers(integer: bool = False, example: str = '1e12,3e12,1e13') -> Check:
  """A non-empty tuple of distinct positive numbers (integers if `integer`)."""
  def check(v: Any) -> str | None:
    good = _is_int if integer else _is_number
    if not isinstance(v, (tuple, list)) or not v or not all(good(x) and x > 0 for x in v):
      return f'give a non-empty tuple of positive {"integers" if integer else "numbers"}, e.g. ({example})'
    if len(set(v)) != len(v):
      return 'drop the repeated values'
    return None
  return check


def _local_path(v: str) -> pathlib.Path | None:
  """The local path a key names, None for a URL (gs://..., checked where it is opened)."""
  return None if '://' in v else pathlib.Path(v).expanduser()


def folder_or_empty(what: str) -> Check:
  """'' (unset), a URL, or an existing readable folder; `what` says what belongs there."""
  def check(v: Any) -> str | None:
    if not isinstance(v, str):
      return 'use a string'
    path = v and _local_path(v)
    if path and not (path.is_dir() and os.access(path, os.R_OK | os.X_OK)):
      return f'no readable folder there; point it at {what}, or set \'\' to leave it unset'
    return None
  return check


def file_or_empty(what: str) -> Check:
  """'' (unset) or an existing readable file; `what` says what belongs there."""
  def check(v: Any) -> str | None:
    if not isinstance(v, str):
      return 'use a string'
    path = v and _local_path(v)
    if path and not (path.is_file() and os.access(path, os.R_OK)):
      return f'no readable file there; point it at {what}, or set \'\' to leave it unset'
    return None
  return check


def writable_folder(v: Any) -> str | None:
  """A folder that exists and is writable, or could be created: its nearest existing ancestor is a writable
  folder. Checked without creating anything, so a bad config leaves nothing behind."""
  if not isinstance(v, str) or not v:
    return 'use a non-empty string'
  path = _local_path(v)
  if path is None:
    return None
  ancestor = path.absolute()
  while not ancestor.exists():
    ancestor = ancestor.parent
  if not (ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK)):
    return f'cannot be created or written ({ancestor} is not a writable folder); choose another folder'
  return None


def mesh_axis(v: Any) -> str | None:
  return None if _is_int(v) and (v > 0 or v == -1) else 'use a positive size, or -1 for all remaining devices'


def field(check: Check, key: str = '', **kwargs) -> Any:
  """A dataclass field whose value `check` validates when the section is built; `key` names it in errors when the
  user sets it elsewhere than `section.field`."""
  return dataclasses.field(metadata={'check': check, 'key': key}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Section:
  """Runs every field's check, then the section's own cross-field rules (`_check`), when built."""

  name: ClassVar[str]

  def __post_init__(self) -> None:
    for f in dataclasses.fields(self):
      fix = f.metadata['check'](getattr(self, f.name))
      if fix:
        raise ConfigError(f.metadata['key'] or f'{self.name}.{f.name}', getattr(self, f.name), fix)
    self._check()

  def _check(self) -> None:
    """Rules between this section's fields."""

  def _fail(self, key: str, fix: str) -> None:
    raise ConfigError(f'{self.name}.{key}', getattr(self, key), fix)


# ------------------------------------------------------------------------------------------------ sections


def parse_ul2_mixture(text: str) -> tuple[tuple[str, float, float, float], ...]:
  """'R:3:0.15=1; S=1; X:64:0.5=1' -> ((mode, mean_span, density, weight), ...); S takes no span settings."""
  out = []
  for item in text.split(';'):
    m = re.fullmatch(r'\s*([RX]):([^:=]+):([^:=]+)=(.+?)\s*|\s*(S)=(.+?)\s*', item)
    if not m:
      raise ValueError(f'cannot read {item.strip()!r}')
    if m[5]:
      out.append(('S', 0.0, 0.0, float(m[6])))
    else:
      out.append((m[1], float(m[2]), float(m[3]), float(m[4])))
  return tuple(out)


def ul2_mixture_error(v: Any) -> str | None:
  """None for a readable mixture of denoisers with valid spans, densities and positive weights, else the fix."""
  example = 'e.g. "R:3:0.15=1; S=1; X:64:0.5=1" (mode:mean_span:noise_density=weight)'
  try:
    denoisers = parse_ul2_mixture(v) if isinstance(v, str) else ()
  except ValueError as e:
    return f'{e}; write {example}'
  if not denoisers:
    return f'give at least one denoiser, {example}'
  for mode, span, density, weight in denoisers:
    if not (math.isfinite(weight) and weight > 0):
      return f'mixture weights must be positive (got {weight:g} for {mode}); {example}'
    if mode != 'S' and not (1 <= span < math.inf and 0 < density < 1):
      return f'{mode} needs mean_span >= 1 and 0 < noise_density < 1 (got {span:g}, {density:g}); {example}'
  return None


@dataclasses.dataclass(frozen=True)
class ObjectivesConfig(Section):
  """Settings of the objectives (the objective itself is the top-level `objective` key)."""

  name: ClassVar[str] = 'objectives'
  mask_rate: float = field(interval(0, 1, open_low=True, open_high=True))
  prefix_min_frac: float = field(interval(0, 1))
  prefix_max_frac: float = field(interval(0, 1))
  noise_density: float = field(interval(0, 1, open_low=True, open_high=True))
  mean_span_length: float = field(interval(1, math.inf, open_high=True))
  ul2_mixture: str = field(ul2_mixture_error)

  @property
  def ul2_denoisers(self) -> tuple[tuple[str, float, float, float], ...]:
    """`ul2_mixture` parsed: (mode, mean span length, noise density, weight) per denoiser; S has span 0, density 0."""
    return parse_ul2_mixture(self.ul2_mixture)

  def _check(self) -> None:
    if self.prefix_min_frac > self.prefix_max_frac:
      self._fail('prefix_min_frac', f'inverted range: must be <= objectives.prefix_max_frac={self.prefix_max_frac}')
    if self.prefix_max_frac == 0:
      self._fail('prefix_max_frac', 'empty range: every prefix would be empty; use > 0, e.g. 1.0')
    if self.prefix_min_frac == 1:
      self._fail('prefix_min_frac', 'empty range: every suffix would be empty; use < 1, e.g. 0.0')


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
  """The model: shape, attention and FFN paths, numerics. `vocab_size` comes from `data.vocab_size`.

  `head_dim` 0 means d_model / num_heads, resolved here when the config is built: everywhere else it is the width.
  The defaults are configs/default.py's (tests keep them equal), so a model can be described in a few words.
  """

  name: ClassVar[str] = 'model'
  vocab_size: int = field(positive_int, key='data.vocab_size')
  num_layers: int = field(positive_int)
  d_model: int = field(positive_int)
  num_heads: int = field(positive_int)
  num_kv_heads: int = field(positive_int)
  head_dim: int = field(non_negative_int)
  d_ff: int = field(positive_int)
  attention: str = field(one_of(*ATTENTION_KINDS), default='vanilla')
  attention_kernel: str = field(one_of(*ATTENTION_KERNELS), default='auto')
  ffn: str = field(one_of(*FFN_KINDS), default='standard')
  q_block: int = field(positive_int, default=128)
  kv_block: int = field(positive_int, default=128)
  ffn_block: int = field(positive_int, default=128)
  rope_theta: float = field(positive, default=10_000.0)
  norm_eps: float = field(positive, default=1e-6)
  init_std: float = field(positive, default=0.02)
  tie_embeddings: bool = field(boolean, default=True)
  dtype: str = field(one_of(*DTYPES), default='float32')
  remat: bool = field(boolean, default=False)
  scan_layers: bool = field(boolean, default=False)
  architecture: str = field(one_of(*ARCHITECTURES), default='decoder')
  num_encoder_layers: int = field(positive_int, default=2)
  num_decoder_layers: int = field(positive_int, default=2)
  share_embeddings: bool = field(boolean, default=True)

  def _check(self) -> None:
    if self.num_heads % self.num_kv_heads:
      self._fail('num_kv_heads', f'must divide model.num_heads={self.num_heads}')
    if self.head_dim == 0:
      if self.d_model % self.num_heads:
        self._fail('d_model', f'head_dim=0 derives the head width as d_model / num_heads, but num_heads='
                   f'{self.num_heads} does not divide it; change one, or set model.head_dim')
      object.__setattr__(self, 'head_dim', self.d_model // self.num_heads)
    if self.head_dim % 2:
      self._fail('head_dim', 'RoPE rotates pairs: the head width must be even; change model.d_model/num_heads')

  @property
  def ffn_chunk(self) -> int | None:
    """Sequence chunk of the blockwise FFN and loss; None for the whole-sequence FFN."""
    return self.ffn_block if self.ffn == 'blockwise' else None


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
  """Which text, how it is split, tokenized and packed."""

  name: ClassVar[str] = 'data'
  text_dir: str = field(text)
  text_glob: str = field(non_empty_text)
  tfds_name: str = field(text)
  tfds_data_dir: str = field(folder_or_empty('a tfds data dir (or a gs:// one)'))
  text_key: str = field(non_empty_text)
  train_split: str = field(non_empty_text)
  eval_split: str = field(non_empty_text)
  validation_percent: int = field(int_range(1, 99))
  cache_dir: str = field(writable_folder)
  seq_len: int = field(positive_int)
  tokenizer: str = field(one_of(*TOKENIZERS))
  vocab_size: int = field(positive_int)
  spm_model_type: str = field(one_of(*SPM_MODEL_TYPES))
  spm_max_chars: int = field(positive_int)
  spm_model_path: str = field(text)
  extra_ids: int = field(non_negative_int, default=0)
  stream_shards: int = field(positive_int, default=1)
  shuffle_buffer: int = field(non_negative_int, default=1024)

  def _check(self) -> None:
    if self.seq_len < 2:
      self._fail('seq_len', 'need at least 2 tokens per row (an input and a target)')
    if self.text_dir and self.tfds_name:
      self._fail('tfds_name', f'set only one of data.text_dir ({self.text_dir!r}) and data.tfds_name')
    if self.text_dir:
      folder = pathlib.Path(self.text_dir).expanduser()
      if not folder.is_dir():
        self._fail('text_dir', 'no such folder; point it at a folder of text files')
      if not any(p.is_file() for p in folder.glob(self.text_glob)):
        self._fail('text_dir', f'no files there match data.text_glob={self.text_glob!r}; add files or change the glob')
    if self.spm_model_path:
      if self.tokenizer != 'sentencepiece':
        self._fail('spm_model_path', f'is a sentencepiece model, but data.tokenizer={self.tokenizer!r}; set '
                   'data.tokenizer=sentencepiece or clear data.spm_model_path')
      if not pathlib.Path(self.spm_model_path).expanduser().is_file():
        self._fail('spm_model_path', 'no such file; point it at a sentencepiece .model file')

  @property
  def local(self) -> bool:
    """A corpus built here from local files (the embedded stdlib or a text folder), not a catalogue dataset."""
    return not self.tfds_name


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
  """Optimisation, logging and evaluation cadence."""

  name: ClassVar[str] = 'train'
  steps: int = field(positive_int)
  batch_size: int = field(positive_int)
  grad_accum_steps: int = field(positive_int)
  learning_rate: float = field(positive)
  warmup_steps: int = field(non_negative_int)
  end_lr_fraction: float = field(interval(0, 1))
  weight_decay: float = field(non_negative)
  decay_embeddings_and_norms: bool = field(boolean)
  b1: float = field(interval(0, 1, open_high=True))
  b2: float = field(interval(0, 1, open_high=True))
  eps: float = field(positive)
  grad_clip: float = field(non_negative)
  log_every: int = field(positive_int)
  eval_every: int = field(non_negative_int)
  eval_batches: int = field(positive_int)
  eval_probes: bool = field(boolean)
  peak_flops_per_device: float = field(non_negative)
  profile_start: int = field(non_negative_int)
  profile_steps: int = field(non_negative_int)

  def _check(self) -> None:
    end = self.profile_start + self.profile_steps
    if self.profile_steps and end > self.steps:
      self._fail('profile_steps', f'traces steps {self.profile_start}..{end - 1} (0-based) but train.steps='
                 f'{self.steps} runs 0..{self.steps - 1}; lower train.profile_start or train.profile_steps')


def tpu_topology(v: Any) -> str | None:
  """'' or a TPU generation and chip grid as jax.experimental.topologies names them (v5e:2x2, v5p:2x2x1)."""
  if isinstance(v, str) and (not v or re.fullmatch(r'v\w+:\d+(x\d+)+', v)):
    return None
  return "use '' or a TPU topology such as v5e:2x2 or v5p:2x2x1"


@dataclasses.dataclass(frozen=True)
class EstimateConfig(Section):
  """--mode=estimate: which devices the train step is compiled for ('' = this machine's)."""

  name: ClassVar[str] = 'estimate'
  topology: str = field(tpu_topology)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
  name: ClassVar[str] = 'checkpoint'
  every_steps: int = field(positive_int)
  keep: int = field(positive_int)
  init_from: str = field(folder_or_empty("a run's checkpoints/ folder"))
  init_from_hf: str = field(folder_or_empty('a Hugging Face model folder'))
  step: int = field(step_or_latest)

  def _check(self) -> None:
    if self.init_from and self.init_from_hf:
      self._fail('init_from_hf', f'set only one of checkpoint.init_from ({self.init_from!r}) and '
                 'checkpoint.init_from_hf')


def parse_rules(spec: str) -> LogicalRules:
  """'embed=fsdp,batch=data+fsdp,norm=' -> (('embed', 'fsdp'), ('batch', ('data', 'fsdp')), ('norm', None))."""
  rules = []
  for item in (i.strip() for i in spec.split(',') if i.strip()):
    name, sep, target = item.partition('=')
    axes = tuple(a.strip() for a in target.split('+') if a.strip())
    if not sep or any(a not in MESH_AXES for a in axes):
      raise ConfigError('mesh.rules', spec, f'write name=axis[+axis] items with axes from {", ".join(MESH_AXES)}, '
                        f'or name= for replicated (at {item!r})')
    rules.append((name.strip(), None if not axes else axes[0] if len(axes) == 1 else axes))
  missing = [n for n in LOGICAL_NAMES if n not in dict(rules)]
  if missing:
    raise ConfigError('mesh.rules', spec, f'give a rule for {", ".join(missing)} (name= replicates it)')
  return tuple(rules)


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
  """Mesh axis sizes (one may be -1: the devices left over) and the logical-axis rules, parsed once."""

  name: ClassVar[str] = 'mesh'
  data: int = field(mesh_axis)
  fsdp: int = field(mesh_axis)
  tensor: int = field(mesh_axis)
  sequence: int = field(mesh_axis)
  dcn_data: int = field(positive_int)
  rules: str = field(text)

  def _check(self) -> None:
    free = [a for a in MESH_AXES if getattr(self, a) == -1]
    if len(free) > 1:
      self._fail(free[1], f'only one axis may be -1 (mesh.{free[0]} already is)')
    object.__setattr__(self, 'logical_rules', parse_rules(self.rules))


@dataclasses.dataclass(frozen=True)
class SampleConfig(Section):
  name: ClassVar[str] = 'sample'
  prompt: str = field(text)
  max_new_tokens: int = field(positive_int)
  temperature: float = field(non_negative)
  top_k: int = field(non_negative_int)
  num_samples: int = field(positive_int)


Variants = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


def parse_variants(spec: str) -> Variants:
  """'causal: objective=causal; wide: objective=causal model.d_model=256' -> ((name, ((key, value), ...)), ...).

  Values are Python literals where they parse as one (256, 1e-3, False, (1, 2)), else strings (causal).
  """
  variants = []
  for item in (i.strip() for i in spec.split(';') if i.strip()):
    name, sep, rest = item.partition(':')
    name = name.strip()
    if not sep or not name.isidentifier():
      raise ValueError(f'write "name: key=value ..." items separated by ";" (at {item!r})')
    overrides = []
    for assignment in rest.split():
      key, eq, text = assignment.partition('=')
      if not eq or not key or not text:
        raise ValueError(f'variant {name}: write key=value without spaces around = (at {assignment!r})')
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      overrides.append((key, value))
    variants.append((name, tuple(overrides)))
  if not variants:
    raise ValueError('list at least one variant, e.g. "causal: objective=causal; masked: objective=masked_lm"')
  names = [name for name, _ in variants]
  if len(set(names)) != len(names):
    raise ValueError(f'variant names must be unique, got {names}')
  return tuple(variants)


def _variants(v: Any) -> str | None:
  if not isinstance(v, str):
    return 'use a string "name: key=value ...; name: ..."'
  try:
    parse_variants(v)
  except ValueError as e:
    return str(e)
  return None


@dataclasses.dataclass(frozen=True)
class CompareConfig(Section):
  """Variants (each a set of config overrides) trained at every budget; the first is the baseline."""

  name: ClassVar[str] = 'compare'
  variants: str = field(_variants)
  flops_budgets: tuple[float, ...] = field(positive_numbers(example='1e12,3e12,1e13'))

  @property
  def parsed_variants(self) -> Variants:
    return parse_variants(self.variants)


@dataclasses.dataclass(frozen=True)
class ExportConfig(Section):
  """--mode=export: where the Hugging Face directory goes and in which dtype."""

  name: ClassVar[str] = 'export'
  dir: str = field(text)
  dtype: str = field(one_of(*DTYPES))
  max_shard_bytes: int = field(positive_int)


@dataclasses.dataclass(frozen=True)
class ScalingConfig(Section):
  name: ClassVar[str] = 'scaling'
  flops: tuple[float, ...] = field(positive_numbers())
  d_models: tuple[int, ...] = field(positive_numbers(integer=True, example='64,96,128'))
  window: float = field(non_negative)
  centre_coefficient: float = field(positive)
  centre_exponent: float = field(positive)
  min_steps: int = field(positive_int)
  aspect_ratio: float = field(positive)
  head_dim: int = field(positive_int)
  ffn_ratio: float = field(positive)
  warmup_fraction: float = field(interval(0, 1, open_high=True))
  points: str = field(file_or_empty('a CSV with columns N, D, loss'))
  predict_flops: tuple[float, ...] = field(positive_numbers(example='1e20,1e22'))
  bootstrap: int = field(non_negative_int)

  def _check(self) -> None:
    if self.head_dim % 2:
      self._fail('head_dim', 'use a positive even integer (RoPE rotates pairs), e.g. 32')
    bad = [d for d in self.d_models if d % self.head_dim]
    if bad:
      self._fail('d_models', f'{bad} not divisible by scaling.head_dim={self.head_dim}')
    if 0 < self.window < 1:
      self._fail('window', 'use a factor >= 1 (N within [N_c / window, N_c * window]), or 0 for every width')


# ------------------------------------------------------------------------------------------------ the whole config


SECTIONS: dict[str, type[Section]] = {s.name: s for s in (
    ObjectivesConfig, ModelConfig, DataConfig, TrainConfig, EstimateConfig, CheckpointConfig, MeshConfig,
    SampleConfig, CompareConfig, ExportConfig, ScalingConfig)}
TOP_LEVEL = {'seed': non_negative_int, 'objective': one_of(*OBJECTIVES)}


@dataclasses.dataclass(frozen=True)
class Config:
  """Every section, typed and checked. `to_dict` gives back the user-format dict it was built from (head_dim as the
  user set it), and `override` rebuilds from that dict with some keys changed, so derived values never go stale."""

  seed: int
  objective: str
  objectives: ObjectivesConfig
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  estimate: EstimateConfig
  checkpoint: CheckpointConfig
  mesh: MeshConfig
  sample: SampleConfig
  compare: CompareConfig
  export: ExportConfig
  scaling: ScalingConfig
  source: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> 'Config':
    """The typed config of a user-format dict (`ConfigDict.to_dict()`, or a config.json); one ConfigError if bad."""
    values = copy.deepcopy(dict(values))
    unknown = sorted(set(values) - set(SECTIONS) - set(TOP_LEVEL))
    if unknown:
      raise ConfigError(unknown[0], values[unknown[0]], 'unknown key; the keys are in configs/default.py')
    for key, check in TOP_LEVEL.items():
      if key not in values:
        raise ConfigError(key, None, 'missing; the keys are in configs/default.py')
      fix = check(values[key])
      if fix:
        raise ConfigError(key, values[key], fix)
    built = {}
    for name, section in SECTIONS.items():
      given = dict(values.get(name) or {})
      if name == 'model':
        given['vocab_size'] = (values.get('data') or {}).get('vocab_size')
      fields = {f.name for f in dataclasses.fields(section)}
      for key in sorted(set(given) - fields):
        raise ConfigError(f'{name}.{key}', given[key], 'unknown key; the keys are in configs/default.py')
      for key in sorted(fields - set(given)):
        raise ConfigError(f'{name}.{key}', None, 'missing; the keys are in configs/default.py')
      built[name] = section(**given)
    return cls(seed=values['seed'], objective=values['objective'], source=values, **built)

  def to_dict(self) -> dict[str, Any]:
    return copy.deepcopy(dict(self.source))

  def override(self, changes: Mapping[str, Any]) -> 'Config':
    """A new config with dotted keys changed, e.g. {'train.steps': 10, 'objective': 'masked_lm'}, checked again."""
    values = self.to_dict()
    for key, value in changes.items():
      *path, last = key.split('.')
      node = values
      for part in path:
        node = node[part]
      if last not in node:
        raise ConfigError(key, value, 'unknown key; the keys are in configs/default.py')
      node[last] = value
    return Config.from_dict(values)
