"""Scaling-law fits of a sweep's final losses: Chinchilla's Approach 3 (parametric) and Approach 2 (isoFLOP parabolas).

Pure numpy/scipy so a fit runs anywhere, long after the sweep. Input is a CSV of runs (`load_points`); output is
`fit.json` and PNG plots (`write_fit`).

Compute units. Both approaches turn a compute budget C into an allocation (N_opt, D_opt) with one FLOPs-per-token
function of N: the sweep's own count when the CSV has C (`flops_per_token_of` reads C / D off the runs, attention
included), else 6N, i.e. C = 6ND. fit.json shows beside each allocation what 6ND makes of it.

Approach 3 fits L(N, D) = E + A / N^alpha + B / D^beta, the lecture's form, as Hoffmann et al. (2022) do: with
A = exp(a), B = exp(b), E = exp(e), log L = LSE(a - alpha log N, b - beta log D, e), minimising the Huber loss
(delta 1e-3) of the log-loss residuals with L-BFGS from a grid of starts and keeping the best. Minimising L at fixed
C = 6 N D gives N_opt = G (C/6)^a, D_opt = (C/6)^b / G with a = beta / (alpha + beta), b = alpha / (alpha + beta),
G = (alpha A / (beta B))^(1 / (alpha + beta)); under another FLOP count, N_opt minimises L(N, C / flops_per_token(N))
numerically. Uncertainty comes from the bootstrap: resample runs, refit, percentiles.
"""

import contextlib
import csv
import ctypes
import dataclasses
import itertools
import json
import math
import pathlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import optimize

from configs.errors import ConfigError

KEY = 'scaling.points'
NUM_PARAMS = 5  # E, A, B, alpha, beta: Approach 3 needs at least this many runs
# The paper's grid of starts over (a, b, e, alpha, beta); 4500 points, evaluated at once, the best few refined.
PAPER_GRID = (np.arange(0.0, 30.0, 5.0), np.arange(0.0, 30.0, 5.0), np.arange(-1.0, 1.5, 0.5),
              np.arange(0.0, 2.5, 0.5), np.arange(0.0, 2.5, 0.5))

FlopsPerToken = Callable[[np.ndarray], np.ndarray]


def six_n(n: np.ndarray) -> np.ndarray:
  """Training FLOPs per token of the C = 6ND approximation."""
  return 6.0 * np.asarray(n, dtype=float)


@dataclasses.dataclass(frozen=True)
class Points:
  """Runs of a sweep: parameters N, training tokens D, final loss; C and run ids when the CSV has them."""

  N: np.ndarray
  D: np.ndarray
  loss: np.ndarray
  C: np.ndarray | None = None
  run: tuple[str, ...] | None = None

  def compute(self, flops_per_token: FlopsPerToken = six_n) -> np.ndarray:
    """Training FLOPs per run: the CSV's C when given (the sweep's nominal budgets), else flops_per_token(N) * D."""
    return self.C if self.C is not None else flops_per_token(self.N) * self.D


def _check(N: np.ndarray, D: np.ndarray, L: np.ndarray, source: str, first_line: int | None = None) -> None:
  """Rejects what no fit can use, naming the first offending run (by CSV line when read from a file)."""
  if not (N.shape == D.shape == L.shape and N.ndim == 1):
    raise ConfigError(KEY, source, f'N, D and loss must be 1-D of one length, got {N.shape}, {D.shape}, {L.shape}')
  if len(N) < NUM_PARAMS:
    raise ConfigError(KEY, source, f'{len(N)} runs; Approach 3 fits {NUM_PARAMS} parameters, give at least that many')
  for name, x in (('N', N), ('D', D), ('loss', L)):
    bad = np.flatnonzero(~(np.isfinite(x) & (x > 0)))
    if bad.size:
      where = f'{source}, run {bad[0]}' if first_line is None else f'{source}:{first_line + bad[0]}'
      raise ConfigError(KEY, where, f'{name}={x[bad[0]]}; every N, D and loss must be finite and > 0')


def load_points(path: str | pathlib.Path) -> Points:
  """Reads a CSV with header columns N, D, loss (C and run optional; other columns ignored)."""
  source = str(path)
  try:
    with open(path, newline='') as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    fix = f'cannot read a CSV there ({e.__class__.__name__}); point it at a points file'
    raise ConfigError(KEY, source, fix) from e
  rows = [r for r in rows if any(cell.strip() for cell in r)]
  if not rows:
    raise ConfigError(KEY, source, 'the file is empty; write a header N,D,loss and one row per run')
  header = [h.strip() for h in rows[0]]
  missing = [c for c in ('N', 'D', 'loss') if c not in header]
  if missing:
    raise ConfigError(KEY, source, f'missing column(s) {missing} in header {header}; need N, D, loss (C, run optional)')
  numeric = [c for c in ('N', 'D', 'loss', 'C') if c in header]
  values = {c: [] for c in numeric}
  runs = []
  for line, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      raise ConfigError(KEY, f'{source}:{line}', f'{len(row)} fields under a {len(header)}-column header; fix the row')
    cells = dict(zip(header, (cell.strip() for cell in row)))
    for c in numeric:
      try:
        values[c].append(float(cells[c]))
      except ValueError:
        raise ConfigError(KEY, f'{source}:{line}', f'{c}={cells[c]!r} is not a number; write plain numbers') from None
    runs.append(cells.get('run', ''))
  points = Points(N=np.array(values['N']), D=np.array(values['D']), loss=np.array(values['loss']),
                  C=np.array(values['C']) if 'C' in values else None, run=tuple(runs) if 'run' in header else None)
  _check(points.N, points.D, points.loss, source, first_line=2)
  if points.C is not None and not np.all(np.isfinite(points.C) & (points.C > 0)):
    raise ConfigError(KEY, source, 'column C has a non-positive or non-finite value; fix it or drop the column')
  return points


def flops_per_token_of(points: Points) -> FlopsPerToken:
  """FLOPs per token as a function of N, read off the runs (C / D) when the CSV has C, else 6N.

  Between sampled sizes the ratio to 6N is interpolated in log N; beyond them it stays at the nearest run's (so
  extrapolated allocations keep the attention share of the largest or smallest model swept).
  """
  if points.C is None:
    return six_n
  logN, index = np.unique(np.log(points.N), return_index=True)
  ratio = (points.C / (6 * points.N * points.D))[index]
  return lambda n: 6 * np.asarray(n, float) * np.interp(np.log(n), logN, ratio)


def _interval(samples: np.ndarray, ci: float) -> list[float] | None:
  """Percentile bootstrap interval of the finite samples (a refit whose law has no compute-optimal size gives NaN
  allocations); None without any."""
  samples = np.asarray(samples, float)
  samples = samples[np.isfinite(samples)]
  if len(samples) == 0:
    return None
  lo, hi = np.quantile(samples, [(1 - ci) / 2, (1 + ci) / 2])
  return [float(lo), float(hi)]


# OpenBLAS's (get, set) thread-count symbols: scipy-openblas builds (numpy's 64-bit, scipy's 32-bit), then plain.
_OPENBLAS_THREAD_SYMBOLS = (('scipy_openblas_get_num_threads64_', 'scipy_openblas_set_num_threads64_'),
                            ('scipy_openblas_get_num_threads', 'scipy_openblas_set_num_threads'),
                            ('openblas_get_num_threads', 'openblas_set_num_threads'))


def _loaded_openblas() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
  """(get, set) thread counts of every OpenBLAS this process has loaded (numpy and scipy each bundle one).

  Found through /proc/self/maps, so Linux only; elsewhere nothing is found and nothing changes.
  """
  try:
    maps = pathlib.Path('/proc/self/maps').read_text()
  except OSError:
    return []
  paths = sorted({line.split(maxsplit=5)[5] for line in maps.splitlines()
                  if 'openblas' in line.rsplit('/', 1)[-1].lower()})
  controls = []
  for path in paths:
    library = ctypes.CDLL(path)
    for get, set_ in _OPENBLAS_THREAD_SYMBOLS:
      if hasattr(library, get) and hasattr(library, set_):
        controls.append((getattr(library, get), getattr(library, set_)))
        break
  return controls


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
  """Runs the block with OpenBLAS on one thread, then restores its thread counts.

  A fit makes ~10^4 tiny BLAS/LAPACK calls (L-BFGS-B's 2m x 2m Cholesky, polyfit's lstsq). With OpenBLAS's
  default of a thread per core, each call wakes and syncs helper threads that spin on the cores: 20 s idle but
  305 s beside 4 busy processes on 2 cores. On one thread the same fit is faster idle and slows only as the load.
  """
  controls = _loaded_openblas()
  before = [get() for get, _ in controls]
  for _, set_ in controls:
    set_(1)
  try:
    yield
  finally:
    for (_, set_), threads in zip(controls, before):
      set_(threads)


# ---------------------------------------------------------------------------------------------------- Approach 3


def _objective(theta_XW: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
               delta: float) -> tuple[np.ndarray, np.ndarray]:
  """Huber objective and its gradient for X parameter vectors (a, b, e, alpha, beta) at once.

  The three-term log-sum-exp is written out rather than calling scipy.special.logsumexp, whose input checks cost
  more than the arithmetic at these sizes (L-BFGS calls this ~10^4 times per fit).
  """
  a, b, e, alpha, beta = (theta_XW[:, i:i + 1] for i in range(NUM_PARAMS))
  zn_XM, zd_XM = a - alpha * logN, b - beta * logD
  max_XM = np.maximum(np.maximum(zn_XM, zd_XM), e)
  expn_XM, expd_XM, expe_XM = np.exp(zn_XM - max_XM), np.exp(zd_XM - max_XM), np.exp(e - max_XM)
  sum_XM = expn_XM + expd_XM + expe_XM
  r_XM = max_XM + np.log(sum_XM) - logL
  abs_XM = np.abs(r_XM)
  huber_XM = np.where(abs_XM <= delta, 0.5 * r_XM ** 2, delta * (abs_XM - 0.5 * delta))
  dr_XM = np.clip(r_XM, -delta, delta) / sum_XM  # d huber / d r over the sum: times a term's exp, d / d z
  gn_XM, gd_XM = dr_XM * expn_XM, dr_XM * expd_XM
  grad_XW = np.stack([gn_XM.sum(1), gd_XM.sum(1), (dr_XM * expe_XM).sum(1), -(gn_XM * logN).sum(1),
                      -(gd_XM * logD).sum(1)], axis=1)
  return huber_XM.sum(1), grad_XW


def _fit_once(logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float, grid_XW: np.ndarray,
              starts: int | None, extra_start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
  """Best L-BFGS solution from the `starts` lowest grid points (all if None), plus an optional warm start.

  L-BFGS runs on centred logs (a' = a - alpha mean(log N), likewise b'), the same fit with the strong a/alpha
  correlation removed, so it converges in fewer steps.
  """
  values, _ = _objective(grid_XW, logN, logD, logL, delta)
  chosen = grid_XW[np.argsort(values, kind='stable')[:starts]]
  if extra_start is not None:
    chosen = np.vstack([chosen, extra_start])
  shifts = np.array([logN.mean(), logD.mean()])

  def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
    value, grad = _objective(theta[None], logN - shifts[0], logD - shifts[1], logL, delta)
    return float(value[0]), grad[0]

  best_theta, best_value = None, np.inf
  for theta0 in chosen:
    centred = np.concatenate([theta0[:2] - theta0[3:] * shifts, theta0[2:]])
    result = optimize.minimize(fun, centred, jac=True, method='L-BFGS-B',
                               options=dict(maxiter=1000, ftol=1e-12, gtol=1e-10))
    if np.isfinite(result.fun) and result.fun < best_value:
      best_theta = np.concatenate([result.x[:2] + result.x[3:] * shifts, result.x[2:]])
      best_value = float(result.fun)
  return best_theta, best_value


# Approach 3's N_opt under a general FLOP count: a grid over ln N around the 6ND optimum, then golden sections.
_SEARCH_HALF_WIDTH = 12.0  # ln N either side: a factor of 1.6e5
_SEARCH_GRID = 481
_GOLDEN_STEPS = 60  # shrinks the bracket (two grid steps) by 0.618^60, to ~1e-14 in ln N


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """Approach 3 result; `samples` holds each bootstrap refit's (E, A, B, alpha, beta), one per row.

  `diverged` counts the bootstrap refits dropped for running off (not in `samples`). `flops_per_token` sets the
  compute units of n_opt(C) and d_opt(C); a, b and G are the law's 6ND closed form whatever it is.
  """

  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float
  samples: np.ndarray
  ci: float
  points: Points
  diverged: int = 0
  flops_per_token: FlopsPerToken = six_n

  @property
  def a(self) -> float:
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  @property
  def G(self) -> float:
    return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

  def loss(self, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    return self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta

  def loss_at_compute(self, N: np.ndarray, C: np.ndarray) -> np.ndarray:
    """L(N, D) along an isoFLOP curve: D = C / flops_per_token(N), the tokens compute C buys a model of size N."""
    return self.loss(N, np.asarray(C, float) / self.flops_per_token(N))

  def n_opt(self, C: np.ndarray) -> np.ndarray:
    """Loss-minimising parameters at compute C: the closed form under 6N, else found numerically."""
    C = np.asarray(C, float)
    closed = self.G * (C / 6) ** self.a
    return closed if self.flops_per_token is six_n else self._isoflop_minimum(C, closed)

  def d_opt(self, C: np.ndarray) -> np.ndarray:
    C = np.asarray(C, float)
    return C / self.flops_per_token(self.n_opt(C))

  def _isoflop_minimum(self, C: np.ndarray, start: np.ndarray) -> np.ndarray:
    """argmin over N of L(N, C / flops_per_token(N)) for each C: the best of a grid in ln N about `start`, refined
    by golden sections. E is left out of the values compared, so rounding sees only the terms that vary."""
    logC_K, center_U = np.log(C).reshape(-1), np.log(start).reshape(-1)

    def excess(logN):
      N = np.exp(logN)
      return self.A / N ** self.alpha + self.B * (self.flops_per_token(N) / np.exp(logC_K)[..., None]) ** self.beta

    offsets = np.linspace(-_SEARCH_HALF_WIDTH, _SEARCH_HALF_WIDTH, _SEARCH_GRID)
    grid_UX = center_U[:, None] + offsets
    best_U = np.argmin(excess(grid_UX), axis=1)
    edge_U = (best_U == 0) | (best_U == _SEARCH_GRID - 1)  # no minimum near the 6ND one (alpha or beta <= 0)
    step = offsets[1] - offsets[0]
    lo_U = grid_UX[np.arange(len(best_U)), best_U] - step
    hi_U = lo_U + 2 * step
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(_GOLDEN_STEPS):
      x1_U, x2_U = hi_U - ratio * (hi_U - lo_U), lo_U + ratio * (hi_U - lo_U)
      values = excess(np.stack([x1_U, x2_U], axis=1))
      left_U = values[:, 0] <= values[:, 1]
      hi_U, lo_U = np.where(left_U, x2_U, hi_U), np.where(left_U, lo_U, x1_U)
    return np.where(edge_U, np.nan, np.exp((lo_U + hi_U) / 2)).reshape(np.shape(C))

  def _replicas(self) -> list['ChinchillaFit']:
    return [dataclasses.replace(self, E=E, A=A, B=B, alpha=alpha, beta=beta, samples=self.samples[:0])
            for E, A, B, alpha, beta in self.samples]

  def interval(self, name: str) -> list[float] | None:
    """Bootstrap interval of a parameter or derived exponent ('alpha', 'a', 'G', ...)."""
    return _interval(np.array([getattr(r, name) for r in self._replicas()]), self.ci)

  def prediction_interval(self, name: str, C: float) -> list[float] | None:
    """Bootstrap interval of n_opt or d_opt at compute C."""
    return _interval(np.array([getattr(r, name)(C) for r in self._replicas()]), self.ci)


def fit_chinchilla(N: Sequence[float], D: Sequence[float], L: Sequence[float], *, delta: float = 1e-3,
                   grid: Sequence[Sequence[float]] = PAPER_GRID, starts: int | None = 8, bootstrap: int = 100,
                   ci: float = 0.95, seed: int = 0, flops_per_token: FlopsPerToken = six_n) -> ChinchillaFit:
  """Chinchilla Approach 3 on runs (N params, D tokens, final loss L).

  `grid` lists the start values of (a, b, e, alpha, beta); the objective is evaluated on their product and L-BFGS
  refines the `starts` best (None: every grid point, as in the paper; the best few reach the same optimum much
  faster). Each of `bootstrap` refits resamples the runs with replacement, warm-started at the full-data optimum too;
  refits that diverge (non-finite, or a log-coefficient past exp's range) are dropped and counted in `diverged`,
  and `samples` keeps the rest. `flops_per_token` only sets the units of the fit's n_opt(C) and d_opt(C).
  """
  N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
  _check(N, D, L, f'{len(N)} runs')
  grid_XW = np.array(list(itertools.product(*grid)), dtype=float)
  logN, logD, logL = np.log(N), np.log(D), np.log(L)
  rng = np.random.default_rng(seed)
  samples = []
  with one_blas_thread():
    theta, value = _fit_once(logN, logD, logL, delta, grid_XW, starts)
    for _ in range(bootstrap):
      i = rng.integers(0, len(N), len(N))
      t, _ = _fit_once(logN[i], logD[i], logL[i], delta, grid_XW, starts, extra_start=theta)
      if t is not None and np.all(np.isfinite(t)) and np.all(np.abs(t[:3]) < 700):  # else exp() would overflow
        samples.append(_natural(t))
  E, A, B, alpha, beta = _natural(theta)
  return ChinchillaFit(E=E, A=A, B=B, alpha=alpha, beta=beta, objective=value,
                       samples=np.array(samples).reshape(-1, NUM_PARAMS), ci=ci, points=Points(N=N, D=D, loss=L),
                       diverged=bootstrap - len(samples), flops_per_token=flops_per_token)


def _natural(theta: np.ndarray) -> tuple[float, ...]:
  """(a, b, e, alpha, beta) -> (E, A, B, alpha, beta)."""
  a, b, e, alpha, beta = (float(x) for x in theta)
  return math.exp(e), math.exp(a), math.exp(b), alpha, beta


# ---------------------------------------------------------------------------------------------------- Approach 2


@dataclasses.dataclass(frozen=True)
class Budget:
  """One isoFLOP curve: its runs, the parabola of loss in ln N (highest power first) and its minimum."""

  C: float
  index: np.ndarray
  parabola: np.ndarray
  n_opt: float
  d_opt: float
  loss_opt: float


@dataclasses.dataclass(frozen=True)
class IsoflopFit:
  """Approach 2 result: N_opt = n_coef C^a and D_opt = d_coef C^b over the fitted budgets.

  `samples` holds each bootstrap refit's (a, ln n_coef, b, ln d_coef), one per row; `dropped` counts the resamples
  left without 2 usable budgets (not in `samples`). `flops_per_token` turned each budget's N_opt into its D_opt.
  """

  budgets: tuple[Budget, ...]
  skipped: tuple[float, ...]
  a: float
  n_coef: float
  b: float
  d_coef: float
  samples: np.ndarray
  ci: float
  points: Points
  dropped: int = 0
  flops_per_token: FlopsPerToken = six_n

  def n_opt(self, C: np.ndarray) -> np.ndarray:
    return self.n_coef * np.asarray(C, float) ** self.a

  def d_opt(self, C: np.ndarray) -> np.ndarray:
    return self.d_coef * np.asarray(C, float) ** self.b

  def interval(self, name: str) -> list[float] | None:
    """Bootstrap interval of 'a' or 'b'."""
    return _interval(self.samples[:, {'a': 0, 'b': 2}[name]], self.ci)

  def prediction_interval(self, name: str, C: float) -> list[float] | None:
    """Bootstrap interval of n_opt or d_opt at compute C."""
    col = {'n_opt': 0, 'd_opt': 2}[name]
    return _interval(np.exp(self.samples[:, col + 1] + self.samples[:, col] * math.log(C)), self.ci)


def _group_budgets(C: np.ndarray, rel_tol: float) -> list[np.ndarray]:
  """Runs whose compute lies within rel_tol of the first run of a group share a budget."""
  order = np.argsort(C, kind='stable')
  groups, start = [], 0
  for k in range(1, len(order) + 1):
    if k == len(order) or C[order[k]] > C[order[start]] * (1 + rel_tol):
      groups.append(order[start:k])
      start = k
  return groups


def _fit_budget(C: float, index: np.ndarray, points: Points, flops_per_token: FlopsPerToken) -> Budget | None:
  """Parabola through one budget's (ln N, loss); None unless it is convex with its minimum inside the runs' N."""
  x, y = np.log(points.N[index]), points.loss[index]
  if len(np.unique(x)) < 3:
    return None
  parabola = np.polyfit(x, y, 2)
  if parabola[0] <= 0:
    return None
  x_opt = -parabola[1] / (2 * parabola[0])
  if not x.min() <= x_opt <= x.max():
    return None
  n_opt = math.exp(x_opt)
  return Budget(C=C, index=index, parabola=parabola, n_opt=n_opt, d_opt=float(C / flops_per_token(np.array(n_opt))),
                loss_opt=float(np.polyval(parabola, x_opt)))


def _power_laws(budgets: Sequence[Budget]) -> np.ndarray:
  """(a, ln n_coef, b, ln d_coef) of log-log line fits of N_opt and D_opt against C."""
  logC = np.log([u.C for u in budgets])
  a, log_n = np.polyfit(logC, np.log([u.n_opt for u in budgets]), 1)
  b, log_d = np.polyfit(logC, np.log([u.d_opt for u in budgets]), 1)
  return np.array([a, log_n, b, log_d])


def fit_isoflop_parabolas(points: Points, *, flops_per_token: FlopsPerToken = six_n, rel_tol: float = 0.05,
                          bootstrap: int = 100, ci: float = 0.95, seed: int = 0) -> IsoflopFit:
  """Chinchilla Approach 2: per compute budget a parabola of loss vs ln N, then power laws through the minima.

  Runs are grouped by compute (`points.compute(flops_per_token)`, within `rel_tol`). A budget counts when it has at
  least 3 distinct N and its parabola is convex with the minimum inside the sampled N (an extrapolated minimum says
  the sweep missed it); the others are listed in `skipped`. D_opt = C / flops_per_token(N_opt), so passing a
  detailed per-token count (e.g. built from `train.flops.flops_per_token`) keeps D_opt consistent with C. Each
  bootstrap refit resamples runs within every budget.
  """
  C = points.compute(flops_per_token)
  groups = [(float(np.exp(np.log(C[i]).mean())), i) for i in _group_budgets(C, rel_tol)]
  rng = np.random.default_rng(seed)
  samples = []
  with one_blas_thread():
    fitted = [_fit_budget(c, i, points, flops_per_token) for c, i in groups]
    budgets = tuple(u for u in fitted if u is not None)
    if len(budgets) < 2:
      raise ConfigError(KEY, f'{len(groups)} budgets, {len(budgets)} usable',
                        'need >= 2 compute budgets, each with >= 3 model sizes bracketing its loss minimum')
    for _ in range(bootstrap):
      refit = [_fit_budget(c, rng.choice(i, len(i)), points, flops_per_token) for c, i in groups]
      refit = [u for u in refit if u is not None]
      if len(refit) >= 2:
        samples.append(_power_laws(refit))
    a, log_n, b, log_d = _power_laws(budgets)
  return IsoflopFit(budgets=budgets, skipped=tuple(c for (c, _), u in zip(groups, fitted) if u is None),
                    a=float(a), n_coef=math.exp(log_n), b=float(b), d_coef=math.exp(log_d),
                    samples=np.array(samples).reshape(-1, 4), ci=ci, points=points,
                    dropped=bootstrap - len(samples), flops_per_token=flops_per_token)


# ---------------------------------------------------------------------------------------------------- Output


def _predictions(fit: ChinchillaFit | IsoflopFit, predict_flops: Sequence[float]) -> list[dict]:
  """Allocations at each budget, in the fit's compute units, with what 6ND makes of them beside."""
  rows = []
  for C in predict_flops:
    n, d = float(fit.n_opt(C)), float(fit.d_opt(C))
    row = dict(C=float(C), N_opt=n, N_opt_ci=fit.prediction_interval('n_opt', C), D_opt=d,
               D_opt_ci=fit.prediction_interval('d_opt', C), C_6ND=6 * n * d,
               flops_per_token_over_6N=float(fit.flops_per_token(np.array(n)) / (6 * n)))
    if isinstance(fit, ChinchillaFit):
      row['loss'] = float(fit.loss(n, d))
      six = dataclasses.replace(fit, flops_per_token=six_n)
      row.update(N_opt_6ND=float(six.n_opt(C)), D_opt_6ND=float(six.d_opt(C)))
    rows.append(row)
  return rows


def write_fit(fit: ChinchillaFit, out_dir: str | pathlib.Path, predict_flops: Sequence[float],
              isoflop: IsoflopFit | None = None) -> dict:
  """Writes fit.json and isoflop.png, allocation.png, frontier.png under out_dir; returns what fit.json holds.

  With Approach 2 given, Approach 3 reports in its compute units too (the fitted law does not depend on them, only
  the allocation at a given C does), so both approaches' N_opt(C) and D_opt(C) answer the same question.

  fit.json: E, A, B, alpha, beta, a, b, G, each with `<name>_ci` ([lo, hi] or null without bootstrap);
  `bootstrap` refits kept and `bootstrap_diverged` dropped; `predictions` for each budget in predict_flops: N_opt,
  D_opt (with intervals), loss, C_6ND = 6 N_opt D_opt, flops_per_token_over_6N at N_opt, and N_opt_6ND, D_opt_6ND
  (the allocation were C = 6ND, the paper's closed form). `isoflop` holds the Approach 2 exponents, its budgets'
  minima, its resamples kept and dropped, and its own predictions, or null.
  """
  if isoflop is not None:
    fit = dataclasses.replace(fit, flops_per_token=isoflop.flops_per_token)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  result = dict(num_runs=len(fit.points.N), bootstrap=len(fit.samples), bootstrap_diverged=fit.diverged,
                ci_level=fit.ci, objective=fit.objective)
  for name in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b', 'G'):
    result[name] = float(getattr(fit, name))
    result[f'{name}_ci'] = fit.interval(name)
  result['predictions'] = _predictions(fit, predict_flops)
  result['isoflop'] = None if isoflop is None else dict(
      a=isoflop.a, a_ci=isoflop.interval('a'), b=isoflop.b, b_ci=isoflop.interval('b'), n_coef=isoflop.n_coef,
      d_coef=isoflop.d_coef, bootstrap=len(isoflop.samples), bootstrap_dropped=isoflop.dropped,
      skipped_budgets=list(isoflop.skipped),
      budgets=[dict(C=u.C, N_opt=u.n_opt, D_opt=u.d_opt, C_6ND=6 * u.n_opt * u.d_opt, loss=u.loss_opt,
                    runs=len(u.index)) for u in isoflop.budgets],
      predictions=_predictions(isoflop, predict_flops))
  (out / 'fit.json').write_text(json.dumps(result, indent=2) + '\n')
  _plot(fit, isoflop, predict_flops, out)
  return result


def _plot(fit: ChinchillaFit, isoflop: IsoflopFit | None, predict_flops: Sequence[float], out: pathlib.Path) -> None:
  """Three PNGs. Figures are drawn with Agg directly (no pyplot), so no global backend is chosen or changed."""
  from matplotlib import cm, colors
  from matplotlib.figure import Figure

  pts = fit.points if isoflop is None else isoflop.points
  C_runs = pts.compute(fit.flops_per_token)
  budgets = np.array([u.C for u in isoflop.budgets]) if isoflop else np.geomspace(C_runs.min(), C_runs.max(), 5)
  norm = colors.LogNorm(min(C_runs.min(), budgets.min()), max(C_runs.max(), budgets.max()))
  cmap = cm.viridis

  fig = Figure(figsize=(7, 5), layout='constrained')
  ax = fig.add_subplot()
  ax.scatter(pts.N, pts.loss, c=cmap(norm(C_runs)), s=18, label='runs')
  for k, C in enumerate(budgets):
    n_star = float(fit.n_opt(C))
    n = np.geomspace(n_star / 10, n_star * 10, 100)
    ax.plot(n, fit.loss_at_compute(n, C), '--', color=cmap(norm(C)), lw=1, label='Approach 3' if k == 0 else None)
    ax.plot(n_star, fit.loss_at_compute(n_star, C), 'x', color='k', label='Approach 3 minimum' if k == 0 else None)
  for k, u in enumerate(isoflop.budgets if isoflop else ()):
    x = np.linspace(np.log(pts.N[u.index]).min(), np.log(pts.N[u.index]).max(), 100)
    ax.plot(np.exp(x), np.polyval(u.parabola, x), color=cmap(norm(u.C)), lw=1.5)
    ax.plot(u.n_opt, u.loss_opt, '*', color='r', ms=10, label='parabola minimum' if k == 0 else None)
  ax.set(xscale='log', xlabel='parameters N', ylabel='final loss', title='IsoFLOP curves')
  fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label='training FLOPs C')
  ax.legend(fontsize=8)
  fig.savefig(out / 'isoflop.png', dpi=100)

  C_all = np.concatenate([C_runs, np.asarray(predict_flops, float)])
  C_line = np.geomspace(C_all.min(), C_all.max(), 100)
  fig = Figure(figsize=(10, 4), layout='constrained')
  for ax, name, exponent, label in zip(fig.subplots(1, 2), ('n_opt', 'd_opt'), ('a', 'b'),
                                       ('N_opt (parameters)', 'D_opt (tokens)')):
    ax.plot(C_line, getattr(fit, name)(C_line), label=f'Approach 3: C^{getattr(fit, exponent):.3f}')
    if isoflop:
      ax.plot(C_line, getattr(isoflop, name)(C_line), ':', label=f'Approach 2: C^{getattr(isoflop, exponent):.3f}')
      ax.plot([u.C for u in isoflop.budgets], [getattr(u, name) for u in isoflop.budgets], 'o', label='isoFLOP minima')
    if len(predict_flops):
      ax.plot(predict_flops, getattr(fit, name)(np.asarray(predict_flops, float)), 'k^', label='predictions')
    ax.set(xscale='log', yscale='log', xlabel='training FLOPs C', ylabel=label)
    ax.legend(fontsize=8)
  fig.savefig(out / 'allocation.png', dpi=100)

  fig = Figure(figsize=(7, 5), layout='constrained')
  ax = fig.add_subplot()
  ax.scatter(C_runs, pts.loss, s=14, c='0.5', label='runs')
  ax.plot(C_line, fit.loss(fit.n_opt(C_line), fit.d_opt(C_line)), label='Approach 3 frontier')
  if isoflop:
    ax.plot([u.C for u in isoflop.budgets], [u.loss_opt for u in isoflop.budgets], 'r*', ms=10, label='isoFLOP minima')
  ax.axhline(fit.E, color='k', ls=':', lw=1, label=f'E = {fit.E:.3f}')
  ax.set(xscale='log', xlabel='training FLOPs C', ylabel='final loss', title='Compute-optimal loss frontier')
  ax.legend(fontsize=8)
  fig.savefig(out / 'frontier.png', dpi=100)
