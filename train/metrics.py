"""Metrics out: `metrics.jsonl` (one flat JSON object per line), TensorBoard scalars, and a live progress line.

Only process 0 writes; the other processes get a writer that does nothing.
"""

import json
import os
import sys
import time

import jax
import tensorboardX

# Dense matmul peak FLOP/s per chip by `device_kind` prefix (vendor datasheets, no sparsity), for MFU: bfloat16, and
# float32 as the chip runs it at JAX's default precision: TF32 tensor cores on NVIDIA, bfloat16 passes on TPU.
PEAK_FLOPS = {
    'NVIDIA H100': {'bfloat16': 989e12, 'float32': 494e12}, 'NVIDIA H200': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA A100': {'bfloat16': 312e12, 'float32': 156e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12}, 'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},
    'TPU v5e': {'bfloat16': 197e12, 'float32': 197e12}, 'TPU v5p': {'bfloat16': 459e12, 'float32': 459e12},
    'TPU v5': {'bfloat16': 459e12, 'float32': 459e12}, 'TPU v6 lite': {'bfloat16': 918e12, 'float32': 918e12},
    'TPU v6e': {'bfloat16': 918e12, 'float32': 918e12},
}


def peak_flops_per_device(configured: float, dtype: str, kind: str | None = None) -> float | None:
  """The configured peak, else the table's for this device kind (default: this machine's) and compute dtype, else
  None (no MFU reported)."""
  if configured > 0:
    return configured
  kind = kind or jax.devices()[0].device_kind
  return next((v[dtype] for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


class MetricsWriter:
  """Appends to metrics.jsonl; on resume it first drops rows past the checkpoint's step, which the resumed run
  writes again, so each step appears once. TensorBoard's event files cannot be rewritten, so the new one starts
  with a purge step: TensorBoard drops the earlier files' events from that step on."""

  def __init__(self, workdir: str, enabled: bool, resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      if resume_step is not None and os.path.exists(path):
        with open(path) as f:
          kept = [line for line in f if line.strip() and json.loads(line)['step'] <= resume_step]
        with open(path, 'w') as f:
          f.writelines(kept)
      self._jsonl = open(path, 'a')
      purge_step = None if resume_step is None else resume_step + 1
      self._tb = tensorboardX.SummaryWriter(workdir, purge_step=purge_step, flush_secs=30,
                                            filename_suffix=f'.from_step{resume_step or 0}')  # never reuse a name

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()
    for k, v in row.items():
      if k != 'step':
        self._tb.add_scalar(k, v, global_step=row['step'])

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """One line per log interval: step/total, loss, tokens/s, ETA."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool):
    self.total, self.enabled = total_steps, enabled
    self._t0, self._s0 = time.time(), start_step

  def line(self, step: int, loss: float, tokens_per_sec: float, extra: str = '') -> None:
    if not self.enabled:
      return
    done = step - self._s0
    eta = (time.time() - self._t0) / max(done, 1) * (self.total - step)
    print(f'step {step}/{self.total}  loss {loss:.4f}  {tokens_per_sec:,.0f} tok/s  ETA {eta / 60:.1f} min{extra}',
          file=sys.stdout, flush=True)


def loss_by_position(metrics: dict[str, float], prefix: str = 'eval') -> dict[int, float]:
  """{first context length of the bucket: mean loss} from a row of `{prefix}/loss_by_position/{first}` metrics."""
  head = f'{prefix}/loss_by_position/'
  return dict(sorted((int(k.removeprefix(head)), v) for k, v in metrics.items() if k.startswith(head)))


def plot_loss_by_position(series: dict[str, dict[int, float]], path: str, title: str) -> None:
  """Loss against tokens of context (log x), a line per named series: how much a longer context helps."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6.5, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for name, points in series.items():
    ax.plot(list(points), list(points.values()), marker='o', ms=3, label=name)
  ax.set(xscale='log', xlabel='tokens of context (bucket 2^k .. 2^(k+1) - 1)', ylabel='validation loss (nats/token)',
         title=title)
  ax.xaxis.set_major_formatter('{x:g}')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
