"""--mode=compare end to end (every file, rerun skips), the budget split, and one-line errors for bad input."""

import json

import matplotlib.image
import pytest

from configs import compare as compare_preset
from configs import default
from configs.errors import ConfigError
from configs.validate import validate
from experiments import compare
from train import probes
from tests.conftest import run_main, typed

OBJECTIVES = ('causal', 'prefix_lm', 'masked_lm')


def test_compare_writes_every_file_and_rerun_skips(small_run_flags, tmp_path):
  flags = [*small_run_flags, '--mode=compare', f'--workdir={tmp_path}', '--config.train.steps=4',
           '--config.train.eval_every=2', '--config.checkpoint.every_steps=2']
  out = run_main(*flags).stdout
  root = tmp_path / 'compare'
  results = json.loads((root / 'results.json').read_text())
  assert list(results['objectives']) == list(OBJECTIVES)
  for name, r in results['objectives'].items():
    assert r['steps'] == 4 and r['training_flops'] == pytest.approx(results['flops_budget'])
    assert {'eval/loss', 'eval/accuracy'} | {f'probe/{p}/{m}' for p in probes.READINGS
                                             for m in ('loss', 'perplexity', 'accuracy', 'bits_per_byte')} <= set(r)
    assert [c['step'] for c in r['curve']] == [0, 2, 4]
    assert (root / name / 'metrics.jsonl').exists() and (root / name / 'config.json').exists()
  table = (root / 'results.md').read_text()
  for name in OBJECTIVES:
    assert table.count(f'| {name} | 4 |') == 2  # one row in the loss table, one in the accuracy table
    assert f'| {name} | 4 |' in out
  assert len((root / 'results.csv').read_text().splitlines()) == 1 + len(OBJECTIVES)
  for reading in probes.READINGS:
    png = root / f'probe_{reading}.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and matplotlib.image.imread(png).shape[2] == 4

  out = run_main(*flags).stdout
  assert out.count('finished, skipping') == 3 and 'starting step' not in out
  assert json.loads((root / 'results.json').read_text()) == results

  proc = run_main(*flags, '--config.train.learning_rate=1e-3', check=False)
  assert proc.returncode == 2 and 'error: --workdir=' in proc.stderr and 'train.learning_rate' in proc.stderr


@pytest.mark.parametrize('value', ["('causal','bert')", '()'])
def test_bad_objectives_is_one_line_and_exit_2(small_run_flags, tmp_path, value):
  proc = run_main(*small_run_flags, '--mode=compare', f'--workdir={tmp_path}', f'--config.compare.objectives={value}',
                  check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith('error: compare.objectives='), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_budget_buys_causal_more_steps_only_where_it_skips_blocks():
  c = compare_preset.get_config()
  validate(typed(c), 1)
  budget, plans = compare.make_plans(typed(c))
  assert [p.steps for p in plans] == [c.train.steps] * 3
  assert budget == pytest.approx(c.train.steps * c.train.batch_size * c.data.seq_len * plans[0].flops_per_token)

  c = default.get_config()
  c.train.steps = 100

  c.model.attention = 'blockwise'
  budget, plans = compare.make_plans(typed(c))
  steps = {p.objective: p.steps for p in plans}
  assert steps['prefix_lm'] == steps['masked_lm'] == 100 and steps['causal'] > 100
  assert all(p.training_flops <= budget < p.training_flops + p.flops_per_step for p in plans)


@pytest.mark.parametrize('key, value', [
    ('compare.objectives', ('causal', 'causal')),
    ('compare.flops_budget', -1.0),
    ('compare.flops_budget', 1.0),  # less than one step
    ('train.eval_probes', False),
])
def test_bad_plan_names_the_key(key, value):
  c = default.get_config()
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=f'^{key}='):
    compare.make_plans(typed(c))
