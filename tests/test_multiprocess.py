"""Real multi-process JAX: 2 CPU processes x 2 devices over loopback (gloo), as scripts/local_multiprocess.sh runs.

Each process reads only its own rows of the global batch (tests/test_data.py checks the rows are disjoint and
together form the single-process batch); here the losses must equal a single process's with the same global
batch on 4 devices, which fails if the processes read the same rows. The checkpoint the two processes write
cooperatively must restore in a single process.
"""

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT, run_main


def metrics(workdir) -> list[dict]:
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_two_processes_match_one_and_their_checkpoint_restores_alone(small_run_flags, tmp_path):
  args = [*small_run_flags, '--config.train.steps=4', '--config.train.log_every=1', '--config.train.eval_every=0',
          '--config.checkpoint.every_steps=4']
  env = dict(os.environ, RINGLM_LOCAL_DEVICES='2', PYTHON=os.path.join(ROOT, '.venv', 'bin', 'python'))
  # The data axis spans the 2 processes as DCN granules (a hybrid mesh), the way TPU slices are joined.
  proc = subprocess.run(['scripts/local_multiprocess.sh', '2', *args, f'--workdir={tmp_path / "mp"}',
                         '--config.mesh.dcn_data=2'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('starting step 0/4') == 1  # only process 0 prints
  run_main(*args, f'--workdir={tmp_path / "single"}', devices=4)

  multi, single = metrics(tmp_path / 'mp'), metrics(tmp_path / 'single')
  assert [r['step'] for r in multi] == [r['step'] for r in single]
  for m, s in zip(multi, single):
    for key in ('train/loss', 'eval/loss'):
      if key in s:
        assert m[key] == pytest.approx(s[key], rel=1e-5), (m['step'], key)

  out = run_main(*args, f'--workdir={tmp_path / "mp"}', '--mode=eval', devices=1).stdout
  assert json.loads(out.strip().splitlines()[-1])['eval/loss'] == pytest.approx(multi[-1]['eval/loss'], rel=1e-5)
