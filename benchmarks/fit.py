"""Wall time of `--mode=fit` (both Chinchilla approaches, bootstrap refits, fit.json and plots) on a synthetic sweep.

  .venv/bin/python benchmarks/fit.py --points=123 --bootstrap=100

The sweep looks like a real one: 9 isoFLOP budgets from 1e18 to 1e21 FLOPs, 13 or 14 sizes each spanning x1/10 to
x10 about a guess of the optimum that is off by a random factor, FLOPs per token of 6N plus attention
(6N (1 + s / 6d), s = 2048, depth d / 128) written to the CSV's C, and Chinchilla's law with 0.5% log-normal noise.
Prints one JSON object: points, bootstraps, seconds, the load average before and after, and the fitted exponents.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import scaling  # noqa: E402

LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. (2022), Approach 3
BUDGETS = np.geomspace(1e18, 1e21, 9)
SEQ_LEN = 2048


def flops_per_token(N: np.ndarray) -> np.ndarray:
  """6N (1 + s / 6d) for models of depth d / 128, where N = 12 L d^2 = 12 d^3 / 128."""
  d = (128 * N / 12) ** (1 / 3)
  return 6 * N * (1 + SEQ_LEN / (6 * d))


def synthetic_sweep(num_points: int, seed: int) -> str:
  """The sweep as CSV text (run, N, D, C, loss): sizes spread as evenly as possible over the budgets."""
  rng = np.random.default_rng(seed)
  E, A, B, alpha, beta = (LAW[k] for k in ('E', 'A', 'B', 'alpha', 'beta'))
  G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
  sizes = np.full(len(BUDGETS), num_points // len(BUDGETS))
  sizes[:num_points % len(BUDGETS)] += 1
  rows = ['run,N,D,C,loss']
  for C, size in zip(BUDGETS, sizes):
    guess = G * (C / 6) ** (beta / (alpha + beta)) * np.exp(rng.normal(0, 0.3))
    for N in guess * np.geomspace(0.1, 10, size):
      D = C / flops_per_token(N)
      loss = (E + A / N ** alpha + B / D ** beta) * np.exp(rng.normal(0, 0.005))
      rows.append(f'C{C:.0e}_N{N:.3g},{N:.17g},{D:.17g},{C:.17g},{loss:.17g}')
  return '\n'.join(rows) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--points', type=int, default=123)
  parser.add_argument('--bootstrap', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    csv = pathlib.Path(tmp, 'points.csv')
    csv.write_text(synthetic_sweep(args.points, args.seed))
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = scaling.fit(csv, pathlib.Path(tmp, 'out'), [1e22, 1e23], bootstrap=args.bootstrap, seed=args.seed)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()
  print(json.dumps(dict(points=args.points, bootstraps=args.bootstrap, seconds=round(seconds, 2),
                        load_average_before=[round(x, 2) for x in load_before],
                        load_average_after=[round(x, 2) for x in load_after], cpus=os.cpu_count(),
                        alpha=result['alpha'], beta=result['beta'], isoflop_a=(result['isoflop'] or {}).get('a'))))


if __name__ == '__main__':
  main()
