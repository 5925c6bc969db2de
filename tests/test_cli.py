"""main.py end to end, as a user runs it: train, resume, eval, estimate, and one-line errors for bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from data import builders

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(*flags: str, check: bool = True) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, 'main.py', *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> pathlib.Path:
  """A folder of real text: 40 stdlib sources."""
  root, out = builders.stdlib_root(), tmp_path_factory.mktemp('cli_corpus')
  for file in [f for f in builders.stdlib_files() if 3_000 < f.stat().st_size < 40_000][::10][:40]:
    shutil.copy(file, out / file.name.replace('.py', '.txt'))
  return out


@pytest.fixture(scope='module')
def common(corpus, tmp_path_factory) -> list[str]:
  cache = tmp_path_factory.mktemp('cli_cache')
  return ['--config=configs/tiny.py', f'--config.data.text_dir={corpus}', f'--config.data.cache_dir={cache}',
          '--config.data.vocab_size=512', '--config.data.seq_len=64', '--config.model.num_layers=2',
          '--config.train.batch_size=4', '--config.train.log_every=2', '--config.train.eval_every=3',
          '--config.train.eval_batches=2', '--config.checkpoint.every_steps=3']


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_train_resume_eval_estimate(common, tmp_path):
  workdir = tmp_path / 'run'
  out = run_main(*common, f'--workdir={workdir}', '--config.train.steps=6').stdout
  assert 'starting step 0/6' in out and 'step 6/6' in out
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if 'train/loss' in r]
  eval_rows = [r for r in rows if 'eval/loss' in r]
  assert [r['step'] for r in train_rows] == [2, 3, 4, 6]
  assert [r['step'] for r in eval_rows] == [3, 6]
  assert {'perf/tokens_per_sec', 'train/grad_norm', 'train/lr'} <= set(train_rows[0])
  assert {'eval/perplexity', 'eval/accuracy', 'eval/bits_per_byte'} <= set(eval_rows[0])
  assert json.loads((workdir / 'config.json').read_text())['train']['steps'] == 6
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['3', '6']
  assert list(workdir.glob('events.out.tfevents.*'))

  out = run_main(*common, f'--workdir={workdir}', '--config.train.steps=8').stdout
  assert 'resuming at step 6/8' in out and 'step 8/8' in out

  out = run_main(*common, f'--workdir={workdir}', '--mode=eval').stdout
  assert json.loads(out.strip().splitlines()[-1])['eval/loss'] == pytest.approx(read_metrics(workdir)[-1]['eval/loss'])

  run_main(*common, f'--workdir={workdir}', '--mode=estimate')
  estimate = json.loads((workdir / 'estimate.json').read_text())
  assert estimate['params'] > 0 and estimate['flops_per_token'] > 6 * estimate['params_non_embedding']
  assert estimate['memory_per_device_bytes'] > 0


@pytest.mark.parametrize('flag, key', [
    ('--config.data.text_dir=/nonexistent/ringlm', 'data.text_dir'),
    ('--config.data.text_dir={empty}', 'data.text_dir'),
    ('--config.model.num_kv_heads=3', 'model.num_kv_heads'),
    ('--config.objective=diffusion', 'objective'),
    ('--config.model.d_model=-8', 'model.d_model'),
    ('--config.model.nonsense=1', 'config.model.nonsense'),
])
def test_bad_input_is_one_line_and_exit_2(common, tmp_path, flag, key):
  (tmp_path / 'empty').mkdir()
  proc = run_main(*common, f'--workdir={tmp_path / "run"}', flag.format(empty=tmp_path / 'empty'), check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith(f'error: {key}'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
