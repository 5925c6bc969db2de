"""main.py end to end, as a user runs it: train, resume, eval, estimate, and one-line errors for bad input."""

import json
import pathlib

import numpy as np
import pytest

from tests.conftest import run_main

def read_metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_train_resume_eval_estimate(small_run_flags, tmp_path):
  workdir = tmp_path / 'run'
  out = run_main(*small_run_flags, f'--workdir={workdir}', '--config.train.steps=6', '--config.train.profile_start=2',
                 '--config.train.profile_steps=2').stdout
  assert 'starting step 0/6' in out and 'step 6/6' in out
  assert 'vanilla attention, jax kernel: model.attention=vanilla is the [S, S] reference' in out
  assert list((workdir / 'profile').rglob('*.xplane.pb')) and list((workdir / 'profile').rglob('*.trace.json.gz'))
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if 'train/loss' in r]
  eval_rows = [r for r in rows if 'eval/loss' in r]
  assert [r['step'] for r in train_rows] == [2, 3, 4, 6]
  assert [r['step'] for r in eval_rows] == [0, 3, 6]
  assert {'perf/tokens_per_sec', 'train/grad_norm', 'train/lr'} <= set(train_rows[0])
  assert {'eval/perplexity', 'eval/accuracy', 'eval/bits_per_byte', 'eval/loss_by_position/1'} <= set(eval_rows[0])
  assert (workdir / 'loss_by_position.png').read_bytes()[:4] == b'\x89PNG'

  assert json.loads((workdir / 'config.json').read_text())['train']['steps'] == 6
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['3', '6']
  assert list(workdir.glob('events.out.tfevents.*'))

  out = run_main(*small_run_flags, f'--workdir={workdir}', '--config.train.steps=8').stdout
  assert 'resuming at step 6/8' in out and 'step 8/8' in out

  out = run_main(*small_run_flags, f'--workdir={workdir}', '--mode=eval').stdout
  assert json.loads(out.strip().splitlines()[-1])['eval/loss'] == pytest.approx(read_metrics(workdir)[-1]['eval/loss'])

  out = run_main(*small_run_flags, f'--workdir={workdir}', '--mode=sample', '--config.sample.prompt=import os',
                 '--config.sample.max_new_tokens=8').stdout
  samples = out.split('--- sample ')[1:]
  assert len(samples) == 2 and all(s.split('\n', 1)[1].startswith('import os') for s in samples)

  run_main(*small_run_flags, f'--workdir={workdir}', '--mode=estimate')
  estimate = json.loads((workdir / 'estimate.json').read_text())
  assert estimate['params'] > 0 and estimate['flops_per_token'] > 6 * estimate['params_non_embedding']
  assert estimate['memory_per_device_bytes'] > 0


def test_ring_attention_trains_evaluates_and_probes(small_run_flags, tmp_path):
  """main.py with ring attention over a 2-device sequence axis: training, evaluation and the shared probes."""
  workdir = tmp_path / 'ring'
  run_main(*small_run_flags, f'--workdir={workdir}', '--config.train.steps=3', '--config.model.attention=ring',
           '--config.mesh.sequence=2', '--config.mesh.data=1', devices=2)
  last = [r for r in read_metrics(workdir) if 'eval/loss' in r][-1]
  assert last['step'] == 3 and np.isfinite(last['eval/loss']) and 'probe/cloze_bidirectional/loss' in last


def test_span_corruption_trains_and_evaluates_with_the_probes(small_run_flags, tmp_path):
  """main.py --config.objective=span_corruption: sentinels from 100 extra ids on top of the 512-piece tokenizer."""
  workdir = tmp_path / 'span'
  run_main(*small_run_flags, f'--workdir={workdir}', '--config.train.steps=3', '--config.objective=span_corruption',
           '--config.data.vocab_size=612', '--config.data.extra_ids=100')
  rows = read_metrics(workdir)
  train = [r for r in rows if 'train/loss' in r]
  assert train and all(np.isfinite(r['train/loss']) and r['train/tokens_scored'] > 0 for r in train)
  last = [r for r in rows if 'eval/loss' in r][-1]
  assert last['step'] == 3 and np.isfinite(last['eval/loss']) and np.isfinite(last['probe/suffix_prefix/loss'])


@pytest.mark.parametrize('flag, key', [
    ('--config.data.text_dir=/nonexistent/ringlm', 'data.text_dir'),
    ('--config.data.text_dir={empty}', 'data.text_dir'),
    ('--config.data.text_dir={binary}', 'data.text_dir'),  # files match the glob, none is text
    ('--config.model.num_kv_heads=3', 'model.num_kv_heads'),
    ('--config.objective=diffusion', 'objective'),
    ('--config.objective=span_corruption', 'data.extra_ids'),  # no sentinel ids
    ('--config.model.d_model=-8', 'model.d_model'),
    ('--config.model.nonsense=1', 'config.model.nonsense'),
    ('--config.train.eval_batches=10000', 'train.eval_batches'),  # more than the validation split holds
    ('--config.model.attention_kernel=pallas', 'model.attention_kernel'),  # no Pallas kernel on CPU
])
def test_bad_input_is_one_line_and_exit_2(small_run_flags, tmp_path, flag, key):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'binary').mkdir()
  (tmp_path / 'binary' / 'photo.txt').write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00')
  proc = run_main(*small_run_flags, f'--workdir={tmp_path / "run"}',
                  flag.format(empty=tmp_path / 'empty', binary=tmp_path / 'binary'), check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith(f'error: {key}'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('case, name', [('missing', 'missing.py'), ('syntax', 'syntax.py'), ('no_get_config', 'bare.py'),
                                        ('workdir', 'a_file'), ('learning_rate', 'train.learning_rate')])
def test_config_file_and_workdir_errors_are_the_only_line(tmp_path, case, name):
  """Nothing but the error line is printed (these fail before jax is imported), and nothing is left behind."""
  (tmp_path / 'syntax.py').write_text('def get_config(:\n')
  (tmp_path / 'bare.py').write_text('LR = 1e-3\n')
  (tmp_path / 'a_file').write_text('')
  config = {'missing': tmp_path / 'missing.py', 'syntax': tmp_path / 'syntax.py',
            'no_get_config': tmp_path / 'bare.py'}.get(case, 'configs/tiny.py')
  workdir = tmp_path / 'a_file' / 'run' if case == 'workdir' else tmp_path / 'run'
  extra = ['--config.train.learning_rate=-0.001'] if case == 'learning_rate' else []
  proc = run_main(f'--config={config}', f'--workdir={workdir}', *extra, check=False)
  assert proc.returncode == 2 and not proc.stdout
  assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith('error: ') and name in proc.stderr, proc.stderr
  assert not (tmp_path / 'run').exists()
