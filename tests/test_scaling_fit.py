"""Scaling-law fits recover known laws from synthetic sweeps; bad points files fail with one ConfigError line."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import optimize

from configs.errors import ConfigError
from experiments import scaling
from experiments import scaling_fit as sf

# Chinchilla's own fit (Hoffmann et al. 2022, Approach 3).
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS = np.geomspace(1e18, 1e22, 5)


PARAMS = ('E', 'A', 'B', 'alpha', 'beta')


def _law(flops_per_token: sf.FlopsPerToken = sf.six_n, **params) -> sf.ChinchillaFit:
  """A fit with given parameters and no data behind it, to use its closed forms."""
  empty = sf.Points(N=np.ones(0), D=np.ones(0), loss=np.ones(0))
  return sf.ChinchillaFit(**params, objective=0.0, samples=np.empty((0, 5)), ci=0.95, points=empty,
                          flops_per_token=flops_per_token)


def attention_like(N: np.ndarray) -> np.ndarray:
  """FLOPs per token of 6N plus attention that matters at small N: 6N (1 + (1e8 / N)^(1/3)), 2x 6N at 1e8."""
  N = np.asarray(N, float)
  return 6 * N * (1 + (1e8 / N) ** (1 / 3))


def _isoflop_sweep(law: sf.ChinchillaFit, noise: float, seed: int = 0) -> sf.Points:
  """Nine sizes per budget, log-symmetric about the true optimum (x1/8 .. x8), D = C / flops_per_token(N)."""
  N = np.concatenate([law.n_opt(C) * np.geomspace(1 / 8, 8, 9) for C in BUDGETS])
  C = np.repeat(BUDGETS, 9)
  D = C / law.flops_per_token(N)
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


def test_approach3_recovers_every_quantity_of_an_exact_law():
  """Noise-free runs put the objective's minimum (zero) exactly at the generating law, so all that is left is
  L-BFGS's stopping tolerance (observed: 2e-6 relative at most). 1e-4 leaves room for that and still fails for a
  wrong un-centring of A and B (off by orders of magnitude) or alpha and beta swapped (0.34 vs 0.28)."""
  law = _law(**TRUE)
  sweep = _isoflop_sweep(law, noise=0.0)
  fit = sf.fit_chinchilla(sweep.N, sweep.D, sweep.loss, starts=2, bootstrap=3, seed=0)
  for name in PARAMS + ('a', 'b', 'G'):
    assert getattr(fit, name) == pytest.approx(getattr(law, name), rel=1e-4), name
  for C in (1e19, 1e23):  # inside the sweep, and extrapolated
    assert fit.n_opt(C) == pytest.approx(law.n_opt(C), rel=1e-4)
    assert fit.d_opt(C) == pytest.approx(law.d_opt(C), rel=1e-4)
    assert fit.loss(fit.n_opt(C), fit.d_opt(C)) == pytest.approx(law.loss(law.n_opt(C), law.d_opt(C)), rel=1e-6)
  np.testing.assert_allclose(fit.samples, np.tile([TRUE[k] for k in PARAMS], (3, 1)), rtol=1e-4)  # exact resamples
  assert fit.diverged == 0


def test_diverged_bootstrap_refits_are_counted_and_reported(monkeypatch, tmp_path, sweep):
  """Every third refit made to run off (a log-coefficient past exp's range): dropped, counted, in fit.json."""
  fit_once, calls = sf._fit_once, []

  def sometimes_diverging(*args, **kwargs):
    theta, value = fit_once(*args, **kwargs)
    calls.append(None)
    return (theta + np.array([800.0, 0, 0, 0, 0]), value) if len(calls) % 3 == 0 else (theta, value)

  monkeypatch.setattr(sf, '_fit_once', sometimes_diverging)
  fit = sf.fit_chinchilla(sweep.N, sweep.D, sweep.loss, starts=1, bootstrap=6, seed=0)
  assert len(calls) == 7 and fit.diverged == 2 and len(fit.samples) == 4  # calls 3 and 6 are refits 2 and 5
  result = sf.write_fit(fit, tmp_path, [1e23])
  assert result['bootstrap_diverged'] == 2 and result['bootstrap'] == 4


def test_numerical_allocation_matches_the_closed_form_under_6n():
  """Any function other than six_n itself takes the numerical path; for 6N it must land on the closed form."""
  law = _law(**TRUE)
  numeric = _law(flops_per_token=lambda n: 6 * np.asarray(n, float), **TRUE)
  C = np.array([1e17, 1e21, 1e25])
  np.testing.assert_allclose(numeric.n_opt(C), law.n_opt(C), rtol=1e-6)
  np.testing.assert_allclose(numeric.d_opt(C), law.d_opt(C), rtol=1e-6)
  assert numeric.n_opt(1e21) == pytest.approx(law.n_opt(1e21), rel=1e-6)  # scalars stay scalars


def test_numerical_allocation_minimises_loss_at_compute():
  law = _law(flops_per_token=attention_like, **TRUE)
  for C in (1e18, 1e21, 1e24):
    along_isoflop = lambda logN: law.loss_at_compute(np.exp(logN), C)
    grid = np.linspace(np.log(1e5), np.log(1e14), 20001)
    start = grid[np.argmin(along_isoflop(grid))]
    best = optimize.minimize_scalar(along_isoflop, bracket=(start - 0.01, start, start + 0.01), tol=1e-12)
    assert law.n_opt(C) == pytest.approx(np.exp(best.x), rel=1e-5)
    assert law.d_opt(C) == pytest.approx(C / attention_like(law.n_opt(C)), rel=1e-12)
    assert law.d_opt(C) < 0.9 * _law(**TRUE).d_opt(C)  # attention's FLOPs buy fewer tokens than 6ND says


def test_both_approaches_allocate_in_the_sweeps_units(tmp_path):
  """A sweep whose C counts attention (up to 2.4x 6N here): Approach 3 in those units finds the true allocation,
  agrees with Approach 2's minima (within the parabolas' own 3% error) and draws its isoFLOP curves through the
  runs; in 6ND units its D_opt is off by the attention share (x1.3 to x2.1)."""
  law = _law(flops_per_token=attention_like, **TRUE)
  sweep = _isoflop_sweep(law, noise=0.0)
  fpt = sf.flops_per_token_of(sweep)
  np.testing.assert_allclose(fpt(sweep.N), attention_like(sweep.N), rtol=1e-12)
  fit = sf.fit_chinchilla(sweep.N, sweep.D, sweep.loss, starts=2, bootstrap=0, flops_per_token=fpt)
  isoflop = sf.fit_isoflop_parabolas(sweep, flops_per_token=fpt, bootstrap=2)
  np.testing.assert_allclose(fit.loss_at_compute(sweep.N, sweep.C), sweep.loss, rtol=1e-6)  # the curves drawn
  assert np.abs(fit.loss(sweep.N, sweep.C / (6 * sweep.N)) / sweep.loss - 1).max() > 0.01  # the old ones missed
  in_6nd = dataclasses.replace(fit, flops_per_token=sf.six_n)
  for u in isoflop.budgets:
    assert fit.n_opt(u.C) == pytest.approx(law.n_opt(u.C), rel=1e-4)
    assert fit.d_opt(u.C) == pytest.approx(law.d_opt(u.C), rel=1e-4)
    assert fit.n_opt(u.C) == pytest.approx(u.n_opt, rel=0.05) and fit.d_opt(u.C) == pytest.approx(u.d_opt, rel=0.05)
    assert in_6nd.d_opt(u.C) > 1.25 * u.d_opt
  result = sf.write_fit(dataclasses.replace(fit, flops_per_token=sf.six_n), tmp_path, [1e23], isoflop)
  row, iso_row = result['predictions'][0], result['isoflop']['predictions'][0]
  assert row['N_opt'] == pytest.approx(fit.n_opt(1e23)) and row['D_opt'] == pytest.approx(fit.d_opt(1e23))
  assert row['D_opt'] == pytest.approx(1e23 / fpt(row['N_opt']), rel=1e-9)  # Approach 2's units, adopted
  assert row['N_opt_6ND'] == pytest.approx(in_6nd.n_opt(1e23)) and row['C_6ND'] < 1e23
  assert row['flops_per_token_over_6N'] == pytest.approx(1e23 / row['C_6ND'])
  assert iso_row['C_6ND'] == pytest.approx(6 * iso_row['N_opt'] * iso_row['D_opt'])
  assert result['isoflop']['bootstrap'] + result['isoflop']['bootstrap_dropped'] == 2


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
  result = scaling.fit(tmp_path / 'p.csv', tmp_path / 'out', [1e21], bootstrap=0, seed=0)
  assert result['isoflop'] is None and result['alpha_ci'] is None
  assert result['alpha'] == pytest.approx(TRUE['alpha'], abs=0.01)
  for name in ('isoflop.png', 'allocation.png', 'frontier.png'):
    _assert_png(tmp_path / 'out' / name)
