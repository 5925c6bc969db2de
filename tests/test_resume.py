"""Exact resume: a run stopped at any point (clean SIGTERM, kill -9 during an async save) and resumed gives the same
per-step losses and bitwise-equal parameters as a run that never stopped; damaged checkpoints and divergence fail
clearly and leave the last good checkpoint usable; a checkpoint restores onto other meshes."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import ROOT, run_main

STEPS = 24


def flags(small_run_flags, workdir, *extra):
  return [*small_run_flags, f'--workdir={workdir}', f'--config.train.steps={STEPS}', '--config.train.log_every=1',
          '--config.train.eval_every=0', '--config.checkpoint.every_steps=2', *extra]


def losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


def final_params(workdir: pathlib.Path) -> list[np.ndarray]:
  state = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(STEPS) / 'state')
  return [np.asarray(x) for x in jax.tree.leaves(state['params'])]


def steps_done(workdir: pathlib.Path) -> int:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return 0
  return max((json.loads(l)['step'] for l in path.read_text().splitlines() if l.strip()), default=0)


def interrupt(args: list[str], workdir: pathlib.Path, sig: int, after_step: int) -> subprocess.CompletedProcess:
  """Start main.py, send `sig` once it has logged `after_step`, and wait for it to end."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while steps_done(workdir) < after_step and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope='module')
def straight(small_run_flags, tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('straight')
  run_main(*flags(small_run_flags, workdir))
  return workdir


def assert_same_run(resumed: pathlib.Path, straight: pathlib.Path) -> None:
  assert losses(resumed) == losses(straight)  # every step, exactly
  for a, b in zip(final_params(resumed), final_params(straight), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(small_run_flags, straight, tmp_path):
  workdir = tmp_path / 'run'
  proc = interrupt(flags(small_run_flags, workdir), workdir, signal.SIGTERM, after_step=5)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'preempted: saved step' in proc.stdout
  stopped = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert 5 <= stopped < STEPS
  out = run_main(*flags(small_run_flags, workdir)).stdout
  assert f'resuming at step {stopped}/{STEPS}' in out
  assert_same_run(workdir, straight)


def test_kill_9_during_async_saves_resumes_exactly(small_run_flags, straight, tmp_path):
  workdir = tmp_path / 'run'
  args = flags(small_run_flags, workdir, '--config.checkpoint.every_steps=1')
  proc = interrupt(args, workdir, signal.SIGKILL, after_step=7)
  assert proc.returncode == -signal.SIGKILL
  assert run_main(*args).returncode == 0
  assert_same_run(workdir, straight)


def test_damaged_latest_checkpoint_is_a_clear_error_and_the_previous_one_restores(small_run_flags, straight,
                                                                                   tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(straight, workdir)
  ckpts = workdir / 'checkpoints'
  for f in (ckpts / str(STEPS) / 'state').rglob('*'):
    if f.is_file() and 'manifest' in f.name or f.name.endswith('.ocdbt') or f.parent.name == 'd':
      f.unlink()
  proc = run_main(*flags(small_run_flags, workdir, f'--config.train.steps={STEPS + 2}'), check=False)
  assert proc.returncode == 2
  error = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and f'checkpoints/{STEPS}' in error[0] and f'resume from step {STEPS - 2}' in error[0]
  shutil.move(ckpts / str(STEPS), ckpts / f'{STEPS}.bad')  # the fix the message gives
  out = run_main(*flags(small_run_flags, workdir, f'--config.train.steps={STEPS + 2}')).stdout
  assert f'resuming at step {STEPS - 2}/' in out


def test_another_objective_in_the_workdir_is_a_clear_error(small_run_flags, straight, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(straight, workdir)
  proc = run_main(*flags(small_run_flags, workdir, '--config.objective=masked_lm'), check=False)
  assert proc.returncode == 2 and "error: objective='masked_lm'" in proc.stderr


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(small_run_flags, tmp_path):
  workdir = tmp_path / 'run'
  proc = run_main(*flags(small_run_flags, workdir, '--config.train.learning_rate=1e30', '--config.train.grad_clip=0',
                         '--config.train.warmup_steps=0'), check=False)
  assert proc.returncode == 1
  error = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and 'non-finite loss or gradient at step' in error[0], proc.stderr[-2000:]
  saved = [int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
  for step in saved:
    state = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['params']))
