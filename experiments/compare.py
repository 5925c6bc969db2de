"""--mode=compare: train each objective at the same training-FLOP budget, score every model on the shared probes.

Same compute. Every objective trains the same model on the same batches (batch k is the same rows whatever the
objective) with the same training FLOPs C = `compare.flops_budget`. A step costs batch_size x seq_len x
flops_per_token(objective): every position runs forward and backward whatever the objective scores, so the scored
tokens (every token for causal, the suffix for prefix_lm, 15% for masked_lm) change the signal per step, not its cost.
flops_per_token differs between objectives only where the attention path skips the blocks above the diagonal, which
only a causal mask allows (`train.flops.train_flops_per_token`); so with vanilla attention all objectives run the
same steps, and with blockwise attention causal runs more steps for the same C. steps = floor(C / FLOPs per step).

Each objective trains in WORKDIR/compare/<objective>/ with `train.trainer.train`, on the command's runtime (one mesh
and one opened dataset for every objective), so an interrupted run resumes and a finished one (its checkpoint at
the planned step exists) is skipped. Results come from each run's metrics.jsonl.
"""

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from configs.errors import ConfigError
from configs.sections import Config
from train import flops as flops_lib
from train import probes
from train import trainer
from train.runtime import Runtime

# Keys that may change between a run and its resumption without changing what is trained (compare.* only picks
# which runs there are; a new budget shows up as new train.steps).
RESUMABLE_KEYS = ('train.log_every', 'train.eval_every', 'checkpoint.every_steps', 'checkpoint.keep',
                  'data.cache_dir')


@dataclasses.dataclass(frozen=True)
class Plan:
  """One objective's share of the study."""

  objective: str
  steps: int
  flops_per_token: float
  tokens_per_step: int

  @property
  def flops_per_step(self) -> float:
    return self.flops_per_token * self.tokens_per_step

  @property
  def training_flops(self) -> float:
    return self.steps * self.flops_per_step


def objective_config(config: Config, objective: str, steps: int = 0) -> Config:
  """The study's config with one objective and its planned steps (0 keeps train.steps)."""
  return config.override({'objective': objective, **({'train.steps': steps} if steps else {})})


def make_plans(config: Config) -> tuple[float, list[Plan]]:
  """Gives every objective its steps for the budget; returns (budget, plans), builds nothing."""
  if not config.train.eval_probes:
    raise ConfigError('train.eval_probes', False, 'compare scores every objective on the shared probes; set True')
  listed = config.compare.objectives
  tokens_per_step = config.train.batch_size * config.data.seq_len
  per_token = {name: flops_lib.train_flops_per_token(objective_config(config, name)) for name in listed}
  budget = config.compare.flops_budget or config.train.steps * tokens_per_step * max(per_token.values())
  plans = [Plan(name, int(budget // (tokens_per_step * fpt)), fpt, tokens_per_step) for name, fpt in per_token.items()]
  for p in plans:
    if p.steps < 1:
      raise ConfigError('compare.flops_budget', budget, f'less than one step of {p.objective} '
                        f'({p.flops_per_step:.3g} FLOPs); raise it')
  return float(budget), plans


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out |= _flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v}
  return out


def _check_resumable(config: Config, run_dir: str) -> None:
  """A run dir trained under another config (budget, model, data...) would mix two runs in one curve: refuse."""
  path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(json.dumps(config.to_dict())))
  for key in sorted(set(old) | set(new)):
    if key not in RESUMABLE_KEYS and not key.startswith('compare.') and old.get(key) != new.get(key):
      raise ConfigError('--workdir', run_dir, f'it was trained with {key}={old.get(key)!r}, now {new.get(key)!r}; '
                        'use a new --workdir or delete that run to restart it')


def _is_finished(config: Config, run_dir: str) -> bool:
  """Its checkpoint at the planned step exists (the trainer writes the final evaluation before saving it)."""
  from train import checkpoint  # orbax: imported when a study runs, not when its config is checked

  return (checkpoint.latest_step(os.path.join(run_dir, 'checkpoints')) or 0) >= config.train.steps


def _eval_rows(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if 'eval/loss' in r]


def run(runtime: Runtime, config: Config, workdir: str) -> dict:
  """Train (or resume, or skip) every listed objective, then (process 0) write results.{json,csv,md} and plots."""
  budget, plans = make_plans(config)
  root = os.path.join(workdir, 'compare')
  configs = {p.objective: objective_config(config, p.objective, p.steps) for p in plans}
  for p in plans:
    _check_resumable(configs[p.objective], os.path.join(root, p.objective))
  is_main = runtime.is_main
  for i, p in enumerate(plans):
    run_dir, cfg = os.path.join(root, p.objective), configs[p.objective]
    header = f'[{i + 1}/{len(plans)}] {p.objective}: {p.steps} steps, {p.training_flops:.3g} training FLOPs'
    if _is_finished(cfg, run_dir):
      if is_main:
        print(f'{header}: finished, skipping', flush=True)
      continue
    if is_main:
      print(header, flush=True)
      os.makedirs(run_dir, exist_ok=True)
      with open(os.path.join(run_dir, 'config.json'), 'w') as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)
    trainer.train(runtime.run(cfg, run_dir))
    if not _is_finished(cfg, run_dir):  # preempted: the trainer saved and said so; the next objectives wait too
      return {}
  if not is_main:
    return {}
  results = collect(plans, root, budget)
  write_results(results, root)
  print(markdown_table(results), flush=True)
  print(f'wrote {root}/results.json, results.csv, results.md and probe_*.png', flush=True)
  return results


def collect(plans: list[Plan], root: str, budget: float) -> dict:
  """Per objective: steps, FLOPs, the final evaluation (own loss and every probe) and the eval curve."""
  out = {'flops_budget': budget, 'objectives': {}}
  for p in plans:
    run_dir = os.path.join(root, p.objective)
    rows = _eval_rows(run_dir)
    final = next((r for r in reversed(rows) if r['step'] == p.steps), None)
    if final is None:
      raise ConfigError('--workdir', run_dir, f'its metrics.jsonl has no evaluation at step {p.steps}; delete that '
                        'run to train it again')
    out['objectives'][p.objective] = {
        'steps': p.steps, 'tokens': p.steps * p.tokens_per_step, 'flops_per_token': p.flops_per_token,
        'training_flops': p.training_flops, **{k: v for k, v in final.items() if k != 'step'},
        'curve': [{'step': r['step'], 'training_flops': r['step'] * p.flops_per_step,
                   **{k: v for k, v in r.items() if k.endswith('/loss')}} for r in rows]}
  return out


def markdown_table(results: dict) -> str:
  """Final losses (nats per scored token), the best of each probe in bold, then the probe accuracies."""
  runs = results['objectives']

  def table(metric: str, best: Callable, fmt: str) -> list[str]:
    cols = [f'probe/{r}/{metric}' for r in probes.READINGS]
    tops = {c: best(v[c] for v in runs.values()) for c in cols}
    head = ['objective', 'steps', 'training FLOPs', f'own {metric}', *probes.READINGS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, v in runs.items():
      cells = [format(v[c], fmt) if v[c] != tops[c] else f'**{v[c]:{fmt}}**' for c in cols]
      lines.append(f'| {name} | {v["steps"]} | {v["training_flops"]:.3g} | {v[f"eval/{metric}"]:{fmt}} | '
                   + ' | '.join(cells) + ' |')
    return lines

  return '\n'.join([f'Training FLOPs budget per objective: {results["flops_budget"]:.3g}', '',
                    'Loss (nats per scored token; lower is better):', '', *table('loss', min, '.4f'), '',
                    'Accuracy (higher is better):', '', *table('accuracy', max, '.4f')]) + '\n'


def write_results(results: dict, root: str) -> None:
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  rows = [{'objective': name, **{k: v for k, v in r.items() if k != 'curve'}}
          for name, r in results['objectives'].items()]
  with open(os.path.join(root, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(root, 'results.md'), 'w') as f:
    f.write(markdown_table(results))
  for reading in probes.READINGS:
    plot_probe(results, reading, os.path.join(root, f'probe_{reading}.png'))


def plot_probe(results: dict, reading: str, path: str) -> None:
  """One probe's validation loss against training FLOPs, a line per objective (Agg canvas: no display needed)."""
  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  key = f'probe/{reading}/loss'
  for name, r in results['objectives'].items():
    curve = [c for c in r['curve'] if math.isfinite(c.get(key, math.nan))]
    ax.plot([c['training_flops'] for c in curve], [c[key] for c in curve], marker='o', markersize=3, label=name)
  ax.set_xlabel('training FLOPs')
  ax.set_ylabel('loss (nats per scored token)')
  ax.set_title(f'probe {reading}')
  ax.grid(alpha=0.3)
  ax.legend(title='trained on')
  fig.tight_layout()
  fig.savefig(path)
