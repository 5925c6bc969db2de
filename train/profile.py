"""Profiling on demand: a `jax.profiler` trace of training steps [train.profile_start, + train.profile_steps) in
WORKDIR/profile, each step annotated with its number.

Open it with TensorBoard's profile plugin (`tensorboard --logdir WORKDIR/profile`, the xprof package) or load the
`*.trace.json.gz` beside the `*.xplane.pb` into https://ui.perfetto.dev. Every process writes its own host's files.
Start after step 0, which compiles: a traced compile hides the steps' own time.
"""

import contextlib
import os
from collections.abc import Iterator

import jax


class StepProfiler:
  """Starts the trace before step `start` and stops it once step `start + steps - 1` has finished on device."""

  def __init__(self, workdir: str, start: int, steps: int):
    self.directory = os.path.join(workdir, 'profile')
    self.start, self.stop = start, start + steps
    self.tracing = False

  @contextlib.contextmanager
  def step(self, step: int) -> Iterator[None]:
    """Around the dispatch of training step `step` (0-based): starts the trace at `start`, names traced steps."""
    if step == self.start and self.start < self.stop:
      jax.profiler.start_trace(self.directory)
      self.tracing = True
    with jax.profiler.StepTraceAnnotation('train', step_num=step) if self.tracing else contextlib.nullcontext():
      yield

  def done(self, step: int, outputs) -> None:
    """After step `step` was dispatched: the last traced one waits for its `outputs`, then the trace stops."""
    if self.tracing and step + 1 == self.stop:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops a trace still running (the loop ended inside the range, e.g. on preemption)."""
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
