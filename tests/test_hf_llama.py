"""Hugging Face Llama conversion without torch: exact round trips, file names, shapes and config keys.

Logit parity with transformers' LlamaForCausalLM is in tests/interop/ (it needs torch).
"""

import dataclasses
import functools
import json
import operator
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from configs.sections import ModelConfig
from models import hf_llama
from sharding import rules
from sharding.mesh import AXES
from train import params as params_lib

CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=16, num_heads=4, num_kv_heads=2, head_dim=6, d_ff=24,
                  rope_theta=500_000.0, norm_eps=1e-5)
D, H, K, E, F, V = 16, 4, 2, 6, 24, 40


def _params(cfg: ModelConfig, seed: int = 0) -> dict:
  """Random params with non-trivial norm scales (init sets them to ones)."""
  p = params_lib.init(cfg, seed)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 64))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + jax.random.normal(next(keys), x.shape) if 'scale' in jax.tree_util.keystr(path) else x, p)


def _assert_trees_equal(a: dict, b: dict) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _unrolled(cfg):
  return dataclasses.replace(cfg, scan_layers=False)


def _scanned(cfg):
  return dataclasses.replace(cfg, scan_layers=True)


@pytest.mark.parametrize('cfg', [CFG, dataclasses.replace(CFG, tie_embeddings=False), _scanned(CFG),
                                 dataclasses.replace(CFG, tie_embeddings=False, scan_layers=True)],
                         ids=['tied', 'untied', 'tied-scanned', 'untied-scanned'])
def test_export_import_round_trip_is_bitwise(cfg, tmp_path):
  params = _params(cfg)
  files = hf_llama.save_weights(tmp_path, params, cfg)
  assert files == ['model.safetensors']
  places = []
  loaded = hf_llama.load_params(tmp_path, cfg, place=lambda path, x: places.append(path) or x)
  _assert_trees_equal(loaded, jax.tree.map(np.asarray, params))
  assert len(places) == len(jax.tree.leaves(params))  # each leaf placed once, as it is finished


def test_names_and_shapes():
  untied = dataclasses.replace(CFG, tie_embeddings=False)
  shapes = hf_llama.hf_shapes(untied)
  layer = {'input_layernorm.weight': (D,), 'self_attn.q_proj.weight': (H * E, D),
           'self_attn.k_proj.weight': (K * E, D), 'self_attn.v_proj.weight': (K * E, D),
           'self_attn.o_proj.weight': (D, H * E), 'post_attention_layernorm.weight': (D,),
           'mlp.gate_proj.weight': (F, D), 'mlp.up_proj.weight': (F, D), 'mlp.down_proj.weight': (D, F)}
  want = {'model.embed_tokens.weight': (V, D),
          **{f'model.layers.{i}.{n}': s for i in range(2) for n, s in layer.items()},
          'model.norm.weight': (D,), 'lm_head.weight': (V, D)}
  assert shapes == want and list(shapes) == list(want)
  assert 'lm_head.weight' not in hf_llama.hf_shapes(CFG)  # tied: transformers ties it to the embedding


def test_tensor_layouts_are_linear_weights():
  """q_proj row h*E + e is head h, dim e (transformers' view(..., H, E)); o_proj column h*E + e likewise."""
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  params = _params(cfg)
  hf = dict(hf_llama.to_hf(params, cfg))
  wq_DHE = np.asarray(params['blocks'][1]['attn']['wq_DHE'])
  q = hf['model.layers.1.self_attn.q_proj.weight']
  np.testing.assert_array_equal(q[2 * E + 3], wq_DHE[:, 2, 3])
  wo_HED = np.asarray(params['blocks'][0]['attn']['wo_HED'])
  np.testing.assert_array_equal(hf['model.layers.0.self_attn.o_proj.weight'][:, 3 * E + 1], wo_HED[3, 1])
  np.testing.assert_array_equal(hf['lm_head.weight'], np.asarray(params['head_DV']).T)
  np.testing.assert_array_equal(hf['model.layers.0.mlp.down_proj.weight'],
                                np.asarray(params['blocks'][0]['mlp']['w_down_FD']).T)


def test_scanned_and_unrolled_export_the_same_bytes(tmp_path):
  params = _params(CFG)
  stacked = {**params, 'blocks': jax.tree.map(lambda *xs: np.stack(xs), *[params['blocks'][i] for i in range(2)])}
  hf_llama.save_weights(tmp_path / 'unrolled', params, CFG)
  hf_llama.save_weights(tmp_path / 'scanned', stacked, _scanned(CFG))
  assert (tmp_path / 'unrolled/model.safetensors').read_bytes() == (tmp_path / 'scanned/model.safetensors').read_bytes()
  # and an unrolled checkpoint imports into a scanned model
  _assert_trees_equal(hf_llama.load_params(tmp_path / 'unrolled', _scanned(CFG)), jax.tree.map(np.asarray, stacked))


def test_sharded_files_and_index(tmp_path):
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  params = _params(cfg)
  files = hf_llama.save_weights(tmp_path, params, cfg, max_shard_bytes=4_000)
  shards = files[:-1]
  assert files[-1] == 'model.safetensors.index.json' and len(shards) > 2
  assert shards == [f'model-{i:05d}-of-{len(shards):05d}.safetensors' for i in range(1, len(shards) + 1)]
  index = json.loads((tmp_path / files[-1]).read_text())
  shapes = hf_llama.hf_shapes(cfg)
  assert set(index['weight_map']) == set(shapes) and set(index['weight_map'].values()) == set(shards)
  assert index['metadata']['total_size'] == 4 * sum(int(np.prod(s)) for s in shapes.values())
  for shard in shards:
    size = (tmp_path / shard).stat().st_size
    (header_len,) = struct.unpack('<Q', (tmp_path / shard).read_bytes()[:8])
    assert header_len % 8 == 0 and size - 8 - header_len <= 4_000  # every tensor here is under the limit
  _assert_trees_equal(hf_llama.load_params(tmp_path, cfg), jax.tree.map(np.asarray, params))


def test_bfloat16_export_rounds_once(tmp_path):
  params = _params(CFG)
  hf_llama.save_weights(tmp_path, params, CFG, dtype='bfloat16')
  weights = hf_llama.Weights(tmp_path)
  assert {weights[n].dtype for n in weights.names} == {np.dtype(ml_dtypes.bfloat16)}
  loaded = hf_llama.load_params(tmp_path, CFG)
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
  _assert_trees_equal(loaded, rounded)


def test_config_round_trip_and_mismatches():
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  hf = hf_llama.llama_config(cfg, max_position_embeddings=256, dtype='bfloat16')
  assert hf['architectures'] == ['LlamaForCausalLM'] and hf['model_type'] == 'llama'
  assert (hf['hidden_size'], hf['num_attention_heads'], hf['num_key_value_heads'], hf['head_dim']) == (D, H, K, E)
  assert hf['rope_theta'] == hf['rope_parameters']['rope_theta'] == 500_000.0 and hf['rms_norm_eps'] == 1e-5
  assert (hf['bos_token_id'], hf['eos_token_id'], hf['pad_token_id']) == (1, 2, 0)
  assert hf['tie_word_embeddings'] is False and hf['torch_dtype'] == 'bfloat16'
  settings = hf_llama.model_settings(json.loads(json.dumps(hf)))
  assert settings == {f: getattr(cfg, f) for f, _ in hf_llama.CONFIG_KEYS}
  assert hf_llama.mismatches(settings, cfg) == []
  other = dataclasses.replace(cfg, d_model=32, vocab_size=41)
  assert hf_llama.mismatches(settings, other) == ['data.vocab_size=41 vs vocab_size=40',
                                                  'model.d_model=32 vs hidden_size=16']


def test_config_defaults_of_older_files():
  """transformers 4 files may lack head_dim, num_key_value_heads, tie_word_embeddings and keep rope_theta on top."""
  old = {'model_type': 'llama', 'vocab_size': 32000, 'hidden_size': 4096, 'intermediate_size': 11008,
         'num_hidden_layers': 32, 'num_attention_heads': 32, 'rope_theta': 10000.0, 'rms_norm_eps': 1e-5,
         'rope_scaling': None}
  s = hf_llama.model_settings(old)
  assert (s['num_kv_heads'], s['head_dim'], s['tie_embeddings'], s['rope_theta']) == (32, 128, False, 10000.0)


def test_unsupported_features_are_named():
  hf = hf_llama.llama_config(CFG, max_position_embeddings=64)
  hf.update(attention_bias=True, hidden_act='gelu', rope_parameters={'rope_type': 'llama3', 'factor': 8.0})
  with pytest.raises(ValueError, match=r"hidden_act='gelu'.*attention_bias=True.*rope_type='llama3'"):
    hf_llama.model_settings(hf)
  with pytest.raises(ValueError, match="model_type='qwen2'"):
    hf_llama.model_settings({**hf_llama.llama_config(CFG, max_position_embeddings=64), 'model_type': 'qwen2'})


def test_pytorch_pickles_are_refused(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not unpickled')
  with pytest.raises(ValueError, match='pytorch_model.bin.*does not load'):
    hf_llama.load_params(tmp_path, CFG)


def test_wrong_shapes_and_extra_tensors_are_errors(tmp_path):
  hf_llama.save_weights(tmp_path / 'a', _params(CFG), CFG)
  with pytest.raises(ValueError, match=r'model.embed_tokens.weight has shape \[40, 16\], the model config needs '
                                       r'\[41, 16\]'):
    hf_llama.load_params(tmp_path / 'a', dataclasses.replace(CFG, vocab_size=41))
  with pytest.raises(ValueError, match='has tensors .* no place for: model.layers.1'):
    hf_llama.load_params(tmp_path / 'a', dataclasses.replace(CFG, num_layers=1))
  with pytest.raises(ValueError, match='lacks tensors: lm_head.weight'):
    hf_llama.load_params(tmp_path / 'a', dataclasses.replace(CFG, tie_embeddings=False))


@pytest.mark.parametrize('scan', [False, True])
def test_import_places_each_leaf_on_its_sharding(scan, tmp_path):
  """What init_from_hf does: each leaf goes from the mapped file straight onto the mesh (data x fsdp x tensor),
  each process building only its own devices' shards."""
  cfg = dataclasses.replace(CFG, tie_embeddings=False, scan_layers=scan)
  params = _params(cfg)
  hf_llama.save_weights(tmp_path, params, cfg)
  mesh = jax.make_mesh((2, 2, 2, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  shardings = rules.tree_shardings(mesh, params_lib.logical_axes(cfg))

  def place(path, x):
    sharding = functools.reduce(operator.getitem, path, shardings)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  loaded = hf_llama.load_params(tmp_path, cfg, place=place)
  for got, want, sharding in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
