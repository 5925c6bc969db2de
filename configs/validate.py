"""The rules that span config sections, checked before anything is built or compiled; each failure is one
ConfigError line. A section's own fields are checked when it is built (configs/sections.py).

Spanning rules: the tokenizer and a Hugging Face source (`checkpoint.init_from_hf`) against the model, the mesh
against the devices, the attention path against the sequence axis, block and chunk lengths against each device's
share of the sequence, sizes against the axes that split them, the attention kernel against the platform and the
objective's masks.
"""

import json
import math

from configs.errors import ConfigError
from configs.sections import Config
from data import tokenizers
from models.attention import dispatch
from models import hf_llama
from models.attention.blockwise import effective_block
from sharding import rules
from sharding.mesh import mesh_shape
from train import objectives


def _check_blocks(config: Config, sizes: dict[str, int], length_axes: tuple[str, ...]) -> None:
  """Attention blocks against the length each device attends over; ring attention against the axis it runs on."""
  m, seq_len = config.model, config.data.seq_len
  if m.attention == 'blockwise':
    for key, block in (('model.q_block', m.q_block), ('model.kv_block', m.kv_block)):
      if seq_len % effective_block(block, seq_len):
        raise ConfigError(key, block, f'must divide data.seq_len={seq_len}')
  if m.attention != 'ring':
    return
  if len(length_axes) != 1:
    raise ConfigError('mesh.rules', config.mesh.rules, 'ring attention runs over the one mesh axis the rule for '
                      'length names; map length to one axis, e.g. length=sequence')
  sequence = sizes[length_axes[0]]
  if sequence <= 1:
    raise ConfigError(f'mesh.{length_axes[0]}', sequence,
                      f'ring attention needs a {length_axes[0]} axis of size > 1; set mesh.{length_axes[0]} or use '
                      'blockwise')
  local = seq_len // sequence
  if seq_len % (2 * sequence):
    raise ConfigError('data.seq_len', seq_len,
                      f'ring attention splits it into 2 * mesh.sequence = {2 * sequence} zig-zag chunks')
  half = seq_len // (2 * sequence)
  for key, block in (('model.q_block', m.q_block), ('model.kv_block', m.kv_block)):
    effective = effective_block(block, local)
    if half % effective and effective != local:
      raise ConfigError(key, block, f'must divide the zig-zag chunk length data.seq_len / (2 * mesh.sequence) = {half}')


def _check_sentinels(config: Config) -> None:
  """Span corruption (and UL2's R and X denoisers) replace each span by a sentinel: the top data.extra_ids ids."""
  modes = {mode for mode, *_ in config.objectives.ul2_denoisers}
  needs = config.objective == 'span_corruption' or (config.objective == 'ul2' and modes != {'S'})
  if needs and config.data.extra_ids < 1:
    raise ConfigError('data.extra_ids', config.data.extra_ids,
                      f'objective={config.objective} needs sentinel ids (T5 reserves 100; spans per document are '
                      'capped at this many); set it, e.g. --config.data.extra_ids=100')


# Objectives whose batches have no bidirectional input part per document, so nothing to give an encoder.
NO_ENCODER_INPUT = {'causal': 'has no input part to encode', 'masked_lm': 'predicts its inputs in place'}


def attention_kernel(config: Config, platform: str, num_devices: int) -> tuple[str, str]:
  """('pallas' or 'jax', why) for the objective's masks on `platform`: what every trace of the model will pick
  (dispatch.choose); model.attention_kernel=pallas where no fused kernel serves them is a ConfigError."""
  m = config.model
  sizes = mesh_shape(config.mesh, num_devices)
  ring_size = math.prod(sizes[a] for a in rules.mesh_axes('length', config.mesh.logical_rules))
  try:
    return dispatch.choose(m.attention_kernel, m.attention, objectives.MASK_KINDS[config.objective], platform,
                           config.data.seq_len, m.q_block, m.kv_block, ring_size)
  except ValueError as e:
    raise ConfigError('model.attention_kernel', m.attention_kernel, f'{e}; or use auto or jax') from None





def _check_hf_source(config: Config) -> None:
  """`checkpoint.init_from_hf` against the config: a Llama-family directory of safetensors whose config.json has
  the model's sizes (model.rope_theta may differ: raising it is how a longer context is trained) and whose tensors
  have the model's names and shapes. Reads the config and the safetensors headers only."""
  source = config.checkpoint.init_from_hf
  if config.model.architecture != 'decoder':
    raise ConfigError('checkpoint.init_from_hf', source, 'a Llama checkpoint has no encoder; import it into '
                      'model.architecture=decoder')
  try:
    settings = hf_llama.model_settings(hf_llama.read_config(source))
    weights = hf_llama.Weights(source)
    weights.close()
  except (ValueError, OSError, json.JSONDecodeError) as e:
    raise ConfigError('checkpoint.init_from_hf', source, str(e).splitlines()[0]) from None
  differ = [m for m in hf_llama.mismatches(settings, config.model) if not m.startswith('model.rope_theta=')]
  if differ:
    raise ConfigError('checkpoint.init_from_hf', source,
                      f'its config.json differs from the model config: {"; ".join(differ)}; set those keys to its '
                      'values')
  shapes = hf_llama.hf_shapes(config.model)
  wrong = [f'{name} {list(weights.entries[name].shape)} (the model needs {list(shape)})'
           for name, shape in shapes.items() if name in weights and weights.entries[name].shape != shape]
  if wrong:
    raise ConfigError('checkpoint.init_from_hf', source, f'tensor shapes differ from its config: {"; ".join(wrong)}')


def validate(config: Config, num_devices: int, platform: str | None = None) -> None:
  """Every spanning rule, for `num_devices` devices of `platform` (default: the one programs are compiled for)."""
  m, d, t = config.model, config.data, config.train
  _check_sentinels(config)
  if m.architecture == 'encoder_decoder' and config.objective in NO_ENCODER_INPUT:
    raise ConfigError('objective', config.objective,
                      f'{NO_ENCODER_INPUT[config.objective]}, so model.architecture=encoder_decoder cannot train on '
                      'it; use prefix_lm (or another objective with an input part), or model.architecture=decoder')
  tokenizers.check_vocab(d)
  if config.checkpoint.init_from_hf:
    _check_hf_source(config)
  sizes = mesh_shape(config.mesh, num_devices)
  if sizes['data'] % config.mesh.dcn_data:
    raise ConfigError('mesh.dcn_data', config.mesh.dcn_data, f'must divide the data axis ({sizes["data"]})')
  if m.attention != 'ring' and sizes['sequence'] > 1:
    raise ConfigError('mesh.sequence', sizes['sequence'], 'a sequence axis needs model.attention=ring; set it to 1')
  for key, heads in (('model.num_heads', m.num_heads), ('model.num_kv_heads', m.num_kv_heads)):
    if heads % sizes['tensor']:
      raise ConfigError(key, heads, f'must be divisible by mesh.tensor={sizes["tensor"]}')
  for key, size in (('model.d_ff', m.d_ff), ('data.vocab_size', d.vocab_size)):
    if size % sizes['tensor']:
      raise ConfigError(key, size, f'must be divisible by mesh.tensor={sizes["tensor"]}')
  if m.d_model % sizes['fsdp']:
    raise ConfigError('model.d_model', m.d_model, f'must be divisible by mesh.fsdp={sizes["fsdp"]}')
  if not d.local and t.batch_size % d.stream_shards:
    raise ConfigError('data.stream_shards', d.stream_shards, f'each global batch takes an equal slice of every '
                      f'shard, so it must divide train.batch_size={t.batch_size}')
  shards = sizes['data'] * sizes['fsdp']
  if t.batch_size % shards:
    raise ConfigError('train.batch_size', t.batch_size, f'must be divisible by mesh.data x mesh.fsdp = {shards}')
  if t.batch_size % (t.grad_accum_steps * shards):
    raise ConfigError('train.grad_accum_steps', t.grad_accum_steps,
                      f'each microbatch of train.batch_size={t.batch_size} must split over mesh.data x mesh.fsdp = '
                      f'{shards}: use a divisor of {t.batch_size // shards}')
  if d.seq_len % sizes['sequence']:
    raise ConfigError('data.seq_len', d.seq_len, f'must be divisible by mesh.sequence={sizes["sequence"]}')
  length_axes = rules.mesh_axes('length', config.mesh.logical_rules)
  _check_blocks(config, sizes, length_axes)
  local = d.seq_len // math.prod(sizes[a] for a in length_axes)
  if m.ffn == 'blockwise' and m.ffn_block < local and local % m.ffn_block:
    raise ConfigError('model.ffn_block', m.ffn_block,
                      f'must divide the per-device sequence length {local} (data.seq_len split over the mesh)')
  attention_kernel(config, platform or dispatch.target_platform(), num_devices)
