"""Conversion between ringlm's decoder and Hugging Face's Llama format (`LlamaForCausalLM`, safetensors).

ringlm computes what transformers' `LlamaForCausalLM` computes: RMSNorm with a plain scale, RoPE on the two halves of
the head dim (transformers' rotate_half, inv_freq = theta^(-2i/E)), query head h reading kv head h // (H / K),
SwiGLU, no biases, scores scaled by E^-0.5, a tied or untied head. So conversion is reshapes and transposes only:
torch's Linear keeps its weight as [out, in], where ringlm keeps [in, out] with heads as their own axes. No q/k row
permutation is needed either way: the one in transformers' converter from Meta's weights turns Meta's interleaved
RoPE pairs into rotate_half, which both sides here already use (the parity tests check it on real positions).

Weights are read and written as safetensors by this module itself (the format is a JSON header and raw
little-endian bytes), so bfloat16 works with numpy alone (via ml_dtypes, which jax installs) and nothing is ever
unpickled. Reading maps each file into memory: a tensor is only read when asked for, one at a time, so an import can
place each parameter onto its devices without holding the model twice.

Dims: D d_model, H query heads, K kv heads, E head dim, F d_ff, V vocab, L layers.
"""

import dataclasses
import json
import math
import os
import pathlib
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from configs.sections import ModelConfig

Params = dict
LeafPath = tuple  # keys from the params root to a leaf, e.g. ('blocks', 0, 'attn', 'wq_DHE')

CONFIG_FILE = 'config.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_INDEX_FILE = 'model.safetensors.index.json'
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' own default shard size

_SAFETENSORS_DTYPES = {'F32': np.dtype('<f4'), 'BF16': np.dtype(ml_dtypes.bfloat16), 'F16': np.dtype('<f2')}
_EXPORT_DTYPES = {'float32': 'F32', 'bfloat16': 'BF16'}
_PICKLED = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')

# ModelConfig field -> LlamaConfig key, for the settings that shape or change the function.
CONFIG_KEYS = (('vocab_size', 'vocab_size'), ('num_layers', 'num_hidden_layers'), ('d_model', 'hidden_size'),
               ('num_heads', 'num_attention_heads'), ('num_kv_heads', 'num_key_value_heads'),
               ('head_dim', 'head_dim'), ('d_ff', 'intermediate_size'), ('rope_theta', 'rope_theta'),
               ('norm_eps', 'rms_norm_eps'), ('tie_embeddings', 'tie_word_embeddings'))
_LLAMA_FAMILY = ('llama', 'mistral')  # same tensor names and math when the checks in model_settings pass


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One HF tensor and the ringlm leaf (or layer of a stacked leaf) it is.

  `split` says how the ringlm array [d0, ..., dn] becomes the HF one: 0 = the same layout (vectors, the
  embedding); s > 0 = the first s dims flattened into HF's columns and the rest into its rows, i.e.
  x.reshape(prod(d[:s]), -1).T, Linear's [out, in].
  """

  name: str
  path: LeafPath  # the ringlm leaf, without the layer index of a scanned layout
  layer: int | None  # index into a scanned leaf's leading axis; None when the leaf is this tensor alone
  shape: tuple[int, ...]  # ringlm shape of this tensor (one layer)
  split: int

  @property
  def hf_shape(self) -> tuple[int, ...]:
    if not self.split:
      return self.shape
    return math.prod(self.shape[self.split:]), math.prod(self.shape[:self.split])

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(math.prod(self.shape[:self.split]), -1).T if self.split else x

  def from_hf(self, y: np.ndarray) -> np.ndarray:
    return y.T.reshape(self.shape) if self.split else y.reshape(self.shape)


def tensors(cfg: ModelConfig) -> list[Tensor]:
  """Every HF tensor of a ringlm model, in transformers' order (the order `to_hf` yields and files list them)."""
  D, H, K, E, F, V = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  block = ((('attn_norm', 'scale'), 'input_layernorm.weight', (D,), 0),
           (('attn', 'wq_DHE'), 'self_attn.q_proj.weight', (D, H, E), 1),
           (('attn', 'wk_DKE'), 'self_attn.k_proj.weight', (D, K, E), 1),
           (('attn', 'wv_DKE'), 'self_attn.v_proj.weight', (D, K, E), 1),
           (('attn', 'wo_HED'), 'self_attn.o_proj.weight', (H, E, D), 2),
           (('mlp_norm', 'scale'), 'post_attention_layernorm.weight', (D,), 0),
           (('mlp', 'w_gate_DF'), 'mlp.gate_proj.weight', (D, F), 1),
           (('mlp', 'w_up_DF'), 'mlp.up_proj.weight', (D, F), 1),
           (('mlp', 'w_down_FD'), 'mlp.down_proj.weight', (F, D), 1))
  out = [Tensor('model.embed_tokens.weight', ('embed_VD',), None, (V, D), 0)]
  for i in range(cfg.num_layers):
    for sub, name, shape, split in block:
      path, layer = (('blocks',) + sub, i) if cfg.scan_layers else (('blocks', i) + sub, None)
      out.append(Tensor(f'model.layers.{i}.{name}', path, layer, shape, split))
  out.append(Tensor('model.norm.weight', ('final_norm', 'scale'), None, (D,), 0))
  if not cfg.tie_embeddings:
    out.append(Tensor('lm_head.weight', ('head_DV',), None, (D, V), 1))
  return out


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  return {t.name: t.hf_shape for t in tensors(cfg)}


def _get(tree: Params, path: LeafPath) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def to_hf(params: Params, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array) pairs, one tensor at a time, in the dtype of `params`; accepts jax or numpy leaves."""
  for t in tensors(cfg):
    leaf = _get(params, t.path)
    yield t.name, t.to_hf(np.asarray(leaf if t.layer is None else leaf[t.layer]))


def from_hf(read: Callable[[str], np.ndarray], cfg: ModelConfig,
            place: Callable[[LeafPath, np.ndarray], Any] | None = None) -> Params:
  """The params tree (float32) built from `read(hf_name)`, one leaf at a time.

  `place(path, array)` is called on each finished leaf and its result stored (e.g. device_put onto that leaf's
  sharding), so only one leaf is ever on the host beside what `read` maps. A scanned leaf stacks its L layers.
  """
  leaves: dict[LeafPath, list[Tensor]] = {}
  for t in tensors(cfg):
    leaves.setdefault(t.path, []).append(t)
  params: Params = {}
  for path, parts in leaves.items():
    arrays = [np.asarray(t.from_hf(_checked(read, t)), np.float32) for t in parts]
    leaf = arrays[0] if parts[0].layer is None else np.stack(arrays)
    del arrays
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = place(path, leaf) if place else leaf
  return params


def _checked(read: Callable[[str], np.ndarray], t: Tensor) -> np.ndarray:
  y = read(t.name)
  if tuple(y.shape) != t.hf_shape:
    raise ValueError(f'{t.name} has shape {list(y.shape)}, the model config needs {list(t.hf_shape)}')
  return y


# ---------------------------------------------------------------------------------------------------------------
# Configs


def llama_config(cfg: ModelConfig, *, max_position_embeddings: int, dtype: str = 'float32', bos_id: int = 1,
                 eos_id: int = 2, pad_id: int | None = 0) -> dict:
  """A LlamaConfig as config.json holds it; rope_theta both at the top (transformers 4) and in rope_parameters (5)."""
  if dtype not in _EXPORT_DTYPES:
    raise ValueError(f'dtype {dtype!r}: use one of {", ".join(_EXPORT_DTYPES)}')
  return {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model, 'intermediate_size': cfg.d_ff,
      'num_hidden_layers': cfg.num_layers, 'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim, 'hidden_act': 'silu',
      'max_position_embeddings': max_position_embeddings, 'rms_norm_eps': cfg.norm_eps,
      'rope_theta': cfg.rope_theta, 'rope_parameters': {'rope_type': 'default', 'rope_theta': cfg.rope_theta},
      'rope_scaling': None, 'attention_bias': False, 'attention_dropout': 0.0, 'mlp_bias': False,
      'tie_word_embeddings': cfg.tie_embeddings, 'initializer_range': cfg.init_std, 'pretraining_tp': 1,
      'bos_token_id': bos_id, 'eos_token_id': eos_id, 'pad_token_id': pad_id, 'use_cache': True,
      'torch_dtype': dtype, 'dtype': dtype,
  }


def generation_config(*, bos_id: int = 1, eos_id: int = 2, pad_id: int | None = 0, **sampling: Any) -> dict:
  """generation_config.json: the special ids, plus any sampling defaults (e.g. do_sample, temperature, top_k)."""
  return {'bos_token_id': bos_id, 'eos_token_id': eos_id, 'pad_token_id': pad_id, **sampling}


def _rope(hf: Mapping[str, Any]) -> tuple[float, str, float]:
  """(theta, rope type, partial rotary factor) from either transformers 4's or 5's keys."""
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  theta = rope.get('rope_theta', hf.get('rope_theta', 10_000.0))
  kind = rope.get('rope_type', rope.get('type', 'default'))
  return float(theta), kind, float(rope.get('partial_rotary_factor', hf.get('partial_rotary_factor', 1.0)))


def model_settings(hf: Mapping[str, Any]) -> dict[str, Any]:
  """ModelConfig fields (CONFIG_KEYS' left column) from a LlamaConfig dict, with transformers' defaults for absent
  keys. Raises ValueError naming every feature ringlm's decoder does not compute (it would give other logits)."""
  theta, rope_type, rotary = _rope(hf)
  unsupported = []
  if hf.get('model_type') not in _LLAMA_FAMILY:
    unsupported.append(f'model_type={hf.get("model_type")!r} (use one of {", ".join(_LLAMA_FAMILY)})')
  for key, want in (('hidden_act', 'silu'), ('attention_bias', False), ('mlp_bias', False),
                    ('sliding_window', None)):
    if hf.get(key, want) != want:
      unsupported.append(f'{key}={hf[key]!r} (ringlm computes {key}={want!r})')
  if rope_type != 'default':
    unsupported.append(f'rope_type={rope_type!r} (ringlm has plain RoPE, no scaling)')
  if rotary != 1.0:
    unsupported.append(f'partial_rotary_factor={rotary} (ringlm rotates the whole head dim)')
  if unsupported:
    raise ValueError('not a model ringlm computes: ' + '; '.join(unsupported))
  heads = hf['num_attention_heads']
  return {'vocab_size': hf['vocab_size'], 'num_layers': hf['num_hidden_layers'], 'd_model': hf['hidden_size'],
          'num_heads': heads, 'num_kv_heads': hf.get('num_key_value_heads') or heads,
          'head_dim': hf.get('head_dim') or hf['hidden_size'] // heads, 'd_ff': hf['intermediate_size'],
          'rope_theta': theta, 'norm_eps': float(hf.get('rms_norm_eps', 1e-6)),
          'tie_embeddings': bool(hf.get('tie_word_embeddings', False))}


def mismatches(settings: Mapping[str, Any], cfg: ModelConfig) -> list[str]:
  """'model.d_model=128 vs hidden_size=2048' for each setting of `model_settings` that `cfg` has otherwise."""
  out = []
  for field, hf_key in CONFIG_KEYS:
    ours, theirs = getattr(cfg, field), settings[field]
    if ours != theirs:
      key = 'data.vocab_size' if field == 'vocab_size' else f'model.{field}'
      out.append(f'{key}={ours!r} vs {hf_key}={theirs!r}')
  return out


def read_config(directory: str | os.PathLike) -> dict:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise ValueError(f'no {CONFIG_FILE} in {directory}: not a Hugging Face model directory')
  return json.loads(path.read_text())


def save_config(directory: str | os.PathLike, config: Mapping[str, Any], generation: Mapping[str, Any]) -> None:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
  (directory / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + '\n')


# ---------------------------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
# tensors' bytes, C order, little-endian, back to back.


def _shard_plan(shapes: Mapping[str, tuple[int, ...]], itemsize: int, max_shard_bytes: int) -> list[list[str]]:
  """Names grouped into files in order, each file up to max_shard_bytes (a larger tensor gets a file of its own)."""
  shards: list[list[str]] = [[]]
  size = 0
  for name, shape in shapes.items():
    nbytes = math.prod(shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  return shards


def _write_file(path: pathlib.Path, names: list[str], shapes: Mapping[str, tuple[int, ...]], code: str,
                arrays: Iterator[tuple[str, np.ndarray]]) -> None:
  dtype = _SAFETENSORS_DTYPES[code]
  header: dict[str, Any] = {'__metadata__': {'format': 'pt'}}
  offset = 0
  for name in names:
    nbytes = math.prod(shapes[name]) * dtype.itemsize
    header[name] = {'dtype': code, 'shape': list(shapes[name]), 'data_offsets': [offset, offset + nbytes]}
    offset += nbytes
  head = json.dumps(header, separators=(',', ':')).encode()
  head += b' ' * (-len(head) % 8)  # the data starts 8-byte aligned
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(head)) + head)
    for name in names:
      got, array = next(arrays)
      if got != name or tuple(array.shape) != tuple(shapes[name]):
        raise ValueError(f'expected {name} {list(shapes[name])}, got {got} {list(array.shape)}')
      f.write(np.ascontiguousarray(array, dtype).tobytes())


def save_weights(directory: str | os.PathLike, params: Params, cfg: ModelConfig, *, dtype: str = 'float32',
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes `model.safetensors`, or numbered shards plus `model.safetensors.index.json` when the weights exceed
  max_shard_bytes, converting one tensor at a time. Returns the file names written."""
  if dtype not in _EXPORT_DTYPES:
    raise ValueError(f'dtype {dtype!r}: use one of {", ".join(_EXPORT_DTYPES)}')
  code = _EXPORT_DTYPES[dtype]
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  shapes = hf_shapes(cfg)
  plan = _shard_plan(shapes, _SAFETENSORS_DTYPES[code].itemsize, max_shard_bytes)
  files = [WEIGHTS_FILE] if len(plan) == 1 else [f'model-{i + 1:05d}-of-{len(plan):05d}.safetensors'
                                                  for i in range(len(plan))]
  arrays = to_hf(params, cfg)
  for file, names in zip(files, plan):
    _write_file(directory / file, names, shapes, code, arrays)
  if len(plan) > 1:
    total = sum(math.prod(s) for s in shapes.values()) * _SAFETENSORS_DTYPES[code].itemsize
    index = {'metadata': {'total_size': total},
             'weight_map': {name: file for file, names in zip(files, plan) for name in names}}
    (directory / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2) + '\n')
    files.append(WEIGHTS_INDEX_FILE)
  return files


@dataclasses.dataclass(frozen=True)
class _Entry:
  file: pathlib.Path
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in the file
  end: int


def _read_header(path: pathlib.Path) -> dict[str, _Entry]:
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    size = path.stat().st_size
    if length > size - 8:
      raise ValueError(f'{path}: not a safetensors file (header length {length} > file size {size})')
    header = json.loads(f.read(length))
  entries = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: {name} is {info["dtype"]}; ringlm reads {", ".join(_SAFETENSORS_DTYPES)}')
    dtype, shape = _SAFETENSORS_DTYPES[info['dtype']], tuple(info['shape'])
    start, end = (8 + length + o for o in info['data_offsets'])
    if end - start != math.prod(shape) * dtype.itemsize or end > size:
      raise ValueError(f'{path}: {name} has offsets {info["data_offsets"]} that do not fit its shape or the file')
    entries[name] = _Entry(path, dtype, shape, start, end)
  return entries


class Weights:
  """The tensors of an HF model directory (one safetensors file, or shards with their index), read lazily.

  `weights[name]` is a read-only array in the file's dtype, backed by the memory-mapped file: nothing is read until
  it is used, and each tensor's pages can be dropped once it is converted.
  """

  def __init__(self, directory: str | os.PathLike):
    directory = pathlib.Path(directory)
    index, single = directory / WEIGHTS_INDEX_FILE, directory / WEIGHTS_FILE
    if index.is_file():
      files = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    elif single.is_file():
      files = [WEIGHTS_FILE]
    else:
      files = sorted(p.name for p in directory.glob('*.safetensors'))
    if not files:
      pickled = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLED) if directory.is_dir() else []
      if pickled:
        raise ValueError(f'{directory} holds PyTorch pickles ({", ".join(pickled[:3])}), which ringlm does not load '
                         '(unpickling runs code); save the model as safetensors (transformers: '
                         'model.save_pretrained(dir), safe_serialization is the default)')
      raise ValueError(f'no *.safetensors weights in {directory}')
    self.entries: dict[str, _Entry] = {}
    for file in files:
      self.entries.update(_read_header(directory / file))
    self._maps: dict[pathlib.Path, np.memmap] = {}

  @property
  def names(self) -> list[str]:
    return list(self.entries)

  def __contains__(self, name: str) -> bool:
    return name in self.entries

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.entries:
      raise ValueError(f'tensor {name} is not in the weights (they have {len(self.entries)} tensors)')
    e = self.entries[name]
    if e.file not in self._maps:
      self._maps[e.file] = np.memmap(e.file, np.uint8, mode='r')
    return self._maps[e.file][e.start:e.end].view(e.dtype).reshape(e.shape)

  def close(self) -> None:
    self._maps.clear()


# Tensors some checkpoints carry that hold nothing the model computes from (older Llama exports saved RoPE's table).
_IGNORED_SUFFIXES = ('.rotary_emb.inv_freq',)


def load_params(directory: str | os.PathLike, cfg: ModelConfig,
                place: Callable[[LeafPath, np.ndarray], Any] | None = None) -> Params:
  """ringlm params (float32) from an HF directory's safetensors, one leaf at a time through `place` (see from_hf).

  A tied model ignores a stored lm_head.weight; a tensor the model has no place for is an error, since it means
  an architecture the config check did not catch.
  """
  weights = Weights(directory)
  try:
    expected = set(hf_shapes(cfg))
    extra = [n for n in weights.names if n not in expected and not n.endswith(_IGNORED_SUFFIXES)
             and not (cfg.tie_embeddings and n == 'lm_head.weight')]
    if extra:
      raise ValueError(f'{directory} has tensors ringlm\'s decoder has no place for: {", ".join(sorted(extra)[:5])}'
                       + (f' and {len(extra) - 5} more' if len(extra) > 5 else ''))
    missing = sorted(expected - set(weights.names))
    if missing:
      raise ValueError(f'{directory} lacks tensors: {", ".join(missing[:5])}'
                       + (f' and {len(missing) - 5} more' if len(missing) > 5 else ''))
    return from_hf(weights.__getitem__, cfg, place)
  finally:
    weights.close()
