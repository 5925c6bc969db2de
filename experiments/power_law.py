"""Loss against compute as a power law, L(C) = A * C^-alpha, per variant of a comparison, and where two cross.

A line fitted by least squares to (ln C, ln L) over a variant's budgets; alpha's interval is the t-interval of the
slope (n - 2 degrees of freedom), so it needs 3 or more budgets and is wide with few. Pure numpy/scipy.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(C) = A * C^-alpha, fitted to len(C) points; `alpha_ci` is None with fewer than 3."""

  A: float
  alpha: float
  alpha_ci: tuple[float, float] | None
  residual: float  # root-mean-square residual of ln L

  def __call__(self, C: np.ndarray) -> np.ndarray:
    return self.A * np.asarray(C, float) ** -self.alpha


def fit(C: Sequence[float], L: Sequence[float], ci: float = 0.95) -> PowerLaw:
  """The power law through (C, L) in log-log; needs 2 or more distinct budgets and positive losses."""
  x, y = np.log(np.asarray(C, float)), np.log(np.asarray(L, float))
  if len(np.unique(x)) < 2 or not np.all(np.isfinite(y)):
    raise ValueError(f'a power law needs >= 2 budgets with finite positive losses, got C={list(C)}, L={list(L)}')
  slope, intercept = np.polyfit(x, y, 1)
  residuals = y - (intercept + slope * x)
  interval = None
  if len(x) >= 3:
    dof = len(x) - 2
    stderr = math.sqrt(float(residuals @ residuals) / dof / float(((x - x.mean()) ** 2).sum()))
    half = stats.t.ppf((1 + ci) / 2, dof) * stderr
    interval = (float(-slope - half), float(-slope + half))
  return PowerLaw(A=float(math.exp(intercept)), alpha=float(-slope), alpha_ci=interval,
                  residual=float(np.sqrt(np.mean(residuals ** 2))))


def crossing(a: PowerLaw, b: PowerLaw) -> float | None:
  """The compute at which a and b predict the same loss; None for parallel laws."""
  if math.isclose(a.alpha, b.alpha, rel_tol=0, abs_tol=1e-12):
    return None
  return math.exp((math.log(a.A) - math.log(b.A)) / (a.alpha - b.alpha))
