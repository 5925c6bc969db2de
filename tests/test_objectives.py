"""Prefix-LM, masked-LM, span-corruption and UL2 objectives: exact targets and weights on hand-made packed rows,
masking and span statistics, reconstruction of every corrupted document, document isolation, the information flow
through the real model, learning, and config errors."""

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


# --- span corruption and UL2 ------------------------------------------------------------------------------------

E = 16  # extra ids: sentinels V-1 .. V-16; text ids stay below V - E
SPAN_SPEC = dataclasses.replace(SPEC, extra_ids=E)
MIXTURE = (('R', 3.0, 0.15, 1.0), ('S', 0.0, 0.0, 2.0), ('X', 12.0, 0.5, 1.0))
MODE_OF = {5: 'R', 6: 'S', 7: 'X'}


def text_rows(doc_lengths: list[tuple[int, int]], seq_len: int, seed: int = 0) -> dict[str, jax.Array]:
  """`packed` rows with text ids below the sentinels: [8, V - E)."""
  batch = packed(doc_lengths, seq_len, seed)
  batch['tokens'] = jnp.where(batch['segment_ids'] != 0, 8 + (batch['tokens'] - 8) % (V - E - 8), 0)
  return batch


def span_counts(n: int, density: float, mean_span: float, lead: int = 0) -> tuple[int, int]:
  """(spans s, source tokens n') of a document of n slots: the module docstring's rule, in plain Python."""
  s = min(max(round(density * (n - lead) / (mean_span + 2 * density)), 1), E, (n - lead) // 4)
  return s, n - lead - 2 * s


def read_document(out: np.ndarray, bidi: np.ndarray, lead: int) -> tuple[list[int], list[list[int]]]:
  """Checks one corrupted document is well formed and decodes it: (the source tokens, the noise spans).

  inputs = [mode] kept run, <0>, kept run, <1>, ..., <s-1> (bidirectional); targets = <0> span, <1> span, ...;
  sentinels count down from V - 1 in both, every run and span non-empty."""
  k = int(bidi.sum())
  assert bidi[:k].all() and not bidi[k:].any()  # inputs first, then targets, contiguous
  inputs, targets = out[lead:k].tolist(), out[k:].tolist()
  sentinel = lambda t: t >= V - E
  in_sentinels, out_sentinels = [t for t in inputs if sentinel(t)], [t for t in targets if sentinel(t)]
  assert in_sentinels == out_sentinels == [V - 1 - i for i in range(len(in_sentinels))] and in_sentinels
  assert not sentinel(inputs[0]) and sentinel(inputs[-1]) and sentinel(targets[0]) and not sentinel(targets[-1])
  assert not any(sentinel(a) and sentinel(b) for a, b in zip(inputs, inputs[1:]))
  assert not any(sentinel(a) and sentinel(b) for a, b in zip(targets, targets[1:]))
  spans = []
  for t in targets:
    if sentinel(t):
      spans.append([])
    else:
      spans[-1].append(t)
  source = []
  for t in inputs:
    source.extend(spans[V - 1 - t] if sentinel(t) else [t])
  return source, spans


def documents(batch, mb) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """Per original document piece: (its tokens, then the objective's tokens, bidirectional, weights, segment ids in
  its slots)."""
  seg = np.asarray(batch['segment_ids'])
  arrays = [np.asarray(a) for a in (batch['tokens'], mb.inputs, mb.mask.bidirectional, mb.weights,
                                    mb.mask.segment_ids)]
  return [tuple(a[r, seg[r] == d] for a in arrays) for r in range(seg.shape[0]) for d in np.unique(seg[r]) if d]


def check_scoring(bidi: np.ndarray, weights: np.ndarray) -> None:
  """Weight 1 exactly where the next token is a target: the last input slot to the second-to-last slot."""
  k, n = int(bidi.sum()), len(bidi)
  np.testing.assert_array_equal(weights, (np.arange(n) >= k - 1) & (np.arange(n) < n - 1))


def test_span_corruption_reconstructs_every_document_in_its_own_slots():
  """Every document decodes back to its first n' = n - 2 s tokens (the fit rule: the corrupted form fills the
  document's n slots exactly), with s and m = |noise| from the documented counts; pieces under 4 become padding;
  segments and positions stay; the same key gives the same example, another key another."""
  rng = np.random.default_rng(4)
  lengths = [(int(a), int(b)) for a, b in rng.integers(1, 60, (300, 2))]
  batch = text_rows(lengths, 128)
  spec = dataclasses.replace(SPAN_SPEC, noise_density=0.3, mean_span_length=4.0)
  make = jax.jit(objectives.get('span_corruption'), static_argnums=2)
  mb = make(batch, jax.random.PRNGKey(0), spec)
  padded = 0
  for tokens, out, bidi, weights, seg in documents(batch, mb):
    n = len(tokens)
    if n < 4:
      assert not seg.any() and not weights.any() and not bidi.any() and (out == 0).all()
      padded += 1
      continue
    assert (seg == seg[0]).all() and seg[0] != 0
    source, spans = read_document(out, bidi, lead=0)
    s, source_len = span_counts(n, 0.3, 4.0)
    assert len(spans) == s and source == tokens[:source_len].tolist()
    m = sum(map(len, spans))
    assert m == min(max(round(0.3 * source_len), s), source_len - s)
    check_scoring(bidi, weights)
  assert padded > 0
  np.testing.assert_array_equal(mb.mask.positions, np.where(np.asarray(mb.mask.segment_ids) != 0,
                                                            batch['positions'], 0))
  np.testing.assert_array_equal(make(batch, jax.random.PRNGKey(0), spec).inputs, mb.inputs)
  assert not np.array_equal(make(batch, jax.random.PRNGKey(1), spec).inputs, mb.inputs)


def test_span_corruption_spans_are_uniform_random_compositions():
  """2000 documents of 60 tokens at density 0.3, mean span 4: s = 4 spans of m = 16 noise tokens among n' = 52.
  Each of the m - 1 gaps between noise tokens ends a span with probability (s - 1) / (m - 1), each of the kept
  tokens' gaps with (s - 1) / (n' - m - 1): per gap within binomial bounds (4.5 sigma), so span lengths average
  m / s = 4 with every split equally likely; the documents of a row draw independently."""
  batch = text_rows([(60, 60)] * 1000, 128)
  spec = dataclasses.replace(SPAN_SPEC, noise_density=0.3, mean_span_length=4.0)
  mb = jax.jit(objectives.get('span_corruption'), static_argnums=2)(batch, jax.random.PRNGKey(7), spec)
  s, source_len = span_counts(60, 0.3, 4.0)
  m = round(0.3 * source_len)
  assert (s, source_len, m) == (4, 52, 16)
  noise_cuts, kept_cuts, firsts = np.zeros(m - 1), np.zeros(source_len - m - 1), []
  for tokens, out, bidi, _, _ in documents(batch, mb):
    source, spans = read_document(out, bidi, lead=0)
    noise_cuts[np.cumsum([len(x) for x in spans])[:-1] - 1] += 1
    kept = [t for t in out[:int(bidi.sum())] if t < V - E]
    runs = np.diff(np.flatnonzero(out[:int(bidi.sum())] >= V - E), prepend=-1) - 1
    assert len(kept) == source_len - m and runs.sum() == len(kept) and (runs > 0).all()
    kept_cuts[np.cumsum(runs)[:-1] - 1] += 1
    firsts.append(len(spans[0]))
  docs = 2000

  def within(counts: np.ndarray, p: float) -> bool:
    return bool((np.abs(counts - docs * p) <= 4.5 * np.sqrt(docs * p * (1 - p))).all())

  assert within(noise_cuts, (s - 1) / (m - 1)), noise_cuts
  assert within(kept_cuts, (s - 1) / (source_len - m - 1)), kept_cuts
  firsts = np.array(firsts)
  assert np.corrcoef(firsts[0::2], firsts[1::2])[0, 1] < 0.1


def test_span_corruption_density_and_span_length_over_document_lengths():
  """Documents of 40..200 tokens at T5's settings: noise tokens over source tokens within rounding of 0.15, noise
  tokens over spans (the mean span length) within rounding of 3, in aggregate and per document."""
  rng = np.random.default_rng(5)
  lengths = [(int(a), int(b)) for a, b in rng.integers(40, 200, (400, 2))]
  batch = text_rows(lengths, 512)
  mb = jax.jit(objectives.get('span_corruption'), static_argnums=2)(batch, jax.random.PRNGKey(2), SPAN_SPEC)
  noise = source = spans = 0
  for tokens, out, bidi, _, _ in documents(batch, mb):
    doc_source, doc_spans = read_document(out, bidi, lead=0)
    m = sum(map(len, doc_spans))
    assert abs(m - 0.15 * len(doc_source)) <= 0.5
    assert abs(len(doc_spans) - 0.15 * len(tokens) / 3.3) <= 0.5
    noise, source, spans = noise + m, source + len(doc_source), spans + len(doc_spans)
  assert abs(noise / source - 0.15) < 0.002 and abs(noise / spans - 3.0) < 0.1, (noise / source, noise / spans)


def test_spans_are_capped_at_the_sentinels():
  batch = text_rows([(120, 0)], 128)
  spec = dataclasses.replace(SPAN_SPEC, extra_ids=3, noise_density=0.5, mean_span_length=1.0)
  mb = objectives.get('span_corruption')(batch, jax.random.PRNGKey(0), spec)
  (tokens, out, bidi, weights, _), = documents(batch, mb)
  assert sorted(set(out[out >= V - 3].tolist())) == [V - 3, V - 2, V - 1] and (out[out < V - 3] < V - E).all()
  assert int(bidi.sum()) == 120 - 6 - round(0.5 * 114) + 3  # n' = 120 - 2 * 3, m = round(0.5 * n')


def test_ul2_draws_each_document_a_denoiser_by_the_mixture_weights():
  """Mixture R:3:0.15=1, S=2, X:12:0.5=1 over 2000 documents: each mode token's share within 4 sigma of 1/4, 1/2,
  1/4; each document is that denoiser's exact example behind its mode token (R/X: span counts of its own settings;
  S: the document less its last token, split inside the configured prefix range); documents draw independently."""
  batch = text_rows([(60, 60)] * 1000, 128)
  spec = dataclasses.replace(SPAN_SPEC, ul2_denoisers=MIXTURE, prefix_min_frac=0.2, prefix_max_frac=0.6)
  mb = jax.jit(objectives.get('ul2'), static_argnums=2)(batch, jax.random.PRNGKey(3), spec)
  modes = []
  for tokens, out, bidi, weights, _ in documents(batch, mb):
    mode = MODE_OF[int(out[0])]
    modes.append(mode)
    check_scoring(bidi, weights)
    if mode == 'S':
      assert out[1:].tolist() == tokens[:-1].tolist()
      assert np.floor(0.2 * 59) <= bidi.sum() - 1 <= np.floor(0.6 * 59)
      continue
    _, span, density, _ = next(d for d in MIXTURE if d[0] == mode)
    source, spans = read_document(out, bidi, lead=1)
    s, source_len = span_counts(60, density, span, lead=1)
    assert len(spans) == s and source == tokens[:source_len].tolist()
  modes = np.array(modes)
  for mode, p in (('R', 0.25), ('S', 0.5), ('X', 0.25)):
    assert abs((modes == mode).sum() - 2000 * p) <= 4 * np.sqrt(2000 * p * (1 - p)), (mode, (modes == mode).sum())
  assert np.mean(modes[0::2] == modes[1::2]) < 0.375 + 0.05  # independent draws agree with p = 1/16 + 1/4 + 1/16


def test_ul2_of_short_documents_and_of_prefix_lm_alone():
  """S needs 3 slots ([S], one input, one target), R/X need 5; shorter pieces become padding. A mixture of S alone
  needs no sentinels."""
  batch = text_rows([(2, 3), (4, 5)], 12)
  for mixture, extra, shortest in (((('S', 0.0, 0.0, 1.0),), 0, 3), ((('R', 3.0, 0.15, 1.0),), E, 5)):
    spec = dataclasses.replace(SPEC, extra_ids=extra, ul2_denoisers=mixture)
    mb = objectives.get('ul2')(batch, jax.random.PRNGKey(0), spec)
    for tokens, out, bidi, weights, seg in documents(batch, mb):
      assert seg.any() == (len(tokens) >= shortest) and weights.any() == seg.any()


@pytest.mark.parametrize('objective', ['span_corruption', 'ul2'])
def test_no_scored_target_is_visible_to_its_own_query(objective):
  """Through the real model: changing the token that position q is scored on (q + 1) never changes the logits at
  or before q; changing an input token changes the logits of its whole document, targets included."""
  batch = text_rows([(14, 16)], 32)
  spec = dataclasses.replace(SPAN_SPEC, ul2_denoisers=MIXTURE)
  mb = objectives.get(objective)(batch, jax.random.PRNGKey(1), spec)
  params = params_lib.init(MODEL, 0)
  logits = jax.jit(lambda tokens: params_lib.apply(MODEL, params)(tokens, mb.mask))
  base = np.asarray(logits(mb.inputs))
  scored = np.flatnonzero(np.asarray(mb.weights[0]))
  assert len(scored) >= 4
  for q in scored:
    changed = np.asarray(logits(mb.inputs.at[0, q + 1].set(8 + (mb.inputs[0, q + 1] - 7) % (V - E - 8))))
    np.testing.assert_array_equal(changed[0, :q + 1], base[0, :q + 1])
    assert not np.allclose(changed[0, q + 1], base[0, q + 1])
  seg = np.asarray(mb.mask.segment_ids[0])
  last_input = int(np.flatnonzero(np.asarray(mb.mask.bidirectional[0]) & (seg == 1))[-1])
  changed = np.asarray(logits(mb.inputs.at[0, last_input].set(8 + (mb.inputs[0, last_input] - 7) % (V - E - 8))))
  assert not np.isclose(changed[0, seg == 1], base[0, seg == 1]).all(axis=-1).any()
  np.testing.assert_array_equal(changed[0, seg != 1], base[0, seg != 1])


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


@pytest.mark.parametrize('objective', ['prefix_lm', 'masked_lm', 'span_corruption', 'ul2'])
def test_train_step_lowers_the_objective_loss_on_a_fixed_batch(objective):
  """Each document repeats one token, so every objective can learn to copy from context within a few steps."""
  B, S, steps = 8, 32, 20
  config = tiny.get_config()
  config.model.num_layers, config.model.d_model, config.model.num_heads, config.model.num_kv_heads = 2, 32, 4, 2
  config.model.d_ff, config.data.vocab_size, config.data.seq_len = 64, V, S
  config.train.batch_size, config.train.steps, config.train.warmup_steps = B, steps, 0
  config.train.learning_rate, config.mesh.data, config.objective = 1e-2, 1, objective
  config.data.extra_ids = E
  config = typed(config)
  mesh = build_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.build(config, mesh)
  spec = ObjectiveSpec.from_config(config.objectives, vocab_size=V, pad_id=0, mask_id=3, num_special=8, extra_ids=E)
  step = step_lib.make_train_step(setup, mesh, objective, spec, np.ones(V, np.int32),
                                  optimizer_lib.learning_rate_schedule(config.train))
  rng = np.random.default_rng(0)
  batch = {k: np.asarray(v) for k, v in packed([(int(a), int(b)) for a, b in rng.integers(5, 16, (B, 2))], S).items()}
  doc_token = 8 + (rng.integers(0, V - E - 8, (B, 1)) + 7 * batch['segment_ids']) % (V - E - 8)
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


@pytest.mark.parametrize('key, value, fix', [
    ('objectives.noise_density', 0.0, r'\(0, 1\)'),  # no noise
    ('objectives.noise_density', 1.0, r'\(0, 1\)'),  # no kept inputs
    ('objectives.mean_span_length', 0.5, r'\[1, inf\)'),
    ('objectives.ul2_mixture', 'R:3:0.15=1; S=0', 'weights must be positive'),
    ('objectives.ul2_mixture', 'R:3:0.15=-1', 'weights must be positive'),
    ('objectives.ul2_mixture', 'X:64:0=1', 'noise_density'),  # no noise
    ('objectives.ul2_mixture', 'R:3=1', 'cannot read'),
    ('objectives.ul2_mixture', '', 'cannot read'),
    ('data.extra_ids', 0, 'needs sentinel ids'),
])
def test_bad_span_settings_are_config_errors(key, value, fix):
  config = tiny.get_config()
  config.objective, config.data.extra_ids = ('ul2' if 'ul2' in key else 'span_corruption'), 100
  validate(typed(config), 1)
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=fix) as err:
    validate(typed(config), 1)
  assert err.value.key == key and '\n' not in str(err.value)


def test_ul2_of_prefix_lm_alone_needs_no_sentinels():
  config = tiny.get_config()
  config.objective, config.objectives.ul2_mixture = 'ul2', 'S=1'
  validate(typed(config), 1)
  config.objectives.ul2_mixture = 'S=1; R:3:0.15=1'
  with pytest.raises(ConfigError, match='needs sentinel ids'):
    validate(typed(config), 1)


@pytest.mark.parametrize('lo, hi, key', [(0.0, 0.0, 'prefix_max_frac'), (1.0, 1.0, 'prefix_min_frac')])
def test_empty_prefix_ranges_are_config_errors(lo, hi, key):
  config = tiny.get_config()
  config.objectives.prefix_min_frac, config.objectives.prefix_max_frac = lo, hi
  with pytest.raises(ConfigError, match='empty range') as err:
    validate(typed(config), 1)
  assert err.value.key == f'objectives.{key}'
