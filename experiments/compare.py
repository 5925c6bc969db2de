"""--mode=compare: train every variant at every compute budget, score each model on the shared probes, and fit how
each variant's probe losses scale with compute against the first (baseline) variant.

Variants. `compare.variants` names sets of config overrides ("causal: objective=causal; enc: objective=prefix_lm
model.architecture=encoder_decoder"): objective, architecture, tokenizer, attention path, width... Every variant
trains on the same text with the same seed; the mesh is the command's.

Same compute. A run of budget C trains floor(C / (tokens per step x executed FLOPs per token)) steps, where the
executed FLOPs count the attention block pairs the variant's path computes on its own batches (train/flops.py,
`Run.attended_keys`): vanilla attention computes the full square whatever the mask, blockwise and ring skip hidden
blocks (causal futures, other documents, padding), so a variant is credited exactly the work it does. Every
position runs forward and backward whatever the objective scores, so scored tokens change the signal, not the cost.

Same yardstick. The probes (train/probes.py) score every model on the same validation tokens; across variants that
tokenize differently only bits per byte compares, so tables, fits and plots use each probe's bits per byte.

Runs live in WORKDIR/compare/<variant>/C<budget>/ (ordinary train workdirs): an interrupted run resumes, a finished
one is skipped, one trained under another config is refused. loss_by_position.png: each variant's own-objective
validation loss against tokens of context at the largest budget. A run's warmup is train.warmup_steps, at most a tenth
of its steps, and its cosine decays over exactly its steps. Results: results.json/csv/md, probe_<reading>.png.
"""

import csv
import dataclasses
import json
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from configs.errors import ConfigError
from configs.sections import Config
from experiments import power_law
from train import flops as flops_lib
from train import probes
from train import trainer
from train.metrics import loss_by_position, plot_loss_by_position
from train.runtime import Run, Runtime

READINGS = probes.READINGS
METRIC = 'bits_per_byte'  # the one unit every variant's probes share, whatever its tokenizer


@dataclasses.dataclass(frozen=True)
class Plan:
  """One run of the study: a variant at a budget."""

  variant: str
  budget: float
  steps: int
  flops_per_step: float  # executed
  model_flops_per_step: float  # PaLM's count, for reference
  run: Run

  @property
  def training_flops(self) -> float:
    return self.steps * self.flops_per_step


def variant_configs(config: Config) -> dict[str, Config]:
  """Each variant's config: the study's with the variant's overrides, checked, or one line naming the variant."""
  if not config.train.eval_probes:
    raise ConfigError('train.eval_probes', False, 'compare scores every variant on the shared probes; set True')
  configs = {}
  for name, overrides in config.compare.parsed_variants:
    if any(key.split('.')[0] in ('compare', 'scaling', 'mesh') for key, _ in overrides):
      raise ConfigError('compare.variants', config.compare.variants,
                        f'variant {name}: compare.*, scaling.* and mesh.* are the study\'s own; vary the model, '
                        'objective, data or training')
    try:
      configs[name] = config.override(dict(overrides))
    except ConfigError as e:
      raise ConfigError('compare.variants', config.compare.variants, f'variant {name}: {e}') from None
    m = configs[name].model
    if m.architecture == 'encoder_decoder' and m.attention != 'vanilla':
      raise ConfigError('compare.variants', config.compare.variants,
                        f'variant {name}: an encoder-decoder\'s skipped block pairs under {m.attention} attention are '
                        'not counted yet, so its budget would buy fewer steps than a decoder\'s; compare it with '
                        'model.attention=vanilla')
  return configs


def make_plans(runtime: Runtime, config: Config, root: str) -> list[Plan]:
  """Every (variant, budget) run with its steps; opens each variant's data to measure its executed FLOPs."""
  plans = []
  for name, cfg in variant_configs(config).items():
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    flops_per_step = runtime.executed_flops_per_token(cfg) * tokens_per_step
    model_flops_per_step = flops_lib.flops_per_token(cfg.model, cfg.data.seq_len) * tokens_per_step
    for budget in config.compare.flops_budgets:
      steps = int(budget // flops_per_step)
      if steps < 1:
        raise ConfigError('compare.flops_budgets', config.compare.flops_budgets,
                          f'{budget:.3g} is less than one step of variant {name} ({flops_per_step:.3g} FLOPs); '
                          'raise it')
      run_cfg = cfg.override({'train.steps': steps, 'train.warmup_steps': min(cfg.train.warmup_steps, steps // 10),
                              'checkpoint.every_steps': min(cfg.checkpoint.every_steps, steps)})
      run = runtime.run(run_cfg, os.path.join(root, name, f'C{budget:.3g}'.replace('+', '')))
      plans.append(Plan(variant=name, budget=float(budget), steps=steps, flops_per_step=flops_per_step,
                        model_flops_per_step=model_flops_per_step, run=run))
  return plans


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out |= _flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v}
  return out


# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_KEYS = ('train.log_every', 'train.eval_every', 'checkpoint.every_steps', 'checkpoint.keep',
                  'data.cache_dir')


def _check_resumable(plan: Plan) -> None:
  """A run dir trained under another config (model, data, budget...) would mix two runs in one curve: refuse."""
  path = os.path.join(plan.run.workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(json.dumps(plan.run.config.to_dict())))
  for key in sorted(set(old) | set(new)):
    if key not in RESUMABLE_KEYS and not key.startswith('compare.') and old.get(key) != new.get(key):
      raise ConfigError('--workdir', plan.run.workdir, f'it was trained with {key}={old.get(key)!r}, now '
                        f'{new.get(key)!r}; use a new --workdir or delete that run to restart it')


def _is_finished(plan: Plan) -> bool:
  """Its checkpoint at the planned step exists (the trainer writes the final evaluation before saving it)."""
  from train import checkpoint

  return (checkpoint.latest_step(os.path.join(plan.run.workdir, 'checkpoints')) or 0) >= plan.steps


def run(runtime: Runtime, config: Config, workdir: str) -> dict:
  """Train (or resume, or skip) every run, then (process 0) write the results, fits and plots."""
  root = os.path.join(workdir, 'compare')
  plans = make_plans(runtime, config, root)
  for p in plans:
    _check_resumable(p)
  for i, p in enumerate(plans):
    header = (f'[{i + 1}/{len(plans)}] {p.variant} at C={p.budget:.3g}: {p.steps} steps, '
              f'{p.training_flops:.3g} executed training FLOPs')
    if _is_finished(p):
      if runtime.is_main:
        print(f'{header}: finished, skipping', flush=True)
      continue
    if runtime.is_main:
      print(header, flush=True)
      os.makedirs(p.run.workdir, exist_ok=True)
      with open(os.path.join(p.run.workdir, 'config.json'), 'w') as f:
        json.dump(p.run.config.to_dict(), f, indent=2, sort_keys=True)
    trainer.train(p.run)
    if not _is_finished(p):  # preempted: the trainer saved and said so; the other runs wait too
      return {}
  if not runtime.is_main:
    return {}
  results = collect(plans, [name for name, _ in config.compare.parsed_variants], root)
  write_results(results, root)
  print(markdown(results), flush=True)
  print(f'wrote {root}/results.json, results.csv, results.md and probe_*.png', flush=True)
  return results


def _metric_rows(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _speed_and_granularity(rows: list[dict], final: dict) -> dict:
  """Median training tokens/s over the logged steps, and bytes per token of the validation text, which the causal
  probe's two units give: (nats per token / ln 2) / (bits per byte); the same for every reading of a tokenizer."""
  speeds = sorted(r['perf/tokens_per_sec'] for r in rows if 'perf/tokens_per_sec' in r)
  loss, bpb = final['probe/suffix_causal/loss'], final[f'probe/suffix_causal/{METRIC}']
  return {'tokens_per_sec': speeds[len(speeds) // 2] if speeds else None, 'bytes_per_token': loss / math.log(2) / bpb}


def collect(plans: list[Plan], variants: list[str], root: str) -> dict:
  """Per run: steps, FLOPs, its final evaluation and the eval curve; per variant and probe: the power-law fit."""
  runs = []
  for p in plans:
    logged = _metric_rows(p.run.workdir)
    rows = [r for r in logged if 'eval/loss' in r]
    final = next((r for r in reversed(rows) if r['step'] == p.steps), None)
    if final is None:
      raise ConfigError('--workdir', p.run.workdir, f'its metrics.jsonl has no evaluation at step {p.steps}; delete '
                        'that run to train it again')
    runs.append({'variant': p.variant, 'budget': p.budget, 'run': os.path.relpath(p.run.workdir, root),
                 'steps': p.steps,
                 'tokens': p.steps * p.run.config.train.batch_size * p.run.config.data.seq_len,
                 'training_flops': p.training_flops, 'model_flops': p.steps * p.model_flops_per_step,
                 **_speed_and_granularity(logged, final),
                 **{k: v for k, v in final.items() if k != 'step'},
                 'curve': [{'step': r['step'], 'training_flops': r['step'] * p.flops_per_step,
                            **{k: v for k, v in r.items() if k.endswith(('/loss', f'/{METRIC}'))}} for r in rows]})
  return {'variants': variants, 'baseline': variants[0], 'budgets': sorted({p.budget for p in plans}), 'runs': runs,
          'fits': _fits(runs, variants)}


def _fits(runs: list[dict], variants: list[str]) -> dict:
  """Per probe: each variant's L(C) = A C^-alpha over its budgets, and where it crosses the baseline's."""
  fits = {}
  for reading in READINGS:
    key = f'probe/{reading}/{METRIC}'
    laws = {}
    for name in variants:
      points = sorted((r['training_flops'], r[key]) for r in runs if r['variant'] == name)
      if len(points) >= 2:
        laws[name] = power_law.fit(*zip(*points))
    base = laws.get(variants[0])
    fits[reading] = {name: {'A': law.A, 'alpha': law.alpha, 'alpha_ci': law.alpha_ci, 'residual': law.residual,
                            'crosses_baseline_at': None if base is None or name == variants[0]
                            else power_law.crossing(law, base)} for name, law in laws.items()}
  return fits


def _ahead(results: dict, reading: str, budget: float) -> str:
  key = f'probe/{reading}/{METRIC}'
  at = [r for r in results['runs'] if r['budget'] == budget]
  return min(at, key=lambda r: r[key])['variant']


def markdown(results: dict) -> str:
  """Bits per byte of every probe per run (best per budget in bold), then the fits and crossings per probe."""
  head = ['variant', 'budget', 'steps', 'executed FLOPs', 'bytes/token', 'tokens/s', *READINGS]
  lines = [f'Probe bits per byte (lower is better; bold: best at that budget). Baseline: {results["baseline"]}.', '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for budget in results['budgets']:
    best = {reading: _ahead(results, reading, budget) for reading in READINGS}
    for r in (r for r in results['runs'] if r['budget'] == budget):
      cells = [f'{r[f"probe/{q}/{METRIC}"]:.4f}' for q in READINGS]
      cells = [f'**{c}**' if best[q] == r['variant'] else c for c, q in zip(cells, READINGS)]
      speed = '-' if r['tokens_per_sec'] is None else f'{r["tokens_per_sec"]:,.0f}'
      lines.append(f'| {r["variant"]} | {budget:.3g} | {r["steps"]} | {r["training_flops"]:.3g} | '
                   f'{r["bytes_per_token"]:.2f} | {speed} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Power laws L(C) = A C^-alpha of each probe\'s bits per byte over the budgets (95% t-interval of alpha '
            'with 3+ budgets); crossing: the compute at which the variant\'s law meets the baseline\'s.', '',
            '| probe | variant | alpha | 95% interval | ahead at | crosses baseline at |', '|---|---|---|---|---|---|']
  low, high = min(results['budgets']), max(results['budgets'])
  for reading in READINGS:
    ahead = ', '.join(f'{b:.3g}: {_ahead(results, reading, b)}' for b in results['budgets'])
    for name, f in results['fits'][reading].items():
      interval = '' if f['alpha_ci'] is None else f'[{f["alpha_ci"][0]:.3f}, {f["alpha_ci"][1]:.3f}]'
      cross = f['crosses_baseline_at']
      where = ('-' if name == results['baseline'] else 'parallel' if cross is None
               else f'{cross:.3g}' + ('' if low <= cross <= high else ' (outside the budgets)'))
      shown = ahead if name == results['baseline'] else ''
      lines.append(f'| {reading} | {name} | {f["alpha"]:.3f} | {interval} | {shown} | {where} |')
  return '\n'.join(lines) + '\n'


def write_results(results: dict, root: str) -> None:
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  rows = [{k: v for k, v in r.items() if k != 'curve'} for r in results['runs']]
  with open(os.path.join(root, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))  # buckets may differ
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(root, 'results.md'), 'w') as f:
    f.write(markdown(results))
  for reading in READINGS:
    plot_probe(results, reading, os.path.join(root, f'probe_{reading}.png'))
  top = max(results['budgets'])
  plot_loss_by_position({r['variant']: loss_by_position(r) for r in results['runs'] if r['budget'] == top},
                        os.path.join(root, 'loss_by_position.png'),
                        f'own-objective validation loss by position, C={top:.3g}')


def plot_probe(results: dict, reading: str, path: str) -> None:
  """One probe's bits per byte against executed training FLOPs (log-log): each variant's final evaluations at
  every budget, its fitted power law, and each run's evaluation curve, faint (Agg canvas: no display needed)."""
  fig = Figure(figsize=(6.5, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  key = f'probe/{reading}/{METRIC}'
  colors = {name: f'C{i}' for i, name in enumerate(results['variants'])}
  for name in results['variants']:
    mine = sorted((r for r in results['runs'] if r['variant'] == name), key=lambda r: r['budget'])
    for r in mine:
      curve = [c for c in r['curve'] if c['training_flops'] > 0 and math.isfinite(c.get(key, math.nan))]
      ax.plot([c['training_flops'] for c in curve], [c[key] for c in curve], color=colors[name], alpha=0.25, lw=1)
    ax.plot([r['training_flops'] for r in mine], [r[key] for r in mine], 'o', color=colors[name], label=name)
    law = results['fits'][reading].get(name)
    if law:
      C = [mine[0]['training_flops'], mine[-1]['training_flops']]
      ax.plot(C, [law['A'] * c ** -law['alpha'] for c in C], '-', color=colors[name], lw=1.5,
              label=f'  alpha {law["alpha"]:.3f}')
  ax.set(xscale='log', yscale='log', xlabel='executed training FLOPs', ylabel='bits per byte',
         title=f'probe {reading}')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
