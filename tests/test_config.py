"""Config validation: every bad value is one ConfigError naming the key, raised before anything is built."""

import importlib

import pytest

from configs import default, tiny
from configs.errors import ConfigError
from configs.validate import validate
from sharding.mesh import mesh_shape
from tests.conftest import ROOT, typed, typed_mesh


def cfg(**overrides):
  c = tiny.get_config()
  for key, value in overrides.items():
    node = c
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return c


def test_presets_are_valid():
  validate(typed(default.get_config()), 8)
  validate(typed(tiny.get_config()), 8)
  validate(typed(tiny.get_config()), 1)


@pytest.mark.parametrize('key, value, devices', [
    ('objective', 'diffusion', 8),
    ('model.num_layers', 0, 8),
    ('model.d_model', -4, 8),
    ('model.num_kv_heads', 3, 8),
    ('model.attention', 'sparse', 8),
    ('model.ffn', 'moe', 8),
    ('data.tokenizer', 'wordpiece', 8),
    ('train.batch_size', 12, 8),
    ('mesh.tensor', 3, 8),
    ('mesh.fsdp', 16, 8),
    ('train.warmup_steps', -1, 8),
    ('train.grad_accum_steps', 0, 8),
    ('train.grad_accum_steps', 3, 1),  # 16 rows do not split into 3 microbatches
])
def test_bad_values_name_their_key(key, value, devices):
  with pytest.raises(ConfigError) as err:
    validate(typed(cfg(**{key: value})), devices)
  assert err.value.key.startswith(key.split('.')[0])
  assert '\n' not in str(err.value)


def test_mesh_errors_say_how_many_devices_there_are():
  c = default.get_config().mesh
  c.data, c.tensor = 2, 2
  with pytest.raises(ConfigError, match='8 are available'):
    mesh_shape(typed_mesh(c), 8)
  c.data = -1
  assert mesh_shape(typed_mesh(c), 8) == {'data': 4, 'fsdp': 1, 'tensor': 2, 'sequence': 1}
  c.fsdp = -1
  with pytest.raises(ConfigError, match='only one axis may be -1'):
    mesh_shape(typed_mesh(c), 8)


@pytest.mark.parametrize('rules, fix', [('embed=fsdp', 'give a rule for batch'), ('embed=pipeline', 'axes from'),
                                         ('embed', 'name=axis')])
def test_bad_mesh_rules_are_config_errors(rules, fix):
  with pytest.raises(ConfigError, match=fix) as err:
    validate(typed(cfg(**{'mesh.rules': rules})), 8)
  assert err.value.key == 'mesh.rules'


def test_heads_must_divide_over_tensor():
  with pytest.raises(ConfigError, match='mesh.tensor=4'):
    validate(typed(cfg(**{'mesh.tensor': 4, 'mesh.data': 2})), 8)


def test_data_source_rules_are_errors():
  with pytest.raises(ConfigError, match='data.tfds_name'):
    validate(typed(cfg(**{'data.text_dir': '/tmp', 'data.tfds_name': 'c4'})), 1)
  with pytest.raises(ConfigError, match='data.stream_shards'):  # each batch takes an equal slice of every shard
    validate(typed(cfg(**{'data.tfds_name': 'c4', 'data.stream_shards': 3})), 1)


def test_dcn_data_must_match_the_granules():
  from sharding.mesh import build_mesh

  c = default.get_config().mesh
  c.dcn_data = 2
  with pytest.raises(ConfigError, match='there are 1 processes'):
    build_mesh(typed_mesh(c))
  c.dcn_data = 3
  with pytest.raises(ConfigError, match='mesh.dcn_data'):
    validate(typed(cfg(**{'mesh.dcn_data': 3})), 8)


def test_ffn_block_must_divide_each_devices_share_of_the_sequence():
  """768 tokens over a sequence axis of 2: 384 per device, which a 256-token FFN chunk does not divide."""
  overrides = {'data.seq_len': 768, 'model.ffn': 'blockwise', 'model.attention': 'ring', 'mesh.sequence': 2,
               'mesh.data': 1, 'model.q_block': 64, 'model.kv_block': 64}
  validate(typed(cfg(**overrides, **{'model.ffn_block': 128})), 2)
  with pytest.raises(ConfigError, match='per-device sequence length 384') as err:
    validate(typed(cfg(**overrides, **{'model.ffn_block': 256})), 2)
  assert err.value.key == 'model.ffn_block'


def _keys(tree: dict, prefix: str = '') -> list[str]:
  """Every dotted key of a user-format config dict."""
  return [k for name, v in tree.items()
          for k in (_keys(v, f'{prefix}{name}.') if isinstance(v, dict) else [f'{prefix}{name}'])]


# One value outside each key's domain. Every key of configs/default.py must be here (a new key needs its entry).
OUT_OF_DOMAIN = {
    'seed': -1, 'objective': 'diffusion',
    'objectives.mask_rate': 1.0, 'objectives.prefix_min_frac': -0.1, 'objectives.prefix_max_frac': 1.5,
    'objectives.noise_density': 0.0, 'objectives.mean_span_length': 0.5, 'objectives.ul2_mixture': 'R:3:0.15=-1',
    'model.architecture': 'encoder', 'model.num_encoder_layers': 0, 'model.num_decoder_layers': -1,
    'model.share_embeddings': 'yes', 'model.attention_kernel': 'triton', 'model.num_layers': 0, 'model.d_model': 130, 'model.num_heads': 0, 'model.num_kv_heads': 3, 'model.head_dim': 33,
    'model.d_ff': -1, 'model.attention': 'sparse', 'model.ffn': 'moe', 'model.q_block': 0, 'model.kv_block': -128,
    'model.ffn_block': 0, 'model.rope_theta': 0.0, 'model.norm_eps': -1e-6, 'model.init_std': 0.0,
    'model.tie_embeddings': 'yes', 'model.dtype': 'float16', 'model.remat': 1, 'model.scan_layers': None,
    'data.text_dir': '/nonexistent/notes', 'data.text_glob': '', 'data.tfds_name': 3,
    'data.tfds_data_dir': '/nonexistent/tfds', 'data.stream_shards': 0, 'data.shuffle_buffer': -1,
    'data.text_key': '', 'data.train_split': '', 'data.eval_split': '',
    'data.validation_percent': 0, 'data.cache_dir': '/dev/null/cache', 'data.seq_len': 1,
    'data.tokenizer': 'wordpiece', 'data.vocab_size': 0, 'data.spm_model_type': 'wordpiece', 'data.spm_max_chars': 0,
    'data.extra_ids': -1, 'data.spm_model_path': '/nonexistent/tokenizer.model',
    'train.steps': 0, 'train.batch_size': 12, 'train.grad_accum_steps': 0, 'train.learning_rate': -3e-3,
    'train.warmup_steps': -1, 'train.end_lr_fraction': 1.5, 'train.weight_decay': -0.1,
    'train.decay_embeddings_and_norms': 'no', 'train.b1': 1.0, 'train.b2': -0.5, 'train.eps': 0.0,
    'train.grad_clip': -1.0, 'train.log_every': 0, 'train.eval_every': -1, 'train.eval_batches': 0,
    'train.eval_probes': 0, 'train.peak_flops_per_device': float('nan'), 'train.profile_start': -1,
    'train.profile_steps': -1,
    'checkpoint.every_steps': 0, 'checkpoint.keep': 0, 'checkpoint.init_from': '/nonexistent/checkpoints',
    'checkpoint.init_from_hf': '/nonexistent/hf', 'checkpoint.step': -2,
    'export.dir': 3, 'export.dtype': 'float16', 'export.max_shard_bytes': 0,
    'mesh.data': 0, 'mesh.fsdp': 16, 'mesh.tensor': -2, 'mesh.sequence': 2, 'mesh.dcn_data': 0,
    'mesh.rules': 'embed=pipeline',
    'sample.prompt': 7, 'sample.max_new_tokens': 0, 'sample.temperature': -0.5, 'sample.top_k': -1,
    'sample.num_samples': 0,
    'estimate.topology': 'v5e', 'compare.variants': 'no colon here', 'compare.flops_budgets': (),
    'scaling.flops': (1e12, -1.0), 'scaling.d_models': (24, 50), 'scaling.window': 0.5,
    'scaling.centre_coefficient': 0.0, 'scaling.centre_exponent': -0.5, 'scaling.min_steps': 0,
    'scaling.aspect_ratio': 0, 'scaling.head_dim': 23, 'scaling.ffn_ratio': 0.0, 'scaling.warmup_fraction': 1.0,
    'scaling.points': '/nonexistent/points.csv', 'scaling.predict_flops': (1e20, 1e20), 'scaling.bootstrap': -1,
}


def test_the_walk_covers_every_key_of_the_default_config():
  assert sorted(OUT_OF_DOMAIN) == sorted(_keys(default.get_config().to_dict()))


@pytest.mark.parametrize('key', sorted(OUT_OF_DOMAIN))
def test_every_key_outside_its_domain_is_one_line_naming_it(key):
  """The default config with one key set outside its domain, checked as main.py checks it (8 devices)."""
  c = default.get_config()
  node, (*path, last) = c, key.split('.')
  for part in path:
    node = node[part]
  with node.ignore_type():
    node[last] = OUT_OF_DOMAIN[key]
  with pytest.raises(ConfigError) as err:
    validate(typed(c), 8)
  assert err.value.key == key and '\n' not in str(err.value), str(err.value)


@pytest.mark.parametrize('preset', sorted(p.stem for p in (ROOT / 'configs').glob('*.py')
                                          if p.stem not in ('__init__', 'default', 'sections', 'validate', 'errors')))
def test_every_preset_builds_and_validates(preset):
  """Each preset in configs/ is a valid config on 4 devices (long_context's ring spans them)."""
  c = typed(importlib.import_module(f'configs.{preset}').get_config())
  validate(c, 4, platform='cpu')
  assert c.compare.parsed_variants
