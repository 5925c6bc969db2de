"""Probes: they run jitted on the tiny model, score the same tokens in every reading of a probe, and the causal and
prefix readings of the suffix loss equal the causal and prefix-LM objectives restricted to the suffix. The
encoder-decoder's readings score the decoder's tokens and equal hand-built encoder and decoder rows. Both
architectures read the same under ring attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs.sections import ModelConfig
from models.attention import AttentionMask
from sharding.mesh import build_mesh
from tests.conftest import typed_mesh
from tests.test_objectives import SPEC, V, packed
from train import loss as loss_lib
from train import params as params_lib
from train import probes
from train import step as step_lib
from train.objectives import causal, prefix_lm
from train.objectives.encoder_decoder import EncoderDecoderBatch

MODEL = ModelConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64)
DOCS = [(6, 7), (4, 10), (9, 5)]  # midpoint splits: prefixes 3, 3 | 2, 5 | 4, 2 -> suffixes 3, 4 | 2, 5 | 5, 3
TOKEN_BYTES = 1 + np.arange(V, dtype=np.int32) % 4  # unequal, so equal byte sums mean the same target tokens


@pytest.fixture(scope='module')
def run():
  params = params_lib.init(MODEL, 0)
  batch = packed(DOCS, 16)
  sums = jax.jit(probes.make_probe_sums(MODEL, SPEC, TOKEN_BYTES))(params, batch, jax.random.PRNGKey(0))
  return params, batch, {k: float(v) for k, v in sums.items()}


@jax.jit
def _objective_sums(params, mb, weights):
  model = params_lib.apply(MODEL, params)
  h = model.hidden(mb.inputs, mb.mask)
  return loss_lib.loss_sums(h, model.head_weights_DV(), mb.targets, weights, jnp.ones(V, jnp.int32))


def test_every_reading_of_a_probe_scores_the_same_tokens(run):
  _, _, sums = run
  n_suffix = 3 + 4 + 2 + 5 + 5 + 3
  for name in ('suffix_causal', 'suffix_prefix', 'suffix_masked'):
    assert sums[f'{name}/weight'] == n_suffix
  assert sums['cloze_causal/weight'] == sums['cloze_bidirectional/weight'] > 0
  assert all(np.isfinite(v) for v in sums.values())
  summary = probes.summarize(sums)
  assert set(summary) == {f'probe/{r}/{m}' for r in probes.READINGS
                          for m in ('loss', 'perplexity', 'accuracy', 'bits_per_byte')}


def test_causal_reading_is_the_causal_loss_on_suffix_tokens(run):
  params, batch, sums = run
  mb = causal.make_batch(batch, jax.random.PRNGKey(0), SPEC)
  in_suffix = np.zeros((len(DOCS), 16), np.float32)  # position t scores token t + 1: from the last prefix token on
  for r, (a, b) in enumerate(DOCS):
    in_suffix[r, a // 2 - 1:a - 1] = 1
    in_suffix[r, a + b // 2 - 1:a + b - 1] = 1
  expected = _objective_sums(params, mb, mb.weights * in_suffix)
  assert float(expected['weight']) == sums['suffix_causal/weight']
  assert float(expected['loss']) == pytest.approx(sums['suffix_causal/loss'], rel=1e-5)


def test_prefix_reading_is_the_prefix_lm_loss_at_the_midpoint(run):
  params, batch, sums = run
  spec = dataclasses.replace(SPEC, prefix_min_frac=0.5, prefix_max_frac=0.5)
  mb = prefix_lm.make_batch(batch, jax.random.PRNGKey(1), spec)
  expected = _objective_sums(params, mb, mb.weights)
  assert float(expected['loss']) == pytest.approx(sums['suffix_prefix/loss'], rel=1e-5)
  assert abs(float(expected['loss']) - sums['suffix_causal/loss']) > 0.01  # the prefix mask matters


def _ring_probe(cfg: ModelConfig, params, batch) -> dict[str, float]:
  """The probe sums of cfg under ring attention over a sequence axis of 4."""
  mesh_cfg = default.get_config().mesh
  mesh_cfg.data, mesh_cfg.sequence = 1, 4
  mesh = build_mesh(typed_mesh(mesh_cfg), jax.devices()[:4])
  ring = dataclasses.replace(cfg, attention='ring', q_block=2, kv_block=2)
  with jax.set_mesh(mesh):
    probe = probes.make_probe_sums(ring, SPEC, TOKEN_BYTES, layout=lambda mb: step_lib.ring_layout(mb, mesh))
    return {k: float(v) for k, v in jax.device_get(jax.jit(probe)(params, batch, jax.random.PRNGKey(0))).items()}


def test_probes_under_ring_attention_read_the_same(run):
  """With ring attention over a sequence axis of 4, each pass's arrays go through the zig-zag layout: the sums are
  the single-device ones (float32, 1e-5), so objectives trained with ring attention compare like the others."""
  params, batch, sums = run
  ring_sums = _ring_probe(MODEL, params, batch)
  assert set(ring_sums) == set(sums)
  for key, value in sums.items():
    assert ring_sums[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


# --- the encoder-decoder's readings ----------------------------------------------------------------------------

ENC_DEC = dataclasses.replace(MODEL, architecture='encoder_decoder', num_encoder_layers=1, num_decoder_layers=1,
                              init_std=0.3)  # a large init: the loss depends visibly on every input token


def _probe(cfg: ModelConfig, params, batch, **kwargs) -> dict[str, float]:
  sums = jax.jit(probes.make_probe_sums(cfg, SPEC, TOKEN_BYTES, **kwargs))(params, batch, jax.random.PRNGKey(0))
  return {k: float(v) for k, v in sums.items()}


@pytest.fixture(scope='module')
def enc_dec_run(run):
  """The encoder-decoder's params and probe sums on the decoder fixture's batch."""
  params = params_lib.init(ENC_DEC, 0)
  return params, _probe(ENC_DEC, params, run[1])


def test_encoder_decoder_readings_score_the_decoders_tokens(run, enc_dec_run):
  """On the same batch and key each reading scores the same (document, target token) sequence, row by row, for both
  architectures; the probe's weight and byte sums agree, and every encoder-decoder sum is finite."""
  _, batch, decoder = run
  passes = {arch: {name: mb for p in probes.probe_batches(batch, jax.random.PRNGKey(0), SPEC, arch) for name, mb
                   in p.items()} for arch in ('decoder', 'encoder_decoder')}
  assert list(passes['decoder']) == list(passes['encoder_decoder'])
  assert set(passes['decoder']) == set(probes.READINGS)
  for name, dec in passes['decoder'].items():
    enc_dec = passes['encoder_decoder'][name]
    for r in range(len(DOCS)):
      want, got = np.asarray(dec.weights[r]) > 0, np.asarray(enc_dec.weights[r]) > 0
      for field in ('targets', 'weights'):
        np.testing.assert_array_equal(np.asarray(getattr(enc_dec, field)[r])[got],
                                      np.asarray(getattr(dec, field)[r])[want], err_msg=f'{name} {field}')
      np.testing.assert_array_equal(np.asarray(enc_dec.mask.segment_ids[r])[got],
                                    np.asarray(dec.mask.segment_ids[r])[want], err_msg=name)
  enc_dec = enc_dec_run[1]
  assert set(enc_dec) == set(decoder) and all(np.isfinite(v) for v in enc_dec.values())
  for name in probes.READINGS:
    assert enc_dec[f'{name}/weight'] == decoder[f'{name}/weight'] > 0
    assert enc_dec[f'{name}/bytes'] == decoder[f'{name}/bytes']


def _encdec_batch(enc_tokens, enc_segments, dec_tokens, dec_segments, targets, weights) -> EncoderDecoderBatch:
  """A one-row encoder-decoder batch written out by hand (rows padded to 12): positions restart per document, the
  encoder bidirectional, the decoder causal."""
  def row(values, fill=0):
    return jnp.asarray([list(values) + [fill] * (12 - len(values))], jnp.int32)

  def mask(segments, bidirectional):
    positions = [sum(1 for s in segments[:i] if s == segments[i]) for i in range(len(segments))]
    return AttentionMask(row(segments), row(positions), jnp.full((1, 12), bidirectional))

  return EncoderDecoderBatch(row(enc_tokens), mask(enc_segments, True), row(dec_tokens), mask(dec_segments, False),
                             row(targets), row(weights).astype(jnp.float32))


@jax.jit
def _encdec_sums(params, mb: EncoderDecoderBatch):
  model = params_lib.apply(ENC_DEC, params)
  return loss_lib.loss_sums(step_lib.hidden(model, mb), model.head_weights_DV(), mb.targets, mb.weights,
                            jnp.asarray(TOKEN_BYTES))


def test_encoder_decoder_readings_equal_hand_built_batches():
  """Documents x0..x5 (10..15) and u0..u3 (20..23), split at 3 and 2, every token with a left neighbour in the
  cloze (cloze_rate 1): each reading's loss is the model's on the encoder and decoder rows written out by hand.
  Teacher forcing the masked reading (the true previous targets as decoder inputs) would change its loss."""
  tokens = [10, 11, 12, 13, 14, 15, 20, 21, 22, 23]
  segments = [1] * 6 + [2] * 4
  batch = {'tokens': jnp.asarray([tokens + [0, 0]], jnp.int32), 'segment_ids': jnp.asarray([segments + [0, 0]]),
           'positions': jnp.asarray([list(range(6)) + list(range(4)) + [0, 0]])}
  params = params_lib.init(ENC_DEC, 0)
  sums = _probe(ENC_DEC, params, batch, cloze_rate=1.0)
  M, causal_dec, causal_seg = SPEC.mask_id, tokens[:5] + tokens[6:9], [1] * 5 + [2] * 3
  causal_targets = tokens[1:6] + tokens[7:]
  suffix_targets, suffix_seg = [13, 14, 15, 22, 23], [1, 1, 1, 2, 2]
  hand = {
      'suffix_causal': _encdec_batch([], [], causal_dec, causal_seg, causal_targets, [0, 0, 1, 1, 1, 0, 1, 1]),
      'cloze_causal': _encdec_batch([], [], causal_dec, causal_seg, causal_targets, [1] * 8),
      'suffix_prefix': _encdec_batch([10, 11, 12, 20, 21], suffix_seg, [0, 13, 14, 0, 22], suffix_seg,
                                     suffix_targets, [1] * 5),
      'suffix_masked': _encdec_batch([10, 11, 12, M, M, M, 20, 21, M, M], segments, [M] * 5, suffix_seg,
                                     suffix_targets, [1] * 5),
      'cloze_bidirectional': _encdec_batch([10, M, M, M, M, M, 20, M, M, M], segments, [M] * 8, causal_seg,
                                           causal_targets, [1] * 8),
  }
  for name, mb in hand.items():
    expected = _encdec_sums(params, mb)
    assert sums[f'{name}/weight'] == float(expected['weight']), name
    assert sums[f'{name}/loss'] == pytest.approx(float(expected['loss']), rel=1e-5), name
  forced = dataclasses.replace(hand['suffix_masked'], inputs=hand['suffix_prefix'].inputs)
  assert abs(float(_encdec_sums(params, forced)['loss']) - sums['suffix_masked/loss']) > 0.05


def test_encoder_decoder_probes_under_ring_attention_read_the_same(run, enc_dec_run):
  """The encoder-decoder's readings in zig-zag layout on a ring of 4 (self- and cross-attention) equal vanilla's."""
  params, sums = enc_dec_run
  ring_sums = _ring_probe(ENC_DEC, params, run[1])
  assert set(ring_sums) == set(sums)
  for key, value in sums.items():
    assert ring_sums[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
