"""--mode=estimate --config.estimate.topology: the train step compiled ahead of time for a TPU slice this machine
does not have (libtpu's compiler), with the jax and the pallas attention kernels; without libtpu, one line saying how
to install it. The compiles run in .venv-tpu (`make test` builds it: .venv plus libtpu), or in this interpreter
where it has libtpu (`make setup ACCEL=tpu`); they are skipped only where neither has it."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_main


def _with_libtpu() -> str | None:
  """An interpreter with libtpu: this one, or .venv-tpu's."""
  if importlib.util.find_spec('libtpu') is not None:
    return sys.executable
  overlay = ROOT / '.venv-tpu' / 'bin' / 'python'
  if overlay.exists() and subprocess.run([overlay, '-c', 'import libtpu'], capture_output=True).returncode == 0:
    return str(overlay)
  return None


TPU_PYTHON = _with_libtpu()
FLAGS = ('--config=configs/tiny.py', '--mode=estimate', '--config.estimate.topology=v5e:2x2',
         '--config.model.attention=blockwise')


@pytest.mark.skipif(TPU_PYTHON is None, reason='libtpu is not installed (make test builds .venv-tpu with it)')
@pytest.mark.parametrize('kernel', ['jax', 'pallas'])
def test_train_step_compiles_for_a_tpu_topology(tmp_path, kernel):
  proc = run_main(*FLAGS, f'--workdir={tmp_path}', f'--config.model.attention_kernel={kernel}', python=TPU_PYTHON)
  assert f'blockwise attention, {kernel} kernel' in proc.stdout
  result = json.loads((tmp_path / 'estimate.json').read_text())
  assert result['device_kind'].startswith('TPU v5') and result['devices'] == 4
  assert result['memory_per_device_bytes'] > result['memory_params_per_device_bytes'] > 0
  # splash's forward, dq and dkv kernels in each of tiny's 4 layers; none with the pure-JAX kernel
  assert result['pallas_kernel_calls'] == (12 if kernel == 'pallas' else 0)


@pytest.mark.skipif(TPU_PYTHON is None, reason='libtpu is not installed (make test builds .venv-tpu with it)')
def test_ring_with_splash_hops_compiles_for_a_tpu_topology(tmp_path):
  """The fused ring hops lower through Mosaic (the interpreter does not check that): one layer, 1024 tokens over a
  4-chip sequence axis, so each half-chunk is one 128-lane block."""
  proc = run_main(*FLAGS[:-1], '--config.model.attention=ring', '--config.mesh.data=1', '--config.mesh.sequence=4',
                  '--config.data.seq_len=1024', '--config.model.num_layers=1', '--config.train.batch_size=4',
                  '--config.model.attention_kernel=pallas', f'--workdir={tmp_path}', python=TPU_PYTHON)
  assert 'ring attention, pallas kernel' in proc.stdout
  result = json.loads((tmp_path / 'estimate.json').read_text())
  # per q half-chunk, the causal and the full kernel of the switch; forward, dq and dkv; in the ring's two hop
  # loops (the last hop sends nothing): 2 x 2 x 3 x 2
  assert result['pallas_kernel_calls'] == 24


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is not None, reason='this interpreter has libtpu')
def test_without_libtpu_a_topology_is_one_line_naming_the_install(tmp_path):
  proc = run_main(*FLAGS, f'--workdir={tmp_path}', check=False)
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert lines == ["error: estimate.topology='v5e:2x2': compiling for a TPU needs libtpu: run `make setup "
                   "ACCEL=tpu` (or pip install -r requirements-tpu.txt)"]


@pytest.mark.skipif(TPU_PYTHON is None, reason='libtpu is not installed (make test builds .venv-tpu with it)')
def test_a_step_that_overflows_the_chips_is_one_line_saying_by_how_much(tmp_path):
  """What a TPU user most needs before launch: 512 rows of 2048 tokens under vanilla attention ([S, S] logits) do
  not fit 4 v5e chips' 16 GB, and the estimate says so in one line with the compiler's numbers and the remedies."""
  proc = run_main(*FLAGS[:-1], '--config.data.seq_len=2048', '--config.train.batch_size=512', f'--workdir={tmp_path}',
                  check=False, python=TPU_PYTHON)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and 'does not fit' in lines[0] and 'exceeds available HBM' in lines[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
