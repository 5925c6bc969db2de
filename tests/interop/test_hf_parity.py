"""ringlm <-> transformers' LlamaForCausalLM compute the same logits, both ways (run by `make test-interop`).

Needs torch and transformers (requirements-interop.txt), so `make test` leaves this folder out. Each test prints its
largest absolute logit difference; float32 must agree within 1e-5.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs.sections import ModelConfig
from models import hf_llama
from models.attention import AttentionMask
from train import params as params_lib

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

INIT_STD = 0.08  # not 0.02: attention must be far from uniform for a wrong RoPE or GQA grouping to show
B, S = 2, 64  # RoPE at 64 real positions: a wrong rotation convention shows at every position but 0
CFG = ModelConfig(vocab_size=300, num_layers=3, d_model=64, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=96,
                  rope_theta=10_000.0, norm_eps=1e-6, init_std=INIT_STD)
TOL = 1e-5


def _random_params(cfg: ModelConfig, seed: int = 0) -> dict:
  """ringlm's init with every norm scale random too (init leaves them at one, which hides a swapped norm)."""
  params = params_lib.init(cfg, seed)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 64))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 * jax.random.normal(next(keys), x.shape) if 'scale' in jax.tree_util.keystr(path)
      else x, params)


def _tokens(vocab_size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab_size, (B, S))


def _ringlm_logits(cfg: ModelConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
  return np.asarray(params_lib.apply(cfg, params)(jnp.asarray(tokens), AttentionMask.causal(*tokens.shape)))


def _hf_logits(directory, tokens: np.ndarray) -> np.ndarray:
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
  assert type(model).__name__ == 'LlamaForCausalLM'
  with torch.no_grad():
    return model(torch.from_numpy(tokens)).logits.numpy()


def _export(directory, cfg: ModelConfig, params: dict, **kwargs) -> list[str]:
  hf_llama.save_config(directory, hf_llama.llama_config(cfg, max_position_embeddings=S, **kwargs.pop('config', {})),
                       hf_llama.generation_config())
  return hf_llama.save_weights(directory, params, cfg, **kwargs)


def _report(what: str, diff: float, logits: np.ndarray) -> None:
  print(f'\n{what}: max |logit diff| = {diff:.3g} (max |logit| {np.abs(logits).max():.3g})')


@pytest.mark.parametrize('cfg', [CFG, dataclasses.replace(CFG, tie_embeddings=False, rope_theta=500_000.0,
                                                          norm_eps=1e-5),
                                 dataclasses.replace(CFG, scan_layers=True, num_kv_heads=1)],
                         ids=['tied', 'untied', 'scanned-mqa'])
def test_export_matches_llama_for_causal_lm(cfg, tmp_path):
  params = _random_params(cfg)
  _export(tmp_path, cfg, params)
  tokens = _tokens(cfg.vocab_size)
  ours, theirs = _ringlm_logits(cfg, params, tokens), _hf_logits(tmp_path, tokens)
  diff = float(np.abs(ours - theirs).max())
  _report(f'export {cfg.num_heads}/{cfg.num_kv_heads} heads, tied={cfg.tie_embeddings}, scan={cfg.scan_layers}', diff,
          ours)
  assert diff < TOL


def test_sharded_bfloat16_export_loads(tmp_path):
  """bfloat16 shards with an index: transformers loads them (upcast) to the logits of the rounded params."""
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  params = _random_params(cfg)
  files = _export(tmp_path, cfg, params, dtype='bfloat16', max_shard_bytes=40_000, config={'dtype': 'bfloat16'})
  assert len(files) > 3 and files[-1] == hf_llama.WEIGHTS_INDEX_FILE
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
  tokens = _tokens(cfg.vocab_size)
  ours = _ringlm_logits(cfg, rounded, tokens)
  diff = float(np.abs(ours - _hf_logits(tmp_path, tokens)).max())
  _report('export bfloat16 sharded', diff, ours)
  assert diff < TOL


def test_rope_needs_no_row_permutation(tmp_path):
  """The control: reordering each q/k head's rows between the half-split and the interleaved RoPE layout (what
  transformers' converter does to Meta's weights) breaks parity, so the matches above see the rotation convention."""
  E = CFG.head_dim
  interleaved_E = np.arange(E).reshape(2, E // 2).T.reshape(-1)  # 0, E/2, 1, E/2 + 1, ...
  params = _random_params(CFG)
  permuted = jax.tree_util.tree_map_with_path(
      lambda path, x: x[..., interleaved_E] if jax.tree_util.keystr(path).endswith(("['wq_DHE']", "['wk_DKE']"))
      else x, params)
  _export(tmp_path, CFG, permuted)
  tokens = _tokens(CFG.vocab_size)
  ours = _ringlm_logits(CFG, params, tokens)
  diff = float(np.abs(ours - _hf_logits(tmp_path, tokens)).max())
  _report('q/k rows permuted to the interleaved layout (must differ)', diff, ours)
  assert diff > 1e3 * TOL


def _random_llama(tie: bool, seed: int) -> 'transformers.LlamaForCausalLM':
  """transformers' own random Llama (GQA 4/2), with random norm weights."""
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=S,
                                    rms_norm_eps=1e-5, tie_word_embeddings=tie, initializer_range=INIT_STD,
                                    rope_parameters={'rope_type': 'default', 'rope_theta': 20_000.0})
  model = transformers.LlamaForCausalLM(config).float().eval()
  with torch.no_grad():
    for name, w in model.named_parameters():
      if 'norm' in name:
        w.add_(0.5 * torch.randn_like(w))
  return model


def _import(directory, scan_layers: bool = False) -> tuple[ModelConfig, dict]:
  settings = hf_llama.model_settings(hf_llama.read_config(directory))
  cfg = ModelConfig(**settings, scan_layers=scan_layers)
  return cfg, hf_llama.load_params(directory, cfg)


@pytest.mark.parametrize('tie,shard,scan', [(True, False, False), (False, True, True)],
                         ids=['tied', 'untied-sharded-scanned'])
def test_import_of_a_transformers_checkpoint(tie, shard, scan, tmp_path):
  model = _random_llama(tie, seed=1)
  model.save_pretrained(tmp_path, max_shard_size='40KB' if shard else '5GB')
  assert (tmp_path / hf_llama.WEIGHTS_INDEX_FILE).is_file() == shard
  cfg, params = _import(tmp_path, scan_layers=scan)
  assert cfg.tie_embeddings == tie and (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 16)
  tokens = _tokens(cfg.vocab_size, seed=1)
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  ours = _ringlm_logits(cfg, params, tokens)
  diff = float(np.abs(ours - theirs).max())
  _report(f'import tied={tie} sharded={shard} into scan={scan}', diff, ours)
  assert diff < TOL


def test_import_of_a_bfloat16_transformers_checkpoint(tmp_path):
  model = _random_llama(tie=False, seed=2)
  model.to(torch.bfloat16).save_pretrained(tmp_path)
  weights = hf_llama.Weights(tmp_path)
  assert str(weights['model.norm.weight'].dtype) == 'bfloat16'
  weights.close()
  cfg, params = _import(tmp_path)
  tokens = _tokens(cfg.vocab_size, seed=2)
  ours = _ringlm_logits(cfg, params, tokens)
  diff = float(np.abs(ours - _hf_logits(tmp_path, tokens)).max())
  _report('import bfloat16 checkpoint (both sides upcast to float32)', diff, ours)
  assert diff < TOL


def test_round_trip_through_transformers_is_bitwise(tmp_path):
  """export -> transformers load -> save_pretrained -> import gives back ringlm's float32 params exactly."""
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  params = _random_params(cfg)
  _export(tmp_path / 'ours', cfg, params)
  transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'ours', dtype=torch.float32).save_pretrained(
      tmp_path / 'theirs')
  _, back = _import(tmp_path / 'theirs')
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, np.asarray(y))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_safetensors_library_reads_our_files(dtype, tmp_path):
  """The reference reader sees exactly the tensors to_hf gives (rounded once for bfloat16), sharded or not."""
  import safetensors
  cfg = dataclasses.replace(CFG, tie_embeddings=False)
  params = _random_params(cfg)
  hf_llama.save_weights(tmp_path, params, cfg, dtype=dtype, max_shard_bytes=60_000)
  index = json.loads((tmp_path / hf_llama.WEIGHTS_INDEX_FILE).read_text())['weight_map']
  for name, want in hf_llama.to_hf(params, cfg):
    with safetensors.safe_open(tmp_path / index[name], framework='np') as f:
      got = f.get_tensor(name)
    assert str(got.dtype) == dtype
    np.testing.assert_array_equal(got, want.astype(got.dtype))
