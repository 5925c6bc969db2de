"""The encoder-decoder end to end: config errors, the same corrupted examples as the decoder through the train step's
batch building, training on 8 fake devices (vanilla, ring) equal to one device, main.py train / eval (with the
shared probes) / sample / estimate, and exact resume after kill -9."""

import functools
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.errors import ConfigError
from configs.validate import validate
from sharding import rules
from sharding.mesh import build_mesh
from tests.conftest import run_main, typed
from tests.test_cli import read_metrics
from tests.test_encoder_decoder import packed_batch
from tests.test_config import cfg
from tests.test_resume import interrupt, losses
from tests.test_sharding import config_for, packed_batches
from train import flops as flops_lib
from train import optimizer as optimizer_lib
from train import params as params_lib
from train import probes
from train import state as state_lib
from train import step as step_lib
from train.objectives import ObjectiveSpec

ENC_DEC = {'objective': 'prefix_lm', 'model.architecture': 'encoder_decoder'}


@pytest.mark.parametrize('key, value, extra', [
    ('model.architecture', 'seq2seq', {}),
    ('objective', 'causal', {'model.architecture': 'encoder_decoder'}),
    ('objective', 'masked_lm', {'model.architecture': 'encoder_decoder'}),
    ('model.num_encoder_layers', 0, ENC_DEC),
    ('model.num_decoder_layers', -1, ENC_DEC),
])
def test_bad_values_name_their_key(key, value, extra):
  with pytest.raises(ConfigError) as err:
    validate(typed(cfg(**extra, **{key: value})), 1)
  assert err.value.key == key and '\n' not in str(err.value)


def test_param_count_matches_the_model():
  for overrides in ({}, {'model.share_embeddings': False, 'model.tie_embeddings': False}):
    model = typed(cfg(**ENC_DEC, **overrides)).model
    counts = flops_lib.count_params(model)
    assert counts['total'] == params_lib.count(params_lib.shapes(model))


@functools.cache
def _fresh(architecture: str) -> tuple:
  """(config, mesh, fresh state) of a small tiny-derived model with 100 extra ids, seed 0."""
  config = typed(cfg(**{'model.architecture': architecture, 'data.extra_ids': 100, 'model.d_model': 32,
                        'model.d_ff': 64, 'model.num_layers': 1, 'model.num_encoder_layers': 1,
                        'model.num_decoder_layers': 1}))
  mesh = build_mesh(config.mesh, jax.devices()[:1])
  return config, mesh, state_lib.build(config, mesh).init()


def _step_batch(objective: str, architecture: str, step: int):
  """The objective's batch at `step` as the train step builds it for `architecture`: the fresh state's key at that
  step (step_rng) through objective_batch, on rows of two documents of 3 to 250 tokens."""
  config, mesh, state = _fresh(architecture)
  spec = ObjectiveSpec(vocab_size=config.data.vocab_size, pad_id=0, mask_id=3, num_special=8, extra_ids=100)
  make_batch = step_lib.objective_batch(objective, mesh, config.model)
  return make_batch(packed_batch(seed=1, rows=4, seq_len=256), step_lib.step_rng({**state, 'step': step}), spec)


@pytest.mark.parametrize('objective', ['span_corruption', 'ul2'])
def test_both_architectures_see_the_same_corrupted_example(objective):
  """Same seed, same step: per document the encoder reads exactly the decoder's bidirectional inputs (sentinels and
  mode tokens included), the decoder predicts exactly the decoder's scored targets with the same weights, reading
  the start token and then those targets. Another step draws other noise, so the equality is not vacuous."""
  decoder, enc_dec = (_step_batch(objective, arch, step=3) for arch in ('decoder', 'encoder_decoder'))
  sentinels = 0
  for r in range(4):
    for d in (1, 2):
      doc = np.asarray(decoder.mask.segment_ids[r]) == d
      inputs_part = doc & np.asarray(decoder.mask.bidirectional[r])
      scored = doc & (np.asarray(decoder.weights[r]) > 0)
      enc_doc = np.asarray(enc_dec.encoder_mask.segment_ids[r]) == d
      dec_doc = np.asarray(enc_dec.mask.segment_ids[r]) == d
      dec_scored = dec_doc & (np.asarray(enc_dec.weights[r]) > 0)
      np.testing.assert_array_equal(np.asarray(enc_dec.encoder_inputs[r])[enc_doc],
                                    np.asarray(decoder.inputs[r])[inputs_part])
      np.testing.assert_array_equal(np.asarray(enc_dec.targets[r])[dec_scored], np.asarray(decoder.targets[r])[scored])
      np.testing.assert_array_equal(np.asarray(enc_dec.weights[r])[dec_scored], np.asarray(decoder.weights[r])[scored])
      targets = np.asarray(decoder.targets[r])[scored]
      np.testing.assert_array_equal(np.asarray(enc_dec.inputs[r])[dec_doc], np.concatenate([[0], targets[:-1]]))
      sentinels += int((np.asarray(decoder.inputs[r])[inputs_part] >= 2048 - 100).sum())
  assert sentinels >= 8  # every document of these rows is corrupted
  other = _step_batch(objective, 'decoder', step=4)
  assert not np.array_equal(np.asarray(other.inputs), np.asarray(decoder.inputs))


def _train_losses(config, devices) -> list[float]:
  config = typed(config)
  mesh = build_mesh(config.mesh, devices)
  setup = state_lib.build(config, mesh)
  spec = ObjectiveSpec(vocab_size=config.data.vocab_size, pad_id=0, mask_id=3, num_special=8)
  with jax.set_mesh(mesh), rules.use(config.mesh.logical_rules):
    step = step_lib.make_train_step(setup, mesh, 'prefix_lm', spec, np.ones(config.data.vocab_size, np.int32),
                                    optimizer_lib.learning_rate_schedule(config.train))
    state, out = setup.init(), []
    for batch in packed_batches(config.data.vocab_size):
      state, metrics = step(state, batch)
      out.append(float(metrics['train/loss']))
  return out


def _encdec(mesh: dict):
  c = config_for(mesh)
  c.objective, c.model.architecture = 'prefix_lm', 'encoder_decoder'
  c.model.num_encoder_layers = c.model.num_decoder_layers = 1
  c.train.warmup_steps, c.train.learning_rate = 0, 3e-3  # weights move from step 1 and the loss falls: equal
  # losses mean equal updates
  return c


@pytest.fixture(scope='module')
def reference():
  return _train_losses(_encdec({}), jax.devices()[:1])


@pytest.mark.parametrize('mesh', [dict(data=2, fsdp=2, tensor=2), dict(data=2, sequence=4)])
def test_8_devices_give_single_device_losses(mesh, reference):
  """Three prefix-LM training steps of a packed batch: vanilla on data x fsdp x tensor, and ring on data x sequence
  (encoder and decoder self-attention and cross-attention over the ring), equal one device within 1e-5."""
  assert reference[-1] < reference[0]
  np.testing.assert_allclose(_train_losses(_encdec(mesh), jax.devices()), reference, rtol=1e-5)


STEPS = 12


def _flags(small_run_flags, workdir, *extra) -> list[str]:
  return [*small_run_flags, f'--workdir={workdir}', '--config.objective=prefix_lm',
          '--config.model.architecture=encoder_decoder', '--config.model.num_encoder_layers=1',
          '--config.model.num_decoder_layers=1', f'--config.train.steps={STEPS}', '--config.train.log_every=1',
          '--config.train.eval_every=0', '--config.checkpoint.every_steps=1', *extra]


@pytest.fixture(scope='module')
def straight(small_run_flags, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('encdec_straight')
  run_main(*_flags(small_run_flags, workdir))
  return workdir


def test_train_eval_sample_and_estimate(small_run_flags, straight):
  trained = losses(straight)
  assert sorted(trained) == list(range(1, STEPS + 1)) and trained[STEPS] < trained[1]
  evaluated = [r for r in read_metrics(straight) if 'eval/loss' in r][-1]  # its own loss and the shared probes
  assert evaluated['step'] == STEPS
  assert all(np.isfinite(evaluated[f'probe/{p}/bits_per_byte']) for p in probes.READINGS)
  out = run_main(*_flags(small_run_flags, straight, '--mode=sample', '--config.sample.prompt=def f(x):',
                         '--config.sample.max_new_tokens=8')).stdout
  assert out.count('def f(x):') == 2, out  # each sample shows its prompt (the encoder's input), then the decoder's
  out = run_main(*_flags(small_run_flags, straight, '--mode=estimate')).stdout
  assert 'flops_per_token' in out and 'memory_per_device_bytes' in out


def test_kill_9_resumes_exactly(small_run_flags, straight, tmp_path):
  workdir = tmp_path / 'run'
  args = _flags(small_run_flags, workdir)
  proc = interrupt(args, workdir, signal.SIGKILL, after_step=5)
  assert proc.returncode == -signal.SIGKILL
  run_main(*args)
  assert losses(workdir) == losses(straight)
  for a, b in zip(_final_params(workdir), _final_params(straight), strict=True):
    np.testing.assert_array_equal(a, b)


def _final_params(workdir) -> list[np.ndarray]:
  state = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(STEPS) / 'state')
  return [np.asarray(x) for x in jax.tree.leaves(state['params'])]
