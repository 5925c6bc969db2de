"""Config validation: every bad value is one ConfigError naming the key, raised before anything is built."""

import pytest

from configs import default, tiny
from configs.errors import ConfigError
from configs.validate import validate
from sharding.mesh import mesh_shape
from tests.conftest import typed, typed_mesh


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


def test_both_data_sources_is_an_error():
  with pytest.raises(ConfigError, match='data.tfds_name'):
    validate(typed(cfg(**{'data.text_dir': '/tmp', 'data.tfds_name': 'c4'})), 1)


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
