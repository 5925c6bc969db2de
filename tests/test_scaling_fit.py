"""Scaling-law fits recover known laws from synthetic sweeps; bad points files fail with one ConfigError line."""

import json

import numpy as np
import pytest
from scipy import optimize

from configs.errors import ConfigError
from experiments import scaling_fit as sf

# Chinchilla's own fit (Hoffmann et al. 2022, Approach 3).
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS = np.geomspace(1e18, 1e22, 5)


def _law(**params) -> sf.ChinchillaFit:
  """A fit with given parameters and no data behind it, to use its closed forms."""
  empty = sf.Points(N=np.ones(0), D=np.ones(0), loss=np.ones(0))
  return sf.ChinchillaFit(**params, objective=0.0, samples=np.empty((0, 5)), ci=0.95, points=empty)


def _isoflop_sweep(law: sf.ChinchillaFit, noise: float, seed: int = 0) -> sf.Points:
  """Nine sizes per budget, log-symmetric about the true optimum (x1/8 .. x8), D = C / 6N."""
  N = np.concatenate([law.n_opt(C) * np.geomspace(1 / 8, 8, 9) for C in BUDGETS])
  C = np.repeat(BUDGETS, 9)
  D = C / (6 * N)
  loss = law.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, len(N)))
  return sf.Points(N=N, D=D, loss=loss, C=C)


@pytest.fixture(scope='module')
def sweep() -> sf.Points:
  return _isoflop_sweep(_law(**TRUE), noise=1e-3)


@pytest.fixture(scope='module')
def chinchilla(sweep) -> sf.ChinchillaFit:
  return sf.fit_chinchilla(sweep.N, sweep.D, sweep.loss, starts=2, bootstrap=2, seed=0)


def test_approach3_recovers_chinchilla_law(chinchilla):
  assert chinchilla.alpha == pytest.approx(TRUE['alpha'], abs=0.01)
  assert chinchilla.beta == pytest.approx(TRUE['beta'], abs=0.01)
  assert chinchilla.E == pytest.approx(TRUE['E'], abs=0.02)
  assert chinchilla.a == pytest.approx(0.28 / 0.62, abs=0.01) and chinchilla.a + chinchilla.b == pytest.approx(1)
  assert len(chinchilla.samples) == 2
  for name in ('alpha', 'beta', 'a', 'E'):
    lo, hi = chinchilla.interval(name)
    assert lo <= hi and abs(lo - getattr(chinchilla, name)) < 0.05


def test_closed_form_allocation_matches_brute_force():
  law = _law(**TRUE)
  for C in (1e19, 1e21, 1e23):
    along_isoflop = lambda logN: law.loss(np.exp(logN), C / (6 * np.exp(logN)))
    grid = np.linspace(np.log(1e6), np.log(1e13), 20001)
    start = grid[np.argmin(along_isoflop(grid))]
    best = optimize.minimize_scalar(along_isoflop, bracket=(start - 0.01, start, start + 0.01), tol=1e-12)
    assert law.n_opt(C) == pytest.approx(np.exp(best.x), rel=1e-5)
    assert law.d_opt(C) == pytest.approx(C / (6 * np.exp(best.x)), rel=1e-5)
    assert law.n_opt(C) * law.d_opt(C) * 6 == pytest.approx(C, rel=1e-12)


def test_approach2_finds_exact_parabola_minima():
  """Loss exactly quadratic in ln N with minima N* = 0.1 C^0.5: the fit recovers them and a = b = 0.5."""
  N, C, loss = [], [], []
  for c in BUDGETS:
    n = 0.1 * c ** 0.5 * np.geomspace(0.2, 3, 7)
    N.append(n)
    C.append(np.full(7, c))
    loss.append(2 + 5 / np.log(c) + 0.3 * np.log(n / (0.1 * c ** 0.5)) ** 2)
  N, C, loss = map(np.concatenate, (N, C, loss))
  fit = sf.fit_isoflop_parabolas(sf.Points(N=N, D=C / (6 * N), loss=loss, C=C), bootstrap=4)
  assert [u.C for u in fit.budgets] == pytest.approx(list(BUDGETS))
  assert [u.n_opt for u in fit.budgets] == pytest.approx(list(0.1 * BUDGETS ** 0.5), rel=1e-9)
  assert fit.a == pytest.approx(0.5, abs=1e-9) and fit.b == pytest.approx(0.5, abs=1e-9)
  assert fit.n_opt(1e24) == pytest.approx(0.1 * 1e12, rel=1e-6)
  assert fit.interval('a') == pytest.approx([0.5, 0.5], abs=1e-6)  # every resample lies on the same parabolas


def test_approach2_on_chinchilla_law(sweep):
  """Sizes log-symmetric about the true optimum: the parabola's offset is the same at every budget, so the exponent
  is exact and N_opt is close."""
  fit = sf.fit_isoflop_parabolas(sweep, bootstrap=0)
  law = _law(**TRUE)
  assert fit.a == pytest.approx(law.a, abs=0.01)
  assert fit.b == pytest.approx(law.b, abs=0.01)
  for u in fit.budgets:
    assert u.n_opt == pytest.approx(law.n_opt(u.C), rel=0.1)
    assert u.d_opt == pytest.approx(u.C / (6 * u.n_opt), rel=1e-12)
  assert fit.interval('a') is None


def test_approach2_skips_unbracketed_budgets_and_uses_flops_per_token(sweep):
  law = _law(**TRUE)
  extra_C = 1e23
  N = law.n_opt(extra_C) * np.geomspace(4, 64, 5)  # all larger than the optimum: no interior minimum
  points = sf.Points(N=np.concatenate([sweep.N, N]), D=np.concatenate([sweep.D, extra_C / (6 * N)]),
                     loss=np.concatenate([sweep.loss, law.loss(N, extra_C / (6 * N))]))  # no C column: computed
  detailed = lambda n: 6 * n + 1e6
  fit = sf.fit_isoflop_parabolas(points, flops_per_token=detailed, bootstrap=0)
  assert len(fit.budgets) == len(BUDGETS) and fit.skipped == pytest.approx((extra_C,), rel=1e-4)
  for u in fit.budgets:
    assert u.d_opt == pytest.approx(u.C / detailed(u.n_opt), rel=1e-12)


def test_approach2_needs_two_budgets(sweep):
  one = sweep.C == BUDGETS[0]
  with pytest.raises(ConfigError, match='scaling.points'):
    sf.fit_isoflop_parabolas(sf.Points(N=sweep.N[one], D=sweep.D[one], loss=sweep.loss[one], C=sweep.C[one]))


def _write_csv(path, points: sf.Points):
  lines = ['run,N,D,C,loss'] + [f'r{i},{n:.17g},{d:.17g},{c:.17g},{l:.17g}'
                                 for i, (n, d, c, l) in enumerate(zip(points.N, points.D, points.C, points.loss))]
  path.write_text('\n'.join(lines) + '\n')


def test_load_points_roundtrip(tmp_path, sweep):
  _write_csv(tmp_path / 'points.csv', sweep)
  points = sf.load_points(tmp_path / 'points.csv')
  np.testing.assert_array_equal(points.N, sweep.N)
  np.testing.assert_array_equal(points.C, sweep.C)
  assert points.run[:2] == ('r0', 'r1')
  (tmp_path / 'min.csv').write_text('N,D,loss\n' + ''.join(f'{10 ** k},{10 ** (k + 1)},3.{k}\n' for k in range(5)))
  points = sf.load_points(tmp_path / 'min.csv')
  assert points.C is None and points.run is None
  np.testing.assert_array_equal(points.compute(), 6 * points.N * points.D)


GOOD = ''.join(f'{10 ** k},{10 ** (k + 1)},3.{k}\n' for k in range(5))


@pytest.mark.parametrize('text,fix', [
    ('N,D\n1,2\n', r"missing column\(s\) \['loss'\]"),
    ('N,D,loss\n' + ''.join(GOOD.splitlines(True)[:4]), 'at least'),  # four runs for five parameters
    ('N,D,loss\n' + GOOD + '1e9,-5,2.0\n', 'D=-5.0'),
    ('N,D,loss\n' + GOOD + '1e9,1e10,0\n', 'loss=0.0'),
    ('N,D,loss\n' + GOOD + '1e9,1e10,nan\n', 'loss=nan'),
    ('N,D,loss\n' + GOOD + '1e9,abc,2.0\n', "D='abc' is not a number"),
    ('N,D,loss\n' + GOOD + '1e9,1e10\n', '2 fields under a 3-column header'),
    ('', 'empty'),
])
def test_load_points_bad_input(tmp_path, text, fix):
  (tmp_path / 'p.csv').write_text(text)
  with pytest.raises(ConfigError, match=fix) as err:
    sf.load_points(tmp_path / 'p.csv')
  assert err.value.key == 'scaling.points' and '\n' not in str(err.value)


def test_bad_arrays_and_missing_file(tmp_path):
  with pytest.raises(ConfigError, match='scaling.points'):
    sf.load_points(tmp_path / 'nope.csv')
  with pytest.raises(ConfigError, match='4 runs'):
    sf.fit_chinchilla([1e6, 1e7, 1e8, 1e9], [1e8] * 4, [3.0, 2.9, 2.8, 2.7])


def _assert_png(path):
  data = path.read_bytes()
  assert len(data) > 1000 and data[:8] == b'\x89PNG\r\n\x1a\n'


def test_write_fit(tmp_path, chinchilla, sweep):
  isoflop = sf.fit_isoflop_parabolas(sweep, bootstrap=3)
  written = sf.write_fit(chinchilla, tmp_path / 'out', [1e23, 1e24], isoflop)
  result = json.loads((tmp_path / 'out' / 'fit.json').read_text())
  assert result == written
  for name in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b'):
    assert isinstance(result[name], float) and len(result[f'{name}_ci']) == 2
  assert [p['C'] for p in result['predictions']] == [1e23, 1e24]
  first = result['predictions'][0]
  assert first['N_opt'] == pytest.approx(chinchilla.n_opt(1e23)) and first['D_opt'] == pytest.approx(
      chinchilla.d_opt(1e23))
  assert first['N_opt_ci'][0] <= first['N_opt_ci'][1]
  assert result['isoflop']['a'] == pytest.approx(isoflop.a) and len(result['isoflop']['budgets']) == len(BUDGETS)
  for name in ('isoflop.png', 'allocation.png', 'frontier.png'):
    _assert_png(tmp_path / 'out' / name)


def test_run_from_csv_without_isoflop_sweep(tmp_path):
  """Random (N, D) runs are no isoFLOP sweep: Approach 3 alone, isoflop null, plots still drawn."""
  rng = np.random.default_rng(1)
  N, D = 10 ** rng.uniform(7, 9, 30), 10 ** rng.uniform(9, 11, 30)
  loss = _law(**TRUE).loss(N, D)
  rows = ''.join(f'{n:.17g},{d:.17g},{l:.17g}\n' for n, d, l in zip(N, D, loss))
  (tmp_path / 'p.csv').write_text('N,D,loss\n' + rows)
  result = sf.run(tmp_path / 'p.csv', tmp_path / 'out', [1e21], bootstrap=0, starts=2)
  assert result['isoflop'] is None and result['alpha_ci'] is None
  assert result['alpha'] == pytest.approx(TRUE['alpha'], abs=0.01)
  for name in ('isoflop.png', 'allocation.png', 'frontier.png'):
    _assert_png(tmp_path / 'out' / name)
