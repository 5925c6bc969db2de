"""Probes: they run jitted on the tiny model, score the same tokens in every reading of a probe, and the causal and
prefix readings of the suffix loss equal the causal and prefix-LM objectives restricted to the suffix."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs.sections import ModelConfig
from sharding.mesh import build_mesh
from tests.conftest import typed_mesh
from tests.test_objectives import SPEC, V, packed
from train import loss as loss_lib
from train import params as params_lib
from train import probes
from train import step as step_lib
from train.objectives import causal, prefix_lm

MODEL = ModelConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64)
DOCS = [(6, 7), (4, 10), (9, 5)]  # midpoint splits: prefixes 3, 3 | 2, 5 | 4, 2 -> suffixes 3, 4 | 2, 5 | 5, 3


@pytest.fixture(scope='module')
def run():
  params = params_lib.init(MODEL, 0)
  batch = packed(DOCS, 16)
  token_bytes = np.ones(V, np.int32)
  sums = jax.jit(probes.make_probe_sums(MODEL, SPEC, token_bytes))(params, batch, jax.random.PRNGKey(0))
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


def test_probes_under_ring_attention_read_the_same(run):
  """With ring attention over a sequence axis of 4, each pass's arrays go through the zig-zag layout: the sums are
  the single-device ones (float32, 1e-5), so objectives trained with ring attention compare like the others."""
  params, batch, sums = run
  mesh_cfg = default.get_config().mesh
  mesh_cfg.data, mesh_cfg.sequence = 1, 4
  mesh = build_mesh(typed_mesh(mesh_cfg), jax.devices()[:4])
  ring = dataclasses.replace(MODEL, attention='ring', q_block=2, kv_block=2)
  with jax.set_mesh(mesh):
    probe = probes.make_probe_sums(ring, SPEC, np.ones(V, np.int32),
                                   layout=lambda mb: step_lib.ring_layout(mb, mesh))
    ring_sums = jax.device_get(jax.jit(probe)(params, batch, jax.random.PRNGKey(0)))
  assert set(ring_sums) == set(sums)
  for key, value in sums.items():
    assert float(ring_sums[key]) == pytest.approx(value, rel=1e-5, abs=1e-5), key
