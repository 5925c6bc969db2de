"""--mode=compare end to end (every file, rerun skips), budgets that count the work each path does, power-law fits,
and one-line errors for bad input."""

import json

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from configs import compare as compare_preset
from configs.errors import ConfigError
from configs.sections import parse_variants
from experiments import compare, power_law
from models.attention import blockwise
from tests.conftest import config_of, run_main, typed
from train import flops, objectives, probes
from train.runtime import MEASURED_STEPS, Runtime

VARIANTS = ('causal', 'prefix_lm', 'masked_lm')


def test_compare_writes_every_file_and_rerun_skips(small_run_flags, tmp_path):
  """3 variants x 2 budgets (3 and 6 steps of the small model)."""
  small = config_of(small_run_flags)
  per_step = small.train.batch_size * small.data.seq_len * flops.flops_per_token(small.model, small.data.seq_len)
  flags = [*small_run_flags, '--mode=compare', f'--workdir={tmp_path}', '--config.train.eval_every=2',
           '--config.checkpoint.every_steps=2', f'--config.compare.flops_budgets=({3.5 * per_step},{6.5 * per_step})']
  out = run_main(*flags).stdout
  root = tmp_path / 'compare'
  results = json.loads((root / 'results.json').read_text())
  assert results['variants'] == list(VARIANTS) and results['baseline'] == 'causal'
  assert sorted({(r['variant'], r['steps']) for r in results['runs']}) == sorted(
      (v, s) for v in VARIANTS for s in (3, 6))
  for r in results['runs']:
    assert r['training_flops'] <= r['budget'] < r['training_flops'] + r['training_flops'] / r['steps']
    assert r['training_flops'] == pytest.approx(r['model_flops'])  # vanilla executes the model FLOPs
    assert {'eval/loss'} | {f'probe/{p}/bits_per_byte' for p in probes.READINGS} <= set(r)
    assert [c['step'] for c in r['curve']] == [0, 2] + ([4, 6] if r['steps'] == 6 else [3])
    assert r['run'].startswith(f'{r["variant"]}/C') and (root / r['run'] / 'metrics.jsonl').exists()
    assert r['tokens_per_sec'] > 0 and 1 < r['bytes_per_token'] < 8  # a 512-piece BPE on Python source
  for reading in probes.READINGS:
    assert set(results['fits'][reading]) == set(VARIANTS)
    assert results['fits'][reading]['causal']['crosses_baseline_at'] is None
    png = root / f'probe_{reading}.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and matplotlib.image.imread(png).shape[2] == 4
  table = (root / 'results.md').read_text()
  assert table.count('| masked_lm |') == 2 + len(probes.READINGS) and '| masked_lm |' in out
  assert len((root / 'results.csv').read_text().splitlines()) == 1 + 2 * len(VARIANTS)

  out = run_main(*flags).stdout
  assert out.count('finished, skipping') == 6 and 'starting step' not in out
  assert json.loads((root / 'results.json').read_text()) == results

  proc = run_main(*flags, '--config.train.learning_rate=1e-3', check=False)
  assert proc.returncode == 2 and 'error: --workdir=' in proc.stderr and 'train.learning_rate' in proc.stderr


def test_tokenizer_preset_end_to_end(small_run_flags, tmp_path):
  """configs/compare_tokenizers.py's five variants at one budget of a few steps: each tokenizer is trained (or the
  byte one used), and the results give bits per byte, bytes per token in the order the tokenizers imply, and speed."""
  flags = ['--config=configs/compare_tokenizers.py', *small_run_flags[1:], '--mode=compare', f'--workdir={tmp_path}',
           '--config.compare.flops_budgets=(1e10,)', '--config.train.eval_every=100']
  run_main(*flags)
  results = json.loads((tmp_path / 'compare' / 'results.json').read_text())
  runs = {r['variant']: r for r in results['runs']}
  assert list(runs) == ['bpe', 'unigram', 'word', 'char', 'byte'] and results['baseline'] == 'bpe'
  per_token = {name: r['bytes_per_token'] for name, r in runs.items()}
  assert per_token['byte'] <= 1 <= per_token['char'] < min(per_token['bpe'], per_token['unigram'], per_token['word'])
  assert runs['byte']['steps'] > runs['bpe']['steps']  # its 264-row head costs less per token
  for r in runs.values():
    assert r['tokens_per_sec'] > 0 and all(0 < r[f'probe/{q}/bits_per_byte'] < 20 for q in probes.READINGS)


def test_architecture_preset_end_to_end(small_run_flags, tmp_path):
  """configs/compare_architectures.py's five variants at one budget of 3 steps of the 2-layer decoders: the 1 + 1
  layer encoder-decoders pay for cross-attention too and run 2; every variant reports its own loss and bits per byte
  and every probe reading."""
  flags = ['--config=configs/compare_architectures.py', *small_run_flags[1:], '--mode=compare',
           f'--workdir={tmp_path}', '--config.data.vocab_size=612', '--config.train.eval_every=0',
           '--config.train.eval_batches=1', '--config.model.num_encoder_layers=1',
           '--config.model.num_decoder_layers=1']
  small = config_of(flags)
  tokens = small.train.batch_size * small.data.seq_len
  budget = 3.05 * tokens * flops.flops_per_token(small.model, small.data.seq_len)
  run_main(*flags, f'--config.compare.flops_budgets=({budget},)')
  results = json.loads((tmp_path / 'compare' / 'results.json').read_text())
  runs = {r['variant']: r for r in results['runs']}
  assert list(runs) == ['causal', 'prefix_lm', 'encdec_prefix_lm', 'span', 'encdec_span']
  assert results['baseline'] == 'causal'
  assert {name: r['steps'] for name, r in runs.items()} == {'causal': 3, 'prefix_lm': 3, 'encdec_prefix_lm': 2,
                                                            'span': 3, 'encdec_span': 2}
  for r in runs.values():
    assert r['training_flops'] <= r['budget'] < r['training_flops'] + r['training_flops'] / r['steps']
    assert np.isfinite(r['eval/loss']) and 0 < r['eval/bits_per_byte'] < 20
    assert all(0 < r[f'probe/{q}/bits_per_byte'] < 20 for q in probes.READINGS)


@pytest.mark.parametrize('value', ['causal: objective=bert', '', 'a: objective=causal; a: objective=masked_lm',
                                   'wide: model.d_modl=256', 'm: mesh.data=2',
                                   'ed: model.architecture=encoder_decoder objective=prefix_lm model.attention=blockwise'])
def test_bad_variants_are_one_line_naming_the_key(small_run_flags, value):
  with pytest.raises(ConfigError) as err:
    compare.variant_configs(config_of([*small_run_flags, f'--config.compare.variants={value}']))
  assert err.value.key == 'compare.variants' and '\n' not in str(err.value)


def test_a_bad_variant_exits_2_with_one_line_before_any_work(small_run_flags, tmp_path):
  proc = run_main(*small_run_flags, '--mode=compare', f'--workdir={tmp_path}',
                  '--config.compare.variants=wide: model.d_modl=256', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith('error: compare.variants='), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'compare').exists()


def test_variants_parse_into_typed_overrides():
  assert parse_variants('causal: objective=causal; wide: model.d_model=256 train.learning_rate=1e-3 '
                        'model.tie_embeddings=False') == (
      ('causal', (('objective', 'causal'),)),
      ('wide', (('model.d_model', 256), ('train.learning_rate', 1e-3), ('model.tie_embeddings', False))))


def test_budgets_count_the_block_pairs_each_variant_computes(small_run_flags):
  """Blockwise attention at 256 tokens in 64-blocks: each variant is credited the keys its kernel visits on its own
  batches (counted here by the kernel's own visited-pair counter, steps 0..7 with the training noise), so causal runs
  the most steps for a budget, masked LM the fewest, and vanilla credits every variant the full square."""
  config = config_of([*small_run_flags, '--config.data.seq_len=256', '--config.model.attention=blockwise',
                       '--config.model.q_block=64', '--config.model.kv_block=64'])
  runtime = Runtime(config, jax.devices()[:1])
  keys = {}
  for name, cfg in compare.variant_configs(config).items():
    spec, data, visited = runtime.spec(cfg), runtime.data(cfg.data, cfg.seed), []
    for step in range(MEASURED_STEPS):
      batch = {k: jnp.asarray(v) for k, v in data.train.batch(step, 4).items()}
      mask = objectives.get(cfg.objective)(batch, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step), spec).mask
      qkv = [jnp.zeros((4, 256, 1, 4))] * 3
      visited.append(int(blockwise.forward_chunk(*blockwise.to_internal(*qkv), mask, mask, 64, 64)[2]))
    keys[name] = np.mean(visited) * 64 * 64 / 256
    assert runtime.attended_keys(cfg) == pytest.approx(keys[name], rel=1e-12), name
  assert keys['causal'] < keys['prefix_lm'] < keys['masked_lm'] <= 256
  budget = 40 * runtime.executed_flops_per_token(config) * 4 * 256
  plans = compare.make_plans(runtime, config.override({'compare.flops_budgets': (budget,)}), '/tmp/unused')
  steps = {p.variant: p.steps for p in plans}
  assert steps['causal'] == 40 and steps['causal'] > steps['prefix_lm'] > steps['masked_lm']
  assert all(p.training_flops <= budget < p.training_flops + p.flops_per_step for p in plans)
  vanilla = config.override({'model.attention': 'vanilla'})
  assert {runtime.attended_keys(cfg) for cfg in compare.variant_configs(vanilla).values()} == {256.0}


def test_power_law_fit_and_crossing():
  """Exact power laws are recovered; two of them cross where A1 C^-a1 = A2 C^-a2; with noise the t-interval of
  the exponent covers the truth."""
  C = np.geomspace(1e12, 1e14, 4)
  fast, slow = power_law.fit(C, 50 * C ** -0.1), power_law.fit(C, 20 * C ** -0.06)
  assert (fast.A, fast.alpha) == pytest.approx((50, 0.1), rel=1e-9) and fast.alpha_ci == pytest.approx((0.1, 0.1))
  cross = power_law.crossing(fast, slow)
  assert fast(cross) == pytest.approx(slow(cross), rel=1e-9) and 1e9 < cross < 1e10
  noisy = power_law.fit(C, 50 * C ** -0.1 * np.exp(np.array([0.01, -0.01, 0.012, -0.008])))
  assert noisy.alpha_ci[0] < 0.1 < noisy.alpha_ci[1] and noisy.alpha_ci[1] - noisy.alpha_ci[0] < 0.05
  assert power_law.fit(C[:2], 50 * C[:2] ** -0.1).alpha_ci is None
  assert power_law.crossing(fast, fast) is None


@pytest.mark.parametrize('key, value', [
    ('compare.flops_budgets', ()),
    ('compare.flops_budgets', (-1.0,)),
    ('compare.flops_budgets', (1.0,)),  # less than one step
    ('train.eval_probes', False),
])
def test_bad_plan_names_the_key(key, value):
  c = compare_preset.get_config()
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=f'^{key}='):
    config = typed(c)
    compare.make_plans(Runtime(config, jax.devices()[:1]), config, '/tmp/unused')
