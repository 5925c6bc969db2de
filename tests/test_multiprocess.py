"""Real multi-process JAX: 2 CPU processes x 2 devices over loopback (gloo), as scripts/local_multiprocess.sh runs.

Each process reads only its own rows of the global batch (tests/test_data.py checks the rows are disjoint and
together form the single-process batch). One 2-process run is preempted by a SIGTERM to process 1 alone: JAX's
preemption sync point must stop both at one step (their checkpoint save is collective: it completes only if both
save that step) and exit 0; resumed, the run's losses and gradient norms must equal a single process's with the same
global batch on 4 devices at every step (no warmup, so every step updates the weights), which fails if the
processes read the same rows, reduce their gradients wrongly or resume elsewhere. The checkpoint the two processes
write cooperatively must restore in a single process.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, run_main

STEPS = 10


def metrics(workdir) -> list[dict]:
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def saved_steps(workdir: pathlib.Path) -> list[int]:
  folder = workdir / 'checkpoints'
  return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []


def process_pid(workdir: pathlib.Path, process_id: int) -> int:
  """The pid of main.py --process_id=`process_id` running in `workdir`."""
  for proc in pathlib.Path('/proc').iterdir():
    try:
      argv = (proc / 'cmdline').read_bytes().split(b'\0')
    except OSError:
      continue
    if f'--workdir={workdir}'.encode() in argv and f'--process_id={process_id}'.encode() in argv:
      return int(proc.name)
  raise AssertionError(f'no process {process_id} in {workdir}')


def test_preempted_two_processes_stop_together_resume_and_match_one(small_run_flags, tmp_path):
  args = [*small_run_flags, f'--config.train.steps={STEPS}', '--config.train.log_every=1',
          '--config.train.eval_every=0', f'--config.checkpoint.every_steps={STEPS}', '--config.train.warmup_steps=0',
          '--config.train.learning_rate=0.01']
  workdir = tmp_path / 'mp'
  env = dict(os.environ, RINGLM_LOCAL_DEVICES='2', PYTHON=sys.executable)
  # The data axis spans the 2 processes as DCN granules (a hybrid mesh), the way TPU slices are joined.
  command = ['scripts/local_multiprocess.sh', '2', *args, f'--workdir={workdir}', '--config.mesh.dcn_data=2']
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # Signal as soon as process 0 announces step 0: both processes have joined jax.distributed (so JAX's preemption
  # notifier is installed) and the first step has yet to compile, so the notice arrives long before the last step
  # however fast the machine. (Waiting for the first metrics line lost that race on a fast CI machine.)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
  reader.start()
  deadline = time.time() + 500
  while not any(l.startswith('starting step 0/') for l in list(lines)):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  os.kill(process_pid(workdir, 1), signal.SIGTERM)  # the one that does not log: its notice must reach process 0
  err = proc.stderr.read()
  assert proc.wait(timeout=500) == 0, err[-3000:]
  reader.join(timeout=60)
  out = ''.join(lines)
  saved = saved_steps(workdir)
  assert len(saved) == 1 and saved[0] < STEPS and f'preempted: saved step {saved[0]}' in out, (saved, out)
  assert out.count('starting step 0/') == 1  # only process 0 prints

  resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
  assert resumed.returncode == 0 and f'resuming at step {saved[0]}/{STEPS}' in resumed.stdout, resumed.stderr[-3000:]
  run_main(*args, f'--workdir={tmp_path / "single"}', devices=4)
  multi, single = metrics(workdir), metrics(tmp_path / 'single')
  assert [r['step'] for r in multi] == [r['step'] for r in single]
  assert sorted({r['step'] for r in multi}) == list(range(1, STEPS + 1))
  # Gloo's reduction order differs from one process's: over 10 steps at lr 1e-2 the gradient norm drifts up to ~6e-5
  # relative (Adam's sign-like update turns rounding on near-zero gradients into whole steps); losses within 1e-6.
  for m, s in zip(multi, single):
    for key, rel in (('train/loss', 1e-5), ('train/grad_norm', 3e-4), ('eval/loss', 1e-5)):
      if key in s:
        assert m[key] == pytest.approx(s[key], rel=rel), (m['step'], key)

  out = run_main(*args, f'--workdir={workdir}', '--mode=eval', devices=1).stdout
  assert json.loads(out.strip().splitlines()[-1])['eval/loss'] == pytest.approx(multi[-1]['eval/loss'], rel=1e-5)


def test_streamed_data_killed_on_two_processes_resumes_on_one_exactly(small_run_flags, tmp_path):
  """Catalogue data is streamed in 2 shards with a seeded shuffle, rows indexed globally: a 2-process run killed
  with kill -9 and resumed on one process gives a single process's losses at every step (it would not if either
  count read rows of its own, or if the shuffle's state did not follow the step)."""
  from data import sources
  from tests.conftest import config_of

  held_out = [*small_run_flags, '--config.data.validation_percent=20']  # validation documents for both shards
  corpus = sources.open_corpus(config_of(held_out).data)  # the local corpus, read back by name: streamed
  cache = next(f.split('=', 1)[1] for f in small_run_flags if f.startswith('--config.data.cache_dir='))
  steps = 24
  args = [*(f for f in held_out if not f.startswith('--config.data.text_dir=')),
          f'--config.data.tfds_name={corpus.builder.name}/{corpus.builder.builder_config.name}',
          f'--config.data.tfds_data_dir={cache}/tfds', '--config.data.tokenizer=byte', '--config.data.vocab_size=264',
          '--config.data.stream_shards=2', '--config.data.shuffle_buffer=8', f'--config.train.steps={steps}',
          '--config.train.log_every=1', '--config.train.eval_every=0', '--config.checkpoint.every_steps=2',
          '--config.train.warmup_steps=0', '--config.train.learning_rate=0.003']
  workdir = tmp_path / 'mp'
  env = dict(os.environ, RINGLM_LOCAL_DEVICES='2', PYTHON=sys.executable)
  proc = subprocess.Popen(['scripts/local_multiprocess.sh', '2', *args, f'--workdir={workdir}'], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 500
  while not saved_steps(workdir):  # a finished checkpoint: orbax renames it from a temporary name when complete
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.01)
  for process_id in (0, 1):
    os.kill(process_pid(workdir, process_id), signal.SIGKILL)
  proc.communicate(timeout=60)
  saved = max(saved_steps(workdir))
  assert 2 <= saved < steps, saved

  resumed = run_main(*args, f'--workdir={workdir}', devices=4).stdout
  assert f'resuming at step {saved}/{steps}' in resumed
  run_main(*args, f'--workdir={tmp_path / "single"}', devices=4)
  multi, single = ([r for r in metrics(w) if 'train/loss' in r] for w in (workdir, tmp_path / 'single'))
  assert [r['step'] for r in multi] == [r['step'] for r in single] == list(range(1, steps + 1))
  for m, s in zip(multi, single):  # gloo's reduction order differs from one process's (see the test above)
    for key, rel in (('train/loss', 1e-5), ('train/grad_norm', 3e-4)):
      assert m[key] == pytest.approx(s[key], rel=rel), (m['step'], key, saved)
