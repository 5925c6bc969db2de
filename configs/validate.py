"""Config checks that run before anything is built or compiled; each failure is one ConfigError line."""

import math

import ml_collections

from configs.errors import ConfigError
from models.attention import validate_attention
from sharding import rules
from sharding.mesh import mesh_shape

POSITIVE = ('model.num_layers', 'model.d_model', 'model.num_heads', 'model.num_kv_heads', 'model.d_ff',
            'data.seq_len', 'data.vocab_size', 'train.steps', 'train.batch_size', 'train.grad_accum_steps',
            'train.log_every', 'train.eval_batches', 'checkpoint.every_steps', 'checkpoint.keep')
CHOICES = {
    'objective': ('causal', 'prefix_lm', 'masked_lm'),
    'model.ffn': ('standard', 'blockwise'),
    'model.dtype': ('float32', 'bfloat16'),
    'data.tokenizer': ('sentencepiece', 'byte'),
    'data.spm_model_type': ('bpe', 'unigram', 'char', 'word'),
}


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _validate_objectives(o: ml_collections.ConfigDict) -> None:
  """The `objectives.*` keys, checked whatever the objective so a preset never carries a broken setting."""
  if not 0 < o.mask_rate < 1:
    raise ConfigError('objectives.mask_rate', o.mask_rate, 'use a fraction strictly between 0 and 1, e.g. 0.15')
  for key in ('prefix_min_frac', 'prefix_max_frac'):
    if not 0 <= o[key] <= 1:
      raise ConfigError(f'objectives.{key}', o[key], 'use a fraction of the document length in [0, 1]')
  if o.prefix_min_frac > o.prefix_max_frac:
    raise ConfigError('objectives.prefix_min_frac', o.prefix_min_frac,
                      f'inverted range: must be <= objectives.prefix_max_frac={o.prefix_max_frac}')
  if o.prefix_max_frac == 0:
    raise ConfigError('objectives.prefix_max_frac', 0, 'empty range: every prefix would be empty; use > 0, e.g. 1.0')
  if o.prefix_min_frac == 1:
    raise ConfigError('objectives.prefix_min_frac', 1, 'empty range: every suffix would be empty; use < 1, e.g. 0.0')


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  from data import pipeline  # data.* checks that need no corpus
  from train import objectives  # registry of implemented objectives (may be a subset of CHOICES)

  for key in POSITIVE:
    if _get(config, key) <= 0:
      raise ConfigError(key, _get(config, key), 'must be a positive integer')
  for key, allowed in CHOICES.items():
    if _get(config, key) not in allowed:
      raise ConfigError(key, _get(config, key), f'choose one of {", ".join(allowed)}')
  objectives.get(config.objective)
  _validate_objectives(config.objectives)
  m, d, t = config.model, config.data, config.train
  head_dim = m.head_dim or m.d_model // m.num_heads
  if head_dim % 2:
    raise ConfigError('model.head_dim', head_dim, 'RoPE needs an even head dim; change model.d_model/num_heads')
  if m.ffn == 'blockwise' and (m.ffn_block <= 0 or d.seq_len % m.ffn_block):
    raise ConfigError('model.ffn_block', m.ffn_block, f'must be positive and divide data.seq_len={d.seq_len}')
  if t.eval_every < 0:
    raise ConfigError('train.eval_every', t.eval_every, 'use 0 (only at the end) or a positive step count')
  if t.warmup_steps < 0:
    raise ConfigError('train.warmup_steps', t.warmup_steps, 'use 0 (no warmup) or a positive step count')
  sizes = mesh_shape(config.mesh, num_devices)
  rules.parse(config.mesh.rules)
  if config.mesh.dcn_data < 1 or sizes['data'] % config.mesh.dcn_data:
    raise ConfigError('mesh.dcn_data', config.mesh.dcn_data, f'must be >= 1 and divide the data axis ({sizes["data"]})')
  validate_attention(m.attention, d.seq_len, m.q_block, m.kv_block, sizes['sequence'], m.num_heads, m.num_kv_heads)
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
  shards = sizes['data'] * sizes['fsdp']
  if t.batch_size % shards:
    raise ConfigError('train.batch_size', t.batch_size,
                      f'must be divisible by mesh.data x mesh.fsdp = {shards}')
  if t.batch_size % (t.grad_accum_steps * shards):
    raise ConfigError('train.grad_accum_steps', t.grad_accum_steps,
                      f'each microbatch of train.batch_size={t.batch_size} must split over mesh.data x mesh.fsdp = '
                      f'{shards}: use a divisor of {t.batch_size // shards}')
  if d.seq_len % sizes['sequence']:
    raise ConfigError('data.seq_len', d.seq_len, f'must be divisible by mesh.sequence={sizes["sequence"]}')
  length = dict(rules.parse(config.mesh.rules))['length']
  local = d.seq_len // math.prod(sizes[a] for a in ((length,) if isinstance(length, str) else length or ()))
  if m.ffn == 'blockwise' and m.ffn_block < local and local % m.ffn_block:
    raise ConfigError('model.ffn_block', m.ffn_block,
                      f'must divide the per-device sequence length {local} (data.seq_len split over the mesh)')
  pipeline.check_config(config)
