"""Scaling-law fits of a sweep's final losses: Chinchilla's Approach 3 (parametric) and Approach 2 (isoFLOP parabolas).

Pure numpy/scipy so a fit runs anywhere, long after the sweep. Input is a CSV of runs (`load_points`); output is
`fit.json` and PNG plots (`write_fit`). Compute is C = 6 N D unless a FLOPs-per-token function says otherwise.

Approach 3 fits L(N, D) = E + A / N^alpha + B / D^beta, the lecture's form, as Hoffmann et al. (2022) do: with
A = exp(a), B = exp(b), E = exp(e), log L = LSE(a - alpha log N, b - beta log D, e), minimising the Huber loss
(delta 1e-3) of the log-loss residuals with L-BFGS from a grid of starts and keeping the best. Minimising L at fixed
C = 6 N D gives N_opt = G (C/6)^a, D_opt = (C/6)^b / G with a = beta / (alpha + beta), b = alpha / (alpha + beta),
G = (alpha A / (beta B))^(1 / (alpha + beta)). Uncertainty comes from the bootstrap: resample runs, refit, percentiles.
"""

import csv
import dataclasses
import itertools
import json
import math
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, special

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


def _interval(samples: np.ndarray, ci: float) -> list[float] | None:
  """Percentile bootstrap interval; None without samples."""
  if len(samples) == 0:
    return None
  lo, hi = np.quantile(samples, [(1 - ci) / 2, (1 + ci) / 2])
  return [float(lo), float(hi)]


# ---------------------------------------------------------------------------------------------------- Approach 3


def _objective(theta_GP: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
               delta: float) -> tuple[np.ndarray, np.ndarray]:
  """Huber objective and its gradient for G parameter vectors (a, b, e, alpha, beta) at once."""
  a, b, e, alpha, beta = (theta_GP[:, i:i + 1] for i in range(NUM_PARAMS))
  z_3GM = np.stack(np.broadcast_arrays(a - alpha * logN, b - beta * logD, e))
  lse_GM = special.logsumexp(z_3GM, axis=0)
  w_3GM = np.exp(z_3GM - lse_GM)  # d lse / d z
  r_GM = lse_GM - logL
  huber_GM = np.where(np.abs(r_GM) <= delta, 0.5 * r_GM ** 2, delta * (np.abs(r_GM) - 0.5 * delta))
  dr_GM = np.clip(r_GM, -delta, delta)
  grad_GP = np.stack([(dr_GM * w_3GM[0]).sum(1), (dr_GM * w_3GM[1]).sum(1), (dr_GM * w_3GM[2]).sum(1),
                      -(dr_GM * w_3GM[0] * logN).sum(1), -(dr_GM * w_3GM[1] * logD).sum(1)], axis=1)
  return huber_GM.sum(1), grad_GP


def _fit_once(logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float, grid_GP: np.ndarray,
              starts: int | None, extra_start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
  """Best L-BFGS solution from the `starts` lowest grid points (all if None), plus an optional warm start.

  L-BFGS runs on centred logs (a' = a - alpha mean(log N), likewise b'), the same fit with the strong a/alpha
  correlation removed, so it converges in fewer steps.
  """
  values, _ = _objective(grid_GP, logN, logD, logL, delta)
  chosen = grid_GP[np.argsort(values, kind='stable')[:starts]]
  if extra_start is not None:
    chosen = np.vstack([chosen, extra_start])
  shift_P = np.array([logN.mean(), logD.mean()])

  def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
    value, grad = _objective(theta[None], logN - shift_P[0], logD - shift_P[1], logL, delta)
    return float(value[0]), grad[0]

  best_theta, best_value = None, np.inf
  for theta0 in chosen:
    centred = np.concatenate([theta0[:2] - theta0[3:] * shift_P, theta0[2:]])
    result = optimize.minimize(fun, centred, jac=True, method='L-BFGS-B',
                               options=dict(maxiter=1000, ftol=1e-12, gtol=1e-10))
    if np.isfinite(result.fun) and result.fun < best_value:
      best_theta = np.concatenate([result.x[:2] + result.x[3:] * shift_P, result.x[2:]])
      best_value = float(result.fun)
  return best_theta, best_value


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """Approach 3 result; `samples` holds each bootstrap refit's (E, A, B, alpha, beta), one per row."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float
  samples: np.ndarray
  ci: float
  points: Points

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

  def n_opt(self, C: np.ndarray) -> np.ndarray:
    """Loss-minimising parameters at compute C = 6ND."""
    return self.G * (np.asarray(C, float) / 6) ** self.a

  def d_opt(self, C: np.ndarray) -> np.ndarray:
    return (np.asarray(C, float) / 6) ** self.b / self.G

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
                   ci: float = 0.95, seed: int = 0) -> ChinchillaFit:
  """Chinchilla Approach 3 on runs (N params, D tokens, final loss L).

  `grid` lists the start values of (a, b, e, alpha, beta); the objective is evaluated on their product and L-BFGS
  refines the `starts` best (None: every grid point, as in the paper; the best few reach the same optimum much
  faster). Each of `bootstrap` refits resamples the runs with replacement, warm-started at the full-data optimum too;
  refits that diverge (non-finite, or a log-coefficient past exp's range) are dropped, and `samples` keeps the rest.
  """
  N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
  _check(N, D, L, f'{len(N)} runs')
  grid_GP = np.array(list(itertools.product(*grid)), dtype=float)
  logN, logD, logL = np.log(N), np.log(D), np.log(L)
  theta, value = _fit_once(logN, logD, logL, delta, grid_GP, starts)
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(bootstrap):
    i = rng.integers(0, len(N), len(N))
    t, _ = _fit_once(logN[i], logD[i], logL[i], delta, grid_GP, starts, extra_start=theta)
    if np.all(np.isfinite(t)) and np.all(np.abs(t[:3]) < 700):  # a resample can run off to exp() overflow: drop it
      samples.append(_natural(t))
  E, A, B, alpha, beta = _natural(theta)
  return ChinchillaFit(E=E, A=A, B=B, alpha=alpha, beta=beta, objective=value,
                       samples=np.array(samples).reshape(-1, NUM_PARAMS), ci=ci, points=Points(N=N, D=D, loss=L))


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

  `samples` holds each bootstrap refit's (a, ln n_coef, b, ln d_coef), one per row.
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
  fitted = [_fit_budget(c, i, points, flops_per_token) for c, i in groups]
  budgets = tuple(u for u in fitted if u is not None)
  if len(budgets) < 2:
    raise ConfigError(KEY, f'{len(groups)} budgets, {len(budgets)} usable',
                      'need >= 2 compute budgets, each with >= 3 model sizes bracketing its loss minimum')
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(bootstrap):
    refit = [_fit_budget(c, rng.choice(i, len(i)), points, flops_per_token) for c, i in groups]
    refit = [u for u in refit if u is not None]
    if len(refit) >= 2:
      samples.append(_power_laws(refit))
  a, log_n, b, log_d = _power_laws(budgets)
  return IsoflopFit(budgets=budgets, skipped=tuple(c for (c, _), u in zip(groups, fitted) if u is None),
                    a=float(a), n_coef=math.exp(log_n), b=float(b), d_coef=math.exp(log_d),
                    samples=np.array(samples).reshape(-1, 4), ci=ci, points=points)


# ---------------------------------------------------------------------------------------------------- Output


def _predictions(fit: ChinchillaFit | IsoflopFit, predict_flops: Sequence[float]) -> list[dict]:
  rows = []
  for C in predict_flops:
    n, d = float(fit.n_opt(C)), float(fit.d_opt(C))
    row = dict(C=float(C), N_opt=n, N_opt_ci=fit.prediction_interval('n_opt', C), D_opt=d,
               D_opt_ci=fit.prediction_interval('d_opt', C))
    if isinstance(fit, ChinchillaFit):
      row['loss'] = float(fit.loss(n, d))
    rows.append(row)
  return rows


def write_fit(fit: ChinchillaFit, out_dir: str | pathlib.Path, predict_flops: Sequence[float],
              isoflop: IsoflopFit | None = None) -> dict:
  """Writes fit.json and isoflop.png, allocation.png, frontier.png under out_dir; returns what fit.json holds.

  fit.json: E, A, B, alpha, beta, a, b, G, each with `<name>_ci` ([lo, hi] or null without bootstrap), and
  `predictions` of N_opt, D_opt (with intervals) and loss for each budget in predict_flops; `isoflop` holds the
  Approach 2 exponents, its budgets' minima and its own predictions, or null.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  result = dict(num_runs=len(fit.points.N), bootstrap=len(fit.samples), ci_level=fit.ci, objective=fit.objective)
  for name in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b', 'G'):
    result[name] = float(getattr(fit, name))
    result[f'{name}_ci'] = fit.interval(name)
  result['predictions'] = _predictions(fit, predict_flops)
  result['isoflop'] = None if isoflop is None else dict(
      a=isoflop.a, a_ci=isoflop.interval('a'), b=isoflop.b, b_ci=isoflop.interval('b'), n_coef=isoflop.n_coef,
      d_coef=isoflop.d_coef, bootstrap=len(isoflop.samples), skipped_budgets=list(isoflop.skipped),
      budgets=[dict(C=u.C, N_opt=u.n_opt, D_opt=u.d_opt, loss=u.loss_opt, runs=len(u.index)) for u in isoflop.budgets],
      predictions=_predictions(isoflop, predict_flops))
  (out / 'fit.json').write_text(json.dumps(result, indent=2) + '\n')
  _plot(fit, isoflop, predict_flops, out)
  return result


def _plot(fit: ChinchillaFit, isoflop: IsoflopFit | None, predict_flops: Sequence[float], out: pathlib.Path) -> None:
  """Three PNGs. Figures are drawn with Agg directly (no pyplot), so no global backend is chosen or changed."""
  from matplotlib import cm, colors
  from matplotlib.figure import Figure

  pts = fit.points if isoflop is None else isoflop.points
  C_runs = pts.compute()
  budgets = np.array([u.C for u in isoflop.budgets]) if isoflop else np.geomspace(C_runs.min(), C_runs.max(), 5)
  norm = colors.LogNorm(min(C_runs.min(), budgets.min()), max(C_runs.max(), budgets.max()))
  cmap = cm.viridis

  fig = Figure(figsize=(7, 5), layout='constrained')
  ax = fig.add_subplot()
  ax.scatter(pts.N, pts.loss, c=cmap(norm(C_runs)), s=18, label='runs')
  for k, C in enumerate(budgets):
    n_star = float(fit.n_opt(C))
    n = np.geomspace(n_star / 10, n_star * 10, 100)
    ax.plot(n, fit.loss(n, C / (6 * n)), '--', color=cmap(norm(C)), lw=1, label='Approach 3' if k == 0 else None)
    ax.plot(n_star, fit.loss(n_star, C / (6 * n_star)), 'x', color='k', label='Approach 3 minimum' if k == 0 else None)
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


def run(points_path: str | pathlib.Path, out_dir: str | pathlib.Path, predict_flops: Sequence[float], *,
        bootstrap: int = 100, starts: int | None = 8, seed: int = 0) -> dict:
  """`--mode=fit`: both approaches on a points CSV; Approach 2 is left out (null) when the runs are no isoFLOP sweep."""
  points = load_points(points_path)
  fit = fit_chinchilla(points.N, points.D, points.loss, starts=starts, bootstrap=bootstrap, seed=seed)
  try:
    isoflop = fit_isoflop_parabolas(points, bootstrap=bootstrap, seed=seed)
  except ConfigError:
    isoflop = None
  return write_fit(fit, out_dir, predict_flops, isoflop)
