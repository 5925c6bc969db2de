"""`make setup ACCEL=tpu|cuda` and `scripts/tpu_vm.sh --setup`: the accelerator pins are the ones jax pins, a bad
ACCEL is one line, and the launcher copies, sets up and starts every worker (gcloud itself is replaced by a stub
that records its calls: this machine has no TPU VM to reach)."""

import importlib.metadata
import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_dry_run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(['make', '-n', '-B', 'setup', *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize('accel, requirements', [('', 'requirements.txt'), ('ACCEL=tpu', 'requirements-tpu.txt'),
                                                 ('ACCEL=cuda', 'requirements-cuda.txt')])
def test_setup_installs_the_accelerators_requirements(accel, requirements):
  proc = make_dry_run(*filter(None, [accel]))
  assert proc.returncode == 0, proc.stderr
  assert f'pip install -q -r {requirements}' in proc.stdout


def test_unknown_accelerator_is_one_line():
  proc = make_dry_run('ACCEL=rocm')
  assert proc.returncode != 0
  assert proc.stderr.strip().endswith('ACCEL=rocm: use one of cpu tpu cuda, e.g. make setup ACCEL=tpu.  Stop.')
  assert len(proc.stderr.strip().splitlines()) == 1


def _pins(name: str) -> dict[str, str]:
  lines = (ROOT / name).read_text().splitlines()
  return dict(re.match(r'([\w\-\[\]]+)==(\S+)', line).groups() for line in lines if '==' in line and line[0] != '#')


def test_accelerator_pins_are_the_ones_the_pinned_jax_asks_for():
  jax_version = _pins('requirements.txt')['jax']
  assert importlib.metadata.version('jax') == jax_version
  wanted = {re.match(r'([\w\-\[\]]+)\s*([^;]*);\s*extra == "([\w\-]+)"', r).groups()
            for r in importlib.metadata.requires('jax') if 'extra ==' in r}
  libtpu_spec = next(spec for name, spec, extra in wanted if name == 'libtpu' and extra == 'tpu')
  assert _pins('requirements-tpu.txt')['libtpu'].startswith(libtpu_spec.removeprefix('==').rstrip('*'))
  cuda = _pins('requirements-cuda.txt')
  assert cuda['jax-cuda12-plugin[with-cuda]'] == cuda['jax-cuda12-pjrt'] == jax_version
  assert ('jax-cuda12-plugin[with-cuda]', f'<={jax_version},>={jax_version}', 'cuda12') in wanted


def test_tpu_vm_setup_copies_sets_up_then_launches_on_every_worker(tmp_path):
  (tmp_path / 'gcloud').write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$GCLOUD_LOG"\n')
  (tmp_path / 'gcloud').chmod(0o755)
  log = tmp_path / 'calls.txt'
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', GCLOUD_LOG=str(log))
  subprocess.run(['scripts/tpu_vm.sh', '--setup', 'slice', 'zone-a', '--config=configs/llama1b.py',
                  '--workdir=gs://bucket/run x'], cwd=ROOT, env=env, check=True)
  scp, setup, launch = log.read_text().splitlines()
  assert scp.startswith('compute tpus tpu-vm scp ') and scp.endswith('slice:ringlm.tar.gz --zone=zone-a --worker=all')
  assert setup.startswith('compute tpus tpu-vm ssh slice --zone=zone-a --worker=all --command=')
  assert 'tar -xzf ~/ringlm.tar.gz -C ~/ringlm && cd ~/ringlm && make setup ACCEL=tpu' in setup
  assert launch.endswith("main.py --distributed --config=configs/llama1b.py --workdir=gs://bucket/run\\ x ")
