"""experiments/scaling.py: the width/depth rule, and `--mode=scaling` / `--mode=fit` end to end through main.py."""

import csv
import json
import pathlib

import numpy as np
import pytest

from configs import scaling as scaling_preset
from configs import scaling_micro
from configs.errors import ConfigError
from experiments import scaling
from tests.conftest import run_main, typed
from train import flops
from train.runtime import Runtime

PLOTS = ('isoflop.png', 'allocation.png', 'frontier.png')


def test_width_depth_rule_and_plan():
  c = typed(scaling_preset.get_config())
  model = scaling.model_for(c, 96)
  assert (model.d_model, model.num_layers, model.num_heads, model.num_kv_heads, model.d_ff) == (96, 4, 12, 12, 288)
  runs = scaling.plan(Runtime(c), c)
  assert {r.C for r in runs} == set(c.scaling.flops) and len(c.scaling.flops) >= 4
  assert max(c.scaling.flops) / min(c.scaling.flops) >= 30
  for C in c.scaling.flops:  # each budget's window: 3+ sizes within 4x of N_c = 0.06 C^0.5, 200+ steps each
    sizes = [r.N for r in runs if r.C == C]
    centre = c.scaling.centre_coefficient * C ** c.scaling.centre_exponent
    assert len(sizes) >= 3 and all(centre / 4 <= n <= 4 * centre for n in sizes)
    assert min(sizes) < centre < max(sizes)
  assert min(r.steps for r in runs) >= 200
  tokens_per_step = c.train.batch_size * c.data.seq_len
  for run in runs:
    fpt = flops.flops_per_token(run.config.model, c.data.seq_len)
    assert run.C <= fpt * run.tokens < run.C + fpt * tokens_per_step  # D = C / fpt, rounded up to a whole step
    assert run.N == flops.count_params(run.config.model)['total']
    assert run.config.train.steps == run.config.checkpoint.every_steps == run.steps  # one checkpoint, at the end
    assert run.config.train.eval_every == 0
  assert len({r.run for r in runs}) == len(runs)


@pytest.mark.parametrize('overrides, key', [({'scaling.window': 1.2}, 'scaling.window'),  # < 3 sizes per budget
                                           ({'scaling.flops': (3e10,)}, 'scaling.flops')])  # < 200 steps
def test_sweeps_that_cannot_bracket_or_train_are_refused_before_training(overrides, key):
  c = typed(scaling_preset.get_config()).override(overrides)
  with pytest.raises(ConfigError, match=f'^{key}='):
    scaling.plan(Runtime(c), c)


@pytest.mark.parametrize('key, value', [
    ('flops', ()), ('flops', (1e12, -1.0)), ('d_models', (64, 64)), ('d_models', (64, 76)), ('head_dim', 15),
    ('window', 0.5), ('min_steps', 0),
    ('aspect_ratio', 0), ('warmup_fraction', 1.0), ('bootstrap', -1), ('predict_flops', ('1e20',)),
])
def test_bad_scaling_keys(key, value):
  c = scaling_preset.get_config()
  c.scaling[key] = value
  with pytest.raises(ConfigError, match=f'^scaling.{key}='):
    typed(c)


def _common(corpus: pathlib.Path, tmp_path: pathlib.Path) -> list[str]:
  return ['--config=configs/scaling_micro.py', f'--config.data.text_dir={corpus}',
          f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={tmp_path / "sweep"}']


def _rows(path: pathlib.Path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_sweep_end_to_end_then_resume(corpus, tmp_path):
  common = _common(corpus, tmp_path)
  out = tmp_path / 'sweep' / 'scaling'
  proc = run_main(*common, '--mode=scaling')
  micro = scaling_micro.get_config()
  rows = _rows(out / 'points.csv')
  assert len(rows) == len(micro.scaling.flops) * len(micro.scaling.d_models) == 6
  assert {'N', 'D', 'C', 'loss', 'run'} <= set(rows[0])
  assert {float(r['C']) for r in rows} == set(micro.scaling.flops)
  for r in rows:
    metrics = (out / 'runs' / r['run'] / 'metrics.jsonl').read_text().splitlines()
    evals = [json.loads(line) for line in metrics if 'eval/loss' in line]
    assert [e['step'] for e in evals] == [int(r['steps'])]  # evaluated once, at the end
    assert evals[0]['eval/loss'] == pytest.approx(float(r['loss']), rel=1e-5)
  fit = json.loads((out / 'fit.json').read_text())
  assert {'E', 'A', 'B', 'alpha', 'beta', 'a', 'b', 'alpha_ci', 'predictions'} <= set(fit)
  assert all((out / name).stat().st_size > 0 for name in PLOTS)
  assert (out / 'points.md').exists() and 'Chinchilla' in proc.stdout

  # Rerun with one budget: its runs are found finished, and 3 points are too few for Approach 3.
  proc = run_main(*common, '--mode=scaling', f'--config.scaling.flops=({micro.scaling.flops[0]},)')
  assert proc.stdout.count('finished before') == 3 and 'starting step' not in proc.stdout
  assert 'fit skipped: scaling.points=' in proc.stdout
  assert _rows(out / 'points.csv') == rows[:3] and not (out / 'fit.json').exists()

  # A finished run is not reused under settings that change its loss.
  micro.data.text_dir, micro.train.batch_size = str(corpus), 8  # 8: divisible by this process's 8 fake devices
  run = scaling.plan(Runtime(typed(micro)), typed(micro))[0]
  with pytest.raises(ConfigError, match=r"^--workdir=.*train.batch_size was 4, now 8"):
    scaling._train_or_load(Runtime(typed(micro)), run, out / 'runs' / run.run)


def _synthetic_csv(path: pathlib.Path, with_c: bool = True) -> pathlib.Path:
  """Three isoFLOP curves of a known L(N, D), with the minima inside the sampled N."""
  lines = ['N,D,C,loss,run' if with_c else 'N,D,loss']
  for C in (1e17, 1e18, 1e19):
    for N in np.geomspace(np.sqrt(C / 120) / 8, np.sqrt(C / 120) * 8, 7):
      D = C / (6 * N)
      loss = 1.7 + 400 / N ** 0.34 + 410 / D ** 0.28
      lines.append(f'{N:.6g},{D:.6g},{C:.6g},{loss:.6f},r' if with_c else f'{N:.6g},{D:.6g},{loss:.6f}')
  path.write_text('\n'.join(lines) + '\n')
  return path


def test_fit_mode_on_csv(tmp_path):
  points = _synthetic_csv(tmp_path / 'points.csv')
  proc = run_main('--mode=fit', f'--config.scaling.points={points}', '--config.scaling.bootstrap=5',
                  f'--workdir={tmp_path / "fit"}')
  fit = json.loads((tmp_path / 'fit' / 'scaling' / 'fit.json').read_text())
  assert fit['alpha'] == pytest.approx(0.34, abs=0.02) and fit['beta'] == pytest.approx(0.28, abs=0.02)
  assert fit['isoflop'] is not None and len(fit['isoflop']['budgets']) == 3
  assert all((tmp_path / 'fit' / 'scaling' / name).exists() for name in PLOTS)
  for name in ('alpha', 'beta', 'a', 'b', 'E', 'A', 'B'):
    assert any(line.split()[:1] == [name] for line in proc.stdout.splitlines()), proc.stdout


def test_flops_per_token_read_off_the_csv(tmp_path):
  points = scaling.scaling_fit.load_points(_synthetic_csv(tmp_path / 'points.csv'))
  assert scaling.scaling_fit.flops_per_token_of(points)(np.array([3e6]))[0] == pytest.approx(6 * 3e6, rel=1e-4)
  no_c = scaling.scaling_fit.load_points(_synthetic_csv(tmp_path / 'no_c.csv', with_c=False))
  assert scaling.scaling_fit.flops_per_token_of(no_c) is scaling.scaling_fit.six_n


def test_fit_mode_without_points_is_one_line_and_exit_2(tmp_path):
  proc = run_main('--mode=fit', f'--workdir={tmp_path / "fit"}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith("error: scaling.points='': set --config.scaling.points=")
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('content, message', [
    ('N,D,loss\n1,2\n', '2 fields under a 3-column header'),
    ('N,D,loss\n1e6,2e7,abc\n', "loss='abc' is not a number"),
    ('N,tokens,loss\n1e6,2e7,3.0\n', "missing column"),
    ('N,D,loss\n' + '1e6,2e7,3.0\n' * 4, '4 runs; Approach 3 fits 5 parameters'),
    ('N,D,loss\n' + '1e6,2e7,3.0\n' * 4 + '1e6,0,3.0\n', 'D=0.0'),
])
def test_fit_mode_bad_csv(tmp_path, content, message):
  (tmp_path / 'bad.csv').write_text(content)
  c = scaling_preset.get_config()
  c.scaling.points = str(tmp_path / 'bad.csv')
  with pytest.raises(ConfigError, match='^scaling.points=') as e:
    scaling.fit_only(c, str(tmp_path / 'fit'))
  assert message in str(e.value) and '\n' not in str(e.value)
