"""--mode=export and checkpoint.init_from_hf without torch: the exported directory's files, shapes and config keys,
export -> import bitwise onto another mesh, an existing sentencepiece model's own ids, one-line errors for bad
input, and end to end: train, export, continue training from the export, kill -9, resume exactly.

That transformers loads the export to the same logits is tests/interop/ (make test-interop).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece as spm

from configs import default
from configs.errors import ConfigError
from configs.validate import validate
from data import hf_tokenizer
from data import tokenizers as tokenizers_lib
from models import hf_llama
from sharding.mesh import build_mesh
from train import params as params_lib
from tests.conftest import ROOT, config_of, run_main, typed
from tests.test_hf_tokenizer import _texts
from tests.test_resume import losses
from train import hf_checkpoint
from train import state as state_lib
from train.runtime import Runtime


def _config(**changes):
  c = default.get_config()
  c.data.tokenizer, c.data.vocab_size = 'byte', tokenizers_lib.ByteTokenizer.vocab_size
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.num_kv_heads = 2, 32, 4, 2
  c.model.d_ff, c.model.rope_theta, c.model.norm_eps, c.data.seq_len = 48, 500_000.0, 1e-5, 32
  c.train.batch_size = 8
  config = typed(c)
  return config.override(changes) if changes else config


def _random_params(config) -> dict:
  """Normal draws for every leaf (not init: norm scales start at one, which would hide a swapped norm)."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), params_lib.shapes(config.model))


def _export(tmp_path: pathlib.Path, config) -> tuple[pathlib.Path, dict, list[str]]:
  params = _random_params(config)
  out = tmp_path / 'hf'
  return out, params, hf_checkpoint.write(out, params, config, tokenizers_lib.ByteTokenizer())


@pytest.mark.parametrize('scan', [False, True])
def test_export_then_import_onto_another_mesh_is_bitwise(scan, tmp_path):
  """Exported from host arrays, imported onto fsdp=2 x tensor=2 x data=2: every leaf equal and on its sharding."""
  config = _config(**{'model.tie_embeddings': False, 'model.scan_layers': scan})
  out, params, _ = _export(tmp_path, config)
  other = config.override({'mesh.fsdp': 2, 'mesh.tensor': 2})
  setup = state_lib.build(other, build_mesh(other.mesh))
  loaded = hf_checkpoint.import_params(str(out), setup)
  for got, want, sharding in zip(jax.tree.leaves(loaded), jax.tree.leaves(params),
                                 jax.tree.leaves(setup.shardings['params']), strict=True):
    assert got.sharding == sharding and got.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_exported_files_shapes_and_config_keys(tmp_path):
  config = _config(**{'model.tie_embeddings': False, 'export.dtype': 'bfloat16', 'export.max_shard_bytes': 20_000})
  out, params, files = _export(tmp_path, config)
  shards = [f for f in files if f.startswith('model-')]
  assert files == ['config.json', 'generation_config.json', *shards, 'model.safetensors.index.json',
                   'tokenizer.json', 'tokenizer_config.json'] and len(shards) > 1
  assert sorted(p.name for p in out.iterdir()) == sorted(files)
  hf = json.loads((out / 'config.json').read_text())
  want = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'vocab_size': 264, 'hidden_size': 32,
          'intermediate_size': 48, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2,
          'head_dim': 8, 'rms_norm_eps': 1e-5, 'rope_theta': 500_000.0, 'tie_word_embeddings': False,
          'max_position_embeddings': 32, 'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 0,
          'torch_dtype': 'bfloat16', 'hidden_act': 'silu'}
  assert {k: hf[k] for k in want} == want
  assert json.loads((out / 'generation_config.json').read_text()) == {'bos_token_id': 1, 'eos_token_id': 2,
                                                                        'pad_token_id': 0}
  weights = hf_llama.Weights(out)
  assert {n: weights.entries[n].shape for n in weights.names} == hf_llama.hf_shapes(config.model)
  assert {weights.entries[n].dtype for n in weights.names} == {np.dtype(ml_dtypes.bfloat16)}
  np.testing.assert_array_equal(  # one tensor spelled out: q_proj is [H * E, D], rows head-major
      weights['model.layers.1.self_attn.q_proj.weight'],
      np.asarray(params['blocks'][1]['attn']['wq_DHE']).reshape(32, 32).T.astype(ml_dtypes.bfloat16))
  tok_config = json.loads((out / 'tokenizer_config.json').read_text())
  assert (tok_config['bos_token'], tok_config['model_max_length']) == ('<s>', 32)


def test_non_causal_export_carries_a_mask_note(tmp_path):
  out, _, files = _export(tmp_path, _config(objective='prefix_lm'))
  assert files[-1] == 'README.md' and 'prefix' in (out / 'README.md').read_text()
  assert 'README.md' not in _export(tmp_path / 'causal', _config())[2]


# ------------------------------------------------------------------------------------------- existing tokenizers


@pytest.fixture(scope='module')
def llama_like_spm(tmp_path_factory) -> pathlib.Path:
  """A sentencepiece model with Llama's special layout: unk 0, bos 1, eos 2, no pad, no mask, dummy prefix, NFKC."""
  path = tmp_path_factory.mktemp('spm') / 'tokenizer.model'
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_texts()[:10]), model_prefix=str(path.with_suffix('')),
                                 vocab_size=512, model_type='bpe', unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                 byte_fallback=True, max_sentence_length=100_000, minloglevel=2)
  return path


def test_existing_sentencepiece_keeps_its_ids(llama_like_spm, corpus, tmp_path):
  config = _config(**{'data.tokenizer': 'sentencepiece', 'data.vocab_size': 512,
                      'data.spm_model_path': str(llama_like_spm), 'data.text_dir': str(corpus),
                      'data.cache_dir': str(tmp_path / 'cache'), 'train.eval_probes': False})
  runtime = Runtime(config, jax.devices()[:1])
  tok = runtime.data(config.data, config.seed).tokenizer
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.has_pad, tok.mask_id, tok.num_special) == (1, 2, 2, False, None, 3)
  rows = runtime.data(config.data, config.seed).train.batch(0, 256)
  tokens, seg = rows['tokens'], rows['segment_ids']
  new_doc = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] != 0)  # a segment starting inside a row is a document start
  assert new_doc.any() and (tokens[:, 1:][new_doc] == 1).all()  # packed as the model's own bos + text + eos
  assert (tokens[:, :-1][new_doc] == 2).all() and (tokens[seg == 0] == 2).all()  # no pad piece: eos pads
  assert (tok.token_bytes[:3] == 0).all() and (tok.token_bytes[3:] > 0).all()
  assert runtime.spec(config).num_special == 3
  with pytest.raises(ConfigError, match=r"^objective='masked_lm': needs a <mask> token"):
    runtime.spec(config.override({'objective': 'masked_lm'}))
  with pytest.raises(ConfigError, match=r'^train.eval_probes=True: needs a <mask> token'):
    runtime.spec(config.override({'train.eval_probes': True}))
  out = tmp_path / 'hf'
  hf_checkpoint.write(out, _random_params(config), config, tok)
  hf = json.loads((out / 'config.json').read_text())
  assert (hf['bos_token_id'], hf['eos_token_id'], hf['pad_token_id']) == (1, 2, None)
  tok_config = json.loads((out / 'tokenizer_config.json').read_text())
  assert (tok_config['bos_token'], tok_config['eos_token'], tok_config['unk_token']) == ('<s>', '</s>', '<unk>')
  assert 'pad_token' not in tok_config and 'mask_token' not in tok_config
  assert (out / hf_tokenizer.SPM_MODEL).read_bytes() == llama_like_spm.read_bytes()


def test_existing_sentencepiece_bad_input(llama_like_spm, tmp_path):
  spm_config = {'data.tokenizer': 'sentencepiece', 'data.spm_model_path': str(llama_like_spm)}
  with pytest.raises(ConfigError, match=r'^data.vocab_size=400: data.spm_model_path=.* has 512 pieces and '
                                        r'data.extra_ids=0; set data.vocab_size=512'):
    validate(_config(**spm_config, **{'data.vocab_size': 400}), 8)
  with pytest.raises(ConfigError, match=r"^data.spm_model_path=.*: is a sentencepiece model, but "
                                        r"data.tokenizer='byte'"):
    _config(**{'data.spm_model_path': str(llama_like_spm)})
  with pytest.raises(ConfigError, match=r'^data.spm_model_path=.*: no such file'):
    _config(**{**spm_config, 'data.spm_model_path': str(tmp_path / 'none.model')})
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(ConfigError, match=r'^data.spm_model_path=.*junk.model.*: not a usable sentencepiece model'):
    validate(_config(**{**spm_config, 'data.vocab_size': 512, 'data.spm_model_path': str(tmp_path / 'junk.model')}),
             8)


# ------------------------------------------------------------------------------------------- bad import sources


def _source_error(config, source: pathlib.Path) -> str:
  with pytest.raises(ConfigError) as e:
    validate(config.override({'checkpoint.init_from_hf': str(source)}), 8)
  message = str(e.value)
  assert '\n' not in message and message.startswith(f"checkpoint.init_from_hf='{source}': ")
  return message.split(': ', 1)[1]


def test_bad_import_sources_are_one_line(tmp_path):
  config = _config()
  out, _, _ = _export(tmp_path, config)
  validate(config.override({'checkpoint.init_from_hf': str(out), 'model.rope_theta': 1e6}), 8)  # may differ
  assert _source_error(config, tmp_path / 'missing').startswith('no readable folder there')
  (tmp_path / 'empty').mkdir()
  assert _source_error(config, tmp_path / 'empty').startswith('no config.json in')
  assert 'd_model=64 vs hidden_size=32' in _source_error(config.override({'model.d_model': 64}), out)
  differ = _source_error(config.override({'model.num_layers': 3, 'model.num_kv_heads': 4}), out)
  assert differ == ('its config.json differs from the model config: model.num_layers=3 vs num_hidden_layers=2; '
                    'model.num_kv_heads=4 vs num_key_value_heads=2; set those keys to its values')

  qwen = tmp_path / 'qwen'
  qwen.mkdir()
  (qwen / 'config.json').write_text(json.dumps({**json.loads((out / 'config.json').read_text()),
                                                'model_type': 'qwen2'}))
  assert "model_type='qwen2'" in _source_error(config, qwen)

  pickled = tmp_path / 'pickled'
  pickled.mkdir()
  (pickled / 'config.json').write_bytes((out / 'config.json').read_bytes())
  (pickled / 'pytorch_model.bin').write_bytes(b'never unpickled')
  assert 'PyTorch pickles (pytorch_model.bin)' in _source_error(config, pickled)
  encdec = config.override({'model.architecture': 'encoder_decoder', 'objective': 'prefix_lm'})
  assert _source_error(encdec, out).startswith('a Llama checkpoint has no encoder')

  wide = tmp_path / 'wide'  # config.json says d_ff 48, the tensors have 64
  _export(wide, config.override({'model.d_ff': 64}))
  (wide / 'hf' / 'config.json').write_bytes((out / 'config.json').read_bytes())
  assert 'model.layers.0.mlp.gate_proj.weight [64, 32] (the model needs [48, 32])' in _source_error(config,
                                                                                                    wide / 'hf')


def test_export_errors_come_before_any_work(tmp_path):
  config = _config()
  runtime = Runtime(config, jax.devices()[:1])
  with pytest.raises(ConfigError, match=r"^--workdir='.*': no checkpoint to export there"):
    hf_checkpoint.export(runtime, config, str(tmp_path / 'empty'))
  (tmp_path / 'hf').mkdir()
  (tmp_path / 'hf' / 'old.txt').write_text('x')
  with pytest.raises(ConfigError, match=r"^export.dir='.*/hf': exists and is not empty"):
    hf_checkpoint.export(runtime, config, str(tmp_path))
  encdec = config.override({'model.architecture': 'encoder_decoder', 'objective': 'prefix_lm'})
  with pytest.raises(ConfigError, match=r"^model.architecture='encoder_decoder': export writes a LlamaForCausalLM"):
    hf_checkpoint.export(runtime, encdec, str(tmp_path))


# ------------------------------------------------------------------------------------------- end to end


def test_train_export_continue_from_it_and_resume_after_kill_9(small_run_flags, tmp_path):
  """main.py as a user runs it. The export holds the checkpoint's params bitwise; a run started from it evaluates
  at step 0 exactly as the source run did at its last step; killed with -9 and resumed, it repeats the run that was
  never stopped, loss for loss and bit for bit."""
  source = tmp_path / 'source'
  run_main(*small_run_flags, f'--workdir={source}', '--config.train.steps=2')
  out = run_main(*small_run_flags, f'--workdir={source}', '--mode=export', '--config.export.max_shard_bytes=400000',
                 '--config.checkpoint.step=2').stdout
  assert f'exported step 2 of {source} to {source / "hf"}' in out
  assert (source / 'hf' / 'model.safetensors.index.json').is_file() and (source / 'hf' / 'tokenizer.model').is_file()
  saved = ocp.StandardCheckpointer().restore(source / 'checkpoints' / '2' / 'state')['params']
  model_cfg = config_of(small_run_flags).model
  for a, b in zip(jax.tree.leaves(hf_llama.load_params(source / 'hf', model_cfg)), jax.tree.leaves(saved),
                  strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))

  args = [*small_run_flags, f'--config.checkpoint.init_from_hf={source / "hf"}', '--config.train.steps=6',
          '--config.train.log_every=1', '--config.train.eval_every=6', '--config.checkpoint.every_steps=1']
  straight = tmp_path / 'straight'
  run_main(*args, f'--workdir={straight}')
  evals = {w: [r for r in _metrics(w) if 'eval/loss' in r] for w in (source, straight)}
  assert evals[straight][0]['step'] == 0
  assert evals[straight][0]['eval/loss'] == pytest.approx(evals[source][-1]['eval/loss'], rel=1e-6)

  resumed = tmp_path / 'resumed'
  assert _kill_after_checkpoint([*args, f'--workdir={resumed}'], resumed / 'checkpoints', step=2) == -9
  assert 'resuming at step' in run_main(*args, f'--workdir={resumed}').stdout
  assert losses(resumed) == losses(straight)
  final = [ocp.StandardCheckpointer().restore(w / 'checkpoints' / '6' / 'state')['params']
           for w in (resumed, straight)]
  for a, b in zip(*map(jax.tree.leaves, final), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _kill_after_checkpoint(args: list[str], checkpoints: pathlib.Path, step: int) -> int:
  """Start main.py and kill -9 it once a finished checkpoint (orbax renames it to its step when complete) of at
  least `step` exists, so the restart must resume; returns the exit code."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline and not any(
      p.name.isdigit() and int(p.name) >= step for p in (checkpoints.iterdir() if checkpoints.is_dir() else ())):
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  return proc.wait(timeout=60)
