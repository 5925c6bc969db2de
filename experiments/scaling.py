"""`--mode=scaling` (an isoFLOP sweep of training runs, then the fit) and `--mode=fit` (the fit of a points CSV).

The sweep trains, at every budget C in `scaling.flops`, the widths of `scaling.d_models` whose size lies in a window
around N_c = centre_coefficient * C^centre_exponent (`plan`), so that each isoFLOP curve brackets its minimum. The
width/depth rule (`model_for`): num_layers = max(1, round(d_model / aspect_ratio)), num_heads = num_kv_heads =
d_model / head_dim, d_ff = round(ffn_ratio * d_model); so N grows about as d_model^3 and every size keeps the same
shape. Each run trains on D = C / flops_per_token tokens (train.flops: 6N plus the attention the path executes, as
the trainer counts it), rounded up to whole steps, with its own cosine schedule over exactly those steps
(Chinchilla's point: a schedule longer than the run overstates its loss).

Layout under WORKDIR/scaling/: runs/<run id>/ (an ordinary train workdir plus config.json, and result.json once
finished; a run with result.json is skipped, an unfinished one resumes from its checkpoint), points.csv and
points.md (N, D, C, loss, run, ...), fit.json and the PNG plots of experiments.scaling_fit.

N in points.csv is the total parameter count, embeddings included, as Chinchilla fits it: with tied embeddings
6 * N_total is (norm scales aside) exactly the 6N part of the FLOP count that sizes D, so N and C = 6ND agree, and
Pearce & Song (2024) trace much of the Kaplan/Chinchilla exponent gap to dropping embeddings at small N.

jax and the trainer are imported inside the sweep's functions only, so `fit` runs wherever numpy and scipy do.
"""

import csv
import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Sequence

from typing import TYPE_CHECKING

import numpy as np

from configs.errors import ConfigError
from configs.sections import Config, ModelConfig, ScalingConfig
from experiments import scaling_fit
from train import flops as flops_lib

if TYPE_CHECKING:  # jax and the trainer load only when a sweep runs
  from train.runtime import Runtime

# Hoffmann et al. (2022): Approach 3's L(N, D) (their data and tokenizer) and both approaches' allocation exponents.
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, a=0.46, b=0.54)
CHINCHILLA_APPROACH_2 = dict(a=0.49, b=0.51)
RESULT_SECTIONS = ('seed', 'objective', 'objectives', 'model', 'data', 'train')
FIT_OUTPUTS = ('fit.json', 'isoflop.png', 'allocation.png', 'frontier.png')
POINT_COLUMNS = ('N', 'D', 'C', 'loss', 'run', 'N_non_embedding', 'd_model', 'num_layers', 'steps')


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One sweep run: its id, budget, config and the numbers that go into points.csv."""

  run: str
  C: float
  config: Config
  N: int
  N_non_embedding: int
  steps: int
  tokens: int


def _shape(s: ScalingConfig, d_model: int) -> dict[str, int]:
  """The width/depth rule (module docstring) for width d_model, as config overrides."""
  heads = d_model // s.head_dim
  return {'model.d_model': d_model, 'model.num_layers': max(1, round(d_model / s.aspect_ratio)),
          'model.num_heads': heads, 'model.num_kv_heads': heads, 'model.head_dim': 0,
          'model.d_ff': max(1, round(s.ffn_ratio * d_model))}


def model_for(config: Config, d_model: int) -> ModelConfig:
  """config.model resized to width d_model by the width/depth rule."""
  return config.override(_shape(config.scaling, d_model)).model


def _run_id(C: float, model: ModelConfig) -> str:
  return f'C{C:.3g}_d{model.d_model}_L{model.num_layers}'.replace('+', '')


def plan(runtime: 'Runtime', config: Config) -> list[PlannedRun]:
  """Every run of the sweep, budget by budget, smallest width first; each run config is validated here.

  With `scaling.window` a budget C trains the widths whose N lies within a factor `window` of
  N_c = centre_coefficient * C^centre_exponent (fewer than 3 is an error: no parabola); with 0, every width.
  D = C / executed FLOPs per token (the trainer's count), rounded up to whole steps; fewer than
  `scaling.min_steps` steps is an error.
  """
  import jax

  from configs.validate import validate

  s, t, data = config.scaling, config.train, config.data
  tokens_per_step = t.batch_size * data.seq_len
  runs = []
  for C in s.flops:
    centre = s.centre_coefficient * C ** s.centre_exponent
    sized = [config.override(_shape(s, d_model)) for d_model in s.d_models]
    counts = [flops_lib.count_params(c.model) for c in sized]
    if s.window:
      chosen = [(c, n) for c, n in zip(sized, counts) if centre / s.window <= n['total'] <= centre * s.window]
      if len(chosen) < 3:
        raise ConfigError('scaling.window', s.window,
                          f'at C={C:.3g} only {len(chosen)} of scaling.d_models have N within x{s.window:g} of '
                          f'N_c={centre:.3g}; an isoFLOP parabola needs 3: add widths or widen the window')
    else:
      chosen = list(zip(sized, counts))
    for cfg, n in chosen:
      steps = math.ceil(C / runtime.executed_flops_per_token(cfg) / tokens_per_step)
      if steps < s.min_steps:
        raise ConfigError('scaling.flops', tuple(s.flops), f'at C={C:.3g} width {cfg.model.d_model} trains {steps} '
                          f'steps < scaling.min_steps={s.min_steps}; raise the budget or lower train.batch_size')
      cfg = cfg.override({'train.steps': steps, 'train.warmup_steps': round(s.warmup_fraction * steps),
                          'train.eval_every': 0, 'train.log_every': min(t.log_every, steps),
                          'checkpoint.every_steps': steps, 'checkpoint.keep': 1})
      validate(cfg, jax.device_count())
      runs.append(PlannedRun(run=_run_id(C, cfg.model), C=float(C), config=cfg, N=n['total'],
                             N_non_embedding=n['non_embedding'], steps=steps, tokens=steps * tokens_per_step))
  return runs


def _settings(cfg: Config) -> dict:
  """The config sections a run's loss depends on (not logging, caching, checkpointing or the mesh), as JSON."""
  values = cfg.to_dict()
  settings = {key: values[key] for key in RESULT_SECTIONS}
  settings['data'].pop('cache_dir')
  settings['train'].pop('log_every')
  return json.loads(json.dumps(settings))


def _first_difference(old: dict, new: dict, prefix: str = '') -> str:
  """The first key set in both with different values; keys added to the config since `old` was written pass."""
  for key in sorted(set(old) & set(new)):
    a, b = old[key], new[key]
    if isinstance(a, dict) and isinstance(b, dict):
      found = _first_difference(a, b, f'{prefix}{key}.')
      if found:
        return found
    elif a != b:
      return f'{prefix}{key} was {a!r}, now {b!r}'
  return ''


def _finished(run: PlannedRun, run_dir: pathlib.Path) -> bool:
  """Whether the run's checkpoint is at its last step (the trainer returns early, without an eval, when preempted)."""
  from train import checkpoint

  return checkpoint.latest_step(str(run_dir / 'checkpoints')) == run.steps


def _train_or_load(runtime: 'Runtime', run: PlannedRun, run_dir: pathlib.Path) -> tuple[float | None, bool]:
  """(final eval loss, whether it was trained now); the loss is None when training was preempted.

  result.json marks a finished run; any other run trains, resuming from its checkpoint if it has one.
  """
  from train import evaluate, trainer

  config_path, result_path = run_dir / 'config.json', run_dir / 'result.json'
  settings = _settings(run.config)
  if config_path.exists():
    difference = _first_difference(json.loads(config_path.read_text()), settings)
    if difference:
      raise ConfigError('--workdir', str(run_dir), f'holds run {run.run} of another sweep ({difference}); '
                        'use a fresh --workdir or delete that run directory')
  if result_path.exists():
    return json.loads(result_path.read_text())['loss'], False
  if runtime.is_main:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + '\n')
  start = time.time()
  result = trainer.train(runtime.run(run.config, str(run_dir)))
  if 'eval/loss' not in result:
    if not _finished(run, run_dir):
      return None, True
    # killed after its last checkpoint, before result.json
    result = evaluate.evaluate_checkpoint(runtime.run(run.config, str(run_dir)))
  if runtime.is_main:
    record = dict(run=run.run, N=run.N, D=run.tokens, C=run.C, loss=result['eval/loss'], steps=run.steps,
                  seconds=round(time.time() - start, 1))
    result_path.write_text(json.dumps(record, indent=2) + '\n')
  return result['eval/loss'], True


def _write_points(runs: list[PlannedRun], losses: list[float], out: pathlib.Path) -> pathlib.Path:
  """points.csv (what `--mode=fit` reads) and the same rows as a Markdown table."""
  rows = [(r.N, r.tokens, r.C, loss, r.run, r.N_non_embedding, r.config.model.d_model, r.config.model.num_layers,
           r.steps) for r, loss in zip(runs, losses)]
  path = out / 'points.csv'
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(POINT_COLUMNS)
    writer.writerows([(n, d, f'{c:.6g}', f'{loss:.6f}', *rest) for n, d, c, loss, *rest in rows])
  table = ['| ' + ' | '.join(POINT_COLUMNS) + ' |', '|' + ' --- |' * len(POINT_COLUMNS)]
  table += [f'| {n:,} | {d:,} | {c:.3g} | {loss:.4f} | {run} | {ne:,} | {dm} | {nl} | {st} |'
            for n, d, c, loss, run, ne, dm, nl, st in rows]
  (out / 'points.md').write_text('\n'.join(table) + '\n')
  return path


def sweep(runtime: 'Runtime', config: Config, workdir: str) -> dict | None:
  """`--mode=scaling`: train (or skip) every run, write points.csv, then fit; returns fit.json's content or None."""
  runs = plan(runtime, config)
  out = pathlib.Path(workdir) / 'scaling'
  is_main = runtime.is_main
  losses = []
  for k, run in enumerate(runs, start=1):
    if is_main:
      print(f'[scaling {k}/{len(runs)}] {run.run}: N={run.N:,} D={run.tokens:,} C={run.C:.3g} ({run.steps} steps)',
            flush=True)
    loss, trained = _train_or_load(runtime, run, out / 'runs' / run.run)
    if loss is None:
      if is_main:
        print('the sweep stops here; run the same command again to resume it', flush=True)
      return None
    if is_main and not trained:
      print(f'  finished before: eval/loss {loss:.4f}', flush=True)
    losses.append(loss)
  if not is_main:
    return None
  points = _write_points(runs, losses, out)
  print(f'wrote {points} ({len(runs)} runs)', flush=True)
  try:
    return fit(points, out, config.scaling.predict_flops, config.scaling.bootstrap, config.seed)
  except ConfigError as e:
    for name in FIT_OUTPUTS:  # an older fit would no longer describe points.csv
      (out / name).unlink(missing_ok=True)
    print(f'fit skipped: {e}', flush=True)
    return None


def fit(points_path: str | os.PathLike, out_dir: str | os.PathLike, predict_flops: Sequence[float], bootstrap: int,
        seed: int) -> dict:
  """Approach 3 and (where the points form isoFLOP curves) Approach 2, both in the sweep's compute units (C / D of
  the runs when the CSV has C, else 6N); writes fit.json and plots, prints a summary."""
  points = scaling_fit.load_points(points_path)
  flops_per_token = scaling_fit.flops_per_token_of(points)
  try:
    approach_3 = scaling_fit.fit_chinchilla(points.N, points.D, points.loss, bootstrap=bootstrap, seed=seed,
                                            flops_per_token=flops_per_token)
  except OverflowError:
    raise ConfigError(scaling_fit.KEY, str(points_path), 'Approach 3 (or a bootstrap refit of it) ran off to A, B or E '
                      'beyond float range: these runs do not follow E + A/N^alpha + B/D^beta; add runs or budgets, '
                      'or set scaling.bootstrap=0') from None
  try:
    approach_2 = scaling_fit.fit_isoflop_parabolas(points, flops_per_token=flops_per_token, bootstrap=bootstrap,
                                                   seed=seed)
  except ConfigError as e:
    print(f'Approach 2 skipped: {e.value}: {e.fix}', flush=True)
    approach_2 = None
  result = scaling_fit.write_fit(approach_3, out_dir, predict_flops, approach_2)
  print(summary(result, pathlib.Path(out_dir)), flush=True)
  return result


def _ci(interval: list[float] | None) -> str:
  return '' if interval is None else f'[{interval[0]:.4g}, {interval[1]:.4g}]'


def summary(result: dict, out_dir: pathlib.Path) -> str:
  """fit.json as a table beside Chinchilla's published values, then the predictions."""
  level = f'{100 * result["ci_level"]:.0f}% interval' if result['bootstrap'] else 'interval (no bootstrap)'
  dropped = f'; {result["bootstrap_diverged"]} diverged refits dropped' if result['bootstrap_diverged'] else ''
  lines = [f'Approach 3 on {result["num_runs"]} runs (L = E + A/N^alpha + B/D^beta; N_opt ~ C^a, D_opt ~ C^b)'
           f'{dropped}:',
           f'  {"":8s} {"fit":>10s}  {level:26s} {"Chinchilla":>10s}']
  for name in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b'):
    lines.append(f'  {name:8s} {result[name]:10.4g}  {_ci(result[name + "_ci"]):26s} {CHINCHILLA[name]:10.4g}')
  iso = result['isoflop']
  if iso:
    lines.append(f'Approach 2 on {len(iso["budgets"])} isoFLOP curves (parabola minima; skipped budgets: '
                 f'{iso["skipped_budgets"] or "none"}):')
    for name in ('a', 'b'):
      lines.append(f'  {name:8s} {iso[name]:10.4g}  {_ci(iso[name + "_ci"]):26s} {CHINCHILLA_APPROACH_2[name]:10.4g}')
  lines.append('Predictions (Approach 3' + (', Approach 2' if iso else '') + '):')
  for k, p in enumerate(result['predictions']):
    line = f'  C={p["C"]:.3g}: N_opt {p["N_opt"]:.3g} D_opt {p["D_opt"]:.3g} loss {p["loss"]:.4f}'
    if iso:
      q = iso['predictions'][k]
      line += f' | N_opt {q["N_opt"]:.3g} D_opt {q["D_opt"]:.3g}'
    lines.append(line)
  lines.append(f'wrote {", ".join(str(out_dir / name) for name in FIT_OUTPUTS)}')
  return '\n'.join(lines)


def fit_only(config: Config, workdir: str) -> dict:
  """`--mode=fit`: the fit of scaling.points into WORKDIR/scaling/."""
  if not config.scaling.points:
    raise ConfigError('scaling.points', '', 'set --config.scaling.points=FILE.csv (columns N, D, loss), e.g. a '
                      'sweep\'s WORKDIR/scaling/points.csv')
  s = config.scaling
  return fit(s.points, pathlib.Path(workdir) / 'scaling', s.predict_flops, s.bootstrap, config.seed)
