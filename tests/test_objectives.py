"""Prefix-LM and masked-LM objectives: exact targets and weights on hand-made packed rows, masking statistics,
document isolation, the prefix-LM information flow through the real model, learning, and config errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from configs.errors import ConfigError
from configs.sections import ModelConfig
from configs.validate import validate
from sharding.mesh import build_mesh
from train import objectives
from train import optimizer as optimizer_lib
from train import params as params_lib
from train import state as state_lib
from train import step as step_lib
from train.objectives import ObjectiveSpec
from tests.conftest import typed

V = 64
SPEC = ObjectiveSpec(vocab_size=V, pad_id=0, mask_id=3, num_special=8)


def packed(doc_lengths: list[tuple[int, int]], seq_len: int, seed: int = 0) -> dict[str, jax.Array]:
  """One row per (len_a, len_b): document 1, document 2, then pads; ordinary tokens only (ids >= 8)."""
  rng = np.random.default_rng(seed)
  rows = len(doc_lengths)
  tokens = rng.integers(8, V, (rows, seq_len)).astype(np.int32)
  seg, pos = np.zeros((rows, seq_len), np.int32), np.zeros((rows, seq_len), np.int32)
  for r, (a, b) in enumerate(doc_lengths):
    assert a + b < seq_len  # at least one pad per row
    seg[r, :a], seg[r, a:a + b] = 1, 2
    pos[r, :a], pos[r, a:a + b] = np.arange(a), np.arange(b)
  tokens[seg == 0] = 0
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(seg), 'positions': jnp.asarray(pos)}


def doc_mask(batch, row: int, segment: int) -> np.ndarray:
  return np.asarray(batch['segment_ids'][row]) == segment


# --- prefix LM -------------------------------------------------------------------------------------------------


def test_prefix_lm_targets_weights_and_prefix_on_hand_made_rows():
  """Fixed fraction 0.5: docs of 6 and 7 tokens get prefixes of 3 and 3 (floor), docs of 4 and 10 get 2 and 5."""
  batch = packed([(6, 7), (4, 10)], 16)
  spec = dataclasses.replace(SPEC, prefix_min_frac=0.5, prefix_max_frac=0.5)
  mb = objectives.get('prefix_lm')(batch, jax.random.PRNGKey(0), spec)
  np.testing.assert_array_equal(mb.inputs, batch['tokens'])
  np.testing.assert_array_equal(mb.targets[:, :-1], batch['tokens'][:, 1:])
  #                    doc 1                 doc 2                       pads
  prefix = np.array([[1, 1, 1, 0, 0, 0] + [1, 1, 1, 0, 0, 0, 0] + [0] * 3,
                     [1, 1, 0, 0] + [1, 1, 1, 1, 1, 0, 0, 0, 0, 0] + [0] * 2], bool)
  weights = np.array([[0, 0, 1, 1, 1, 0] + [0, 0, 1, 1, 1, 1, 0] + [0] * 3,
                      [0, 1, 1, 0] + [0, 0, 0, 0, 1, 1, 1, 1, 1, 0] + [0] * 2], np.float32)
  np.testing.assert_array_equal(mb.mask.bidirectional, prefix)
  np.testing.assert_array_equal(mb.weights, weights)
  np.testing.assert_array_equal(mb.mask.segment_ids, batch['segment_ids'])
  np.testing.assert_array_equal(mb.mask.positions, batch['positions'])


def test_prefix_is_clipped_to_leave_a_prefix_and_a_suffix():
  batch = packed([(2, 5)], 8)
  for lo, hi, want in ((0.0, 0.0, [1, 1]), (1.0, 1.0, [1, 4])):
    spec = dataclasses.replace(SPEC, prefix_min_frac=lo, prefix_max_frac=hi)
    mb = objectives.get('prefix_lm')(batch, jax.random.PRNGKey(0), spec)
    bidi = np.asarray(mb.mask.bidirectional[0])
    assert [int(bidi[doc_mask(batch, 0, s)].sum()) for s in (1, 2)] == want
    assert float(mb.weights[0, doc_mask(batch, 0, 1)].sum()) == 1  # the 2-token doc still scores its 2nd token


def test_prefix_lengths_stay_in_range_and_inside_their_document():
  """Many rows with random document lengths: each prefix is a run from its document's start, of length
  floor(f * n) for some f in the configured range, and suffix weights start exactly at its last token."""
  rng = np.random.default_rng(1)
  lengths = [(int(a), int(b)) for a, b in rng.integers(20, 60, (400, 2))]
  batch = packed(lengths, 128)
  lo, hi = 0.2, 0.6
  spec = dataclasses.replace(SPEC, prefix_min_frac=lo, prefix_max_frac=hi)
  mb = jax.jit(objectives.get('prefix_lm'), static_argnums=2)(batch, jax.random.PRNGKey(3), spec)
  bidi, weights = np.asarray(mb.mask.bidirectional), np.asarray(mb.weights)
  assert not bidi[np.asarray(batch['segment_ids']) == 0].any()
  fracs = []
  for r, (a, b) in enumerate(lengths):
    for seg, n in ((1, a), (2, b)):
      in_doc = doc_mask(batch, r, seg)
      k = int(bidi[r, in_doc].sum())
      assert np.floor(lo * n) <= k <= np.floor(hi * n), (r, seg, n, k)
      expect_bidi = np.arange(n) < k
      np.testing.assert_array_equal(bidi[r, in_doc], expect_bidi)
      expect_w = (np.arange(n) >= k - 1) & (np.arange(n) < n - 1)
      np.testing.assert_array_equal(weights[r, in_doc], expect_w)
      fracs.append(k / n)
  fracs = np.array(fracs)
  # Draws cover the range (uniform on [0.2, 0.6]: mean 0.4, both ends reached) and documents draw independently.
  assert fracs.min() < lo + 0.03 and fracs.max() > hi - 0.05 and abs(fracs.mean() - 0.4) < 0.02
  assert np.corrcoef(fracs[0::2], fracs[1::2])[0, 1] < 0.2


def test_prefix_draws_follow_the_rng():
  batch = packed([(30, 40)] * 8, 80)
  make = objectives.get('prefix_lm')
  a = make(batch, jax.random.PRNGKey(0), SPEC).mask.bidirectional
  np.testing.assert_array_equal(a, make(batch, jax.random.PRNGKey(0), SPEC).mask.bidirectional)
  assert not np.array_equal(a, make(batch, jax.random.PRNGKey(1), SPEC).mask.bidirectional)


# --- masked LM -------------------------------------------------------------------------------------------------


def test_masked_lm_targets_weights_and_mask_on_hand_made_rows():
  batch = packed([(6, 7), (4, 10)], 16)
  mb = objectives.get('masked_lm')(batch, jax.random.PRNGKey(0), dataclasses.replace(SPEC, mask_rate=0.5))
  real = np.asarray(batch['segment_ids']) != 0
  chosen = np.asarray(mb.weights) == 1
  np.testing.assert_array_equal(mb.targets, batch['tokens'])
  np.testing.assert_array_equal(mb.mask.bidirectional, real)
  assert set(np.unique(mb.weights)) <= {0.0, 1.0} and chosen.any() and not chosen[~real].any()
  inputs, tokens = np.asarray(mb.inputs), np.asarray(batch['tokens'])
  np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])  # unchosen tokens and pads pass through
  assert (inputs[chosen] == SPEC.mask_id).any()


def test_masked_lm_rates_are_within_binomial_bounds():
  """15% of real tokens chosen; of those 80% [MASK], 10% random ordinary token, 10% kept (3 sigma each)."""
  rng = np.random.default_rng(2)
  lengths = [(int(a), int(b)) for a, b in rng.integers(10, 60, (512, 2))]
  batch = packed(lengths, 128)
  vocab = 1000
  spec = dataclasses.replace(SPEC, vocab_size=vocab)
  batch['tokens'] = jnp.where(batch['segment_ids'] != 0, batch['tokens'] + 500, 0)  # originals span [508, 564)
  mb = jax.jit(objectives.get('masked_lm'), static_argnums=2)(batch, jax.random.PRNGKey(5), spec)
  real = np.asarray(batch['segment_ids']) != 0
  chosen = np.asarray(mb.weights) == 1
  assert not chosen[~real].any()
  inputs, tokens = np.asarray(mb.inputs)[chosen], np.asarray(batch['tokens'])[chosen]

  def within_3_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 3 * np.sqrt(n * p * (1 - p))

  n_real, n_chosen = int(real.sum()), int(chosen.sum())
  assert within_3_sigma(n_chosen, n_real, 0.15), (n_chosen, n_real)
  masked = inputs == spec.mask_id
  kept = inputs == tokens
  replaced = ~masked & ~kept
  p_same = 1 / (vocab - spec.num_special)  # a random draw may equal the original
  assert within_3_sigma(int(masked.sum()), n_chosen, 0.8)
  assert within_3_sigma(int(replaced.sum()), n_chosen, 0.1 * (1 - p_same))
  assert within_3_sigma(int(kept.sum()), n_chosen, 0.1 + 0.1 * p_same)
  random_ids = inputs[replaced]
  assert random_ids.min() >= spec.num_special and random_ids.max() < vocab
  assert (random_ids < 500).mean() > 0.3  # drawn from the whole vocabulary, not near the originals


# --- through the model -----------------------------------------------------------------------------------------


MODEL = ModelConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64)


def test_prefix_lm_information_flow_through_the_model():
  """Prefix queries see later prefix tokens; suffix logits at t ignore suffix tokens after t; docs stay apart."""
  batch = packed([(10, 12)] * 2, 24)
  spec = dataclasses.replace(SPEC, prefix_min_frac=0.5, prefix_max_frac=0.5)  # prefixes: offsets 0..4 and 10..15
  mb = objectives.get('prefix_lm')(batch, jax.random.PRNGKey(0), spec)
  assert np.asarray(mb.mask.bidirectional[0]).nonzero()[0].tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15]
  params = params_lib.init(MODEL, 0)
  logits = jax.jit(lambda tokens, mask: params_lib.apply(MODEL, params)(tokens, mask))

  def with_token(t: int):
    return logits(mb.inputs.at[:, t].set((mb.inputs[:, t] + 1 - 8) % (V - 8) + 8), mb.mask)

  base = logits(mb.inputs, mb.mask)
  out = with_token(4)  # the last prefix token of doc 1
  assert not np.allclose(out[:, 0], base[:, 0])  # the first token sees it
  np.testing.assert_array_equal(out[:, 10:], base[:, 10:])  # doc 2 does not
  out = with_token(7)  # a suffix token of doc 1
  np.testing.assert_array_equal(out[:, :7], base[:, :7])  # prefix and earlier suffix positions ignore it
  assert not np.allclose(out[:, 7:10], base[:, 7:10])
  np.testing.assert_array_equal(out[:, 10:], base[:, 10:])
  out = with_token(18)  # a suffix token of doc 2
  np.testing.assert_array_equal(out[:, :18], base[:, :18])


@pytest.mark.parametrize('objective', ['prefix_lm', 'masked_lm'])
def test_train_step_lowers_the_objective_loss_on_a_fixed_batch(objective):
  """Each document repeats one token, so both objectives can learn to copy from context within a few steps."""
  B, S, steps = 8, 32, 20
  config = tiny.get_config()
  config.model.num_layers, config.model.d_model, config.model.num_heads, config.model.num_kv_heads = 2, 32, 4, 2
  config.model.d_ff, config.data.vocab_size, config.data.seq_len = 64, V, S
  config.train.batch_size, config.train.steps, config.train.warmup_steps = B, steps, 0
  config.train.learning_rate, config.mesh.data, config.objective = 1e-2, 1, objective
  config = typed(config)
  mesh = build_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.build(config, mesh)
  spec = ObjectiveSpec.from_config(config.objectives, vocab_size=V, pad_id=0, mask_id=3, num_special=8)
  step = step_lib.make_train_step(setup, mesh, objective, spec, np.ones(V, np.int32),
                                  optimizer_lib.learning_rate_schedule(config.train))
  rng = np.random.default_rng(0)
  batch = {k: np.asarray(v) for k, v in packed([(int(a), int(b)) for a, b in rng.integers(5, 16, (B, 2))], S).items()}
  doc_token = 8 + (rng.integers(0, V - 8, (B, 1)) + 7 * batch['segment_ids']) % (V - 8)
  batch['tokens'] = np.where(batch['segment_ids'] != 0, doc_token, 0).astype(np.int32)
  state, losses = setup.init(), []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics['train/loss']))
  # The objectives draw new noise each step, so compare averages of the first and last five steps.
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


# --- config errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('key, value', [
    ('mask_rate', 0.0), ('mask_rate', 1.0), ('mask_rate', -0.1),
    ('prefix_min_frac', 0.7),  # inverted: above prefix_max_frac=0.5
    ('prefix_max_frac', 1.5),
    ('prefix_min_frac', -0.1),
])
def test_bad_objective_settings_are_config_errors(key, value):
  config = tiny.get_config()
  config.objective = 'masked_lm' if key == 'mask_rate' else 'prefix_lm'
  config.objectives.prefix_max_frac = 0.5
  validate(typed(config), 1)
  config.objectives[key] = value
  with pytest.raises(ConfigError) as err:
    validate(typed(config), 1)
  assert err.value.key == f'objectives.{key}' and '\n' not in str(err.value)


@pytest.mark.parametrize('lo, hi, key', [(0.0, 0.0, 'prefix_max_frac'), (1.0, 1.0, 'prefix_min_frac')])
def test_empty_prefix_ranges_are_config_errors(lo, hi, key):
  config = tiny.get_config()
  config.objectives.prefix_min_frac, config.objectives.prefix_max_frac = lo, hi
  with pytest.raises(ConfigError, match='empty range') as err:
    validate(typed(config), 1)
  assert err.value.key == f'objectives.{key}'
