"""The benchmark scripts the accelerator checks run (benchmarks/kernel_checks.sh) work on CPU, so they cannot rot
before a device is lent: each kernel setting at toy size, the fused kernels in Pallas' interpreter. Nothing here
looks at a time; the JSON each prints must name the setting it ran and hold its measurements. The pure-JAX kernel
(`--kernel=jax`) is the same code with the kernel the rest of the suite tests."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_benchmark(script: str, *flags: str, devices: int = 1) -> list[dict]:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  out = subprocess.run([sys.executable, f'benchmarks/{script}', *flags], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]


@pytest.mark.parametrize('kernel, interpret', [('pallas', 'gpu'), ('pallas', 'tpu')])
def test_attention_benchmark_runs_each_fused_kernel(kernel, interpret):
  rows = run_benchmark('attention.py', '--paths=blockwise', f'--kernel={kernel}', '--seq_lens=256', '--runs=1',
                       '--heads=2', '--kv_heads=1', '--q_block=128', '--kv_block=128',
                       *([f'--interpret={interpret}'] if interpret else []))
  assert len(rows) == 1 and rows[0]['kernel'] == kernel and rows[0]['interpret'] == interpret
  assert rows[0]['median_s'] > 0 and rows[0]['temp_bytes_per_device'] > 0


def test_attention_benchmark_runs_the_ring_with_splash_hops():
  rows = run_benchmark('attention.py', '--paths=ring', '--kernel=pallas', '--interpret=tpu', '--seq_lens=512',
                       '--runs=1', '--heads=2', '--kv_heads=1', '--q_block=128', '--kv_block=128', devices=2)
  assert len(rows) == 1 and rows[0]['path'] == 'ring' and rows[0]['devices'] == 2 and rows[0]['kernel'] == 'pallas'
  assert rows[0]['median_s'] > 0 and rows[0]['temp_bytes_per_device'] > 0


@pytest.mark.parametrize('kernel, interpret', [('pallas', 'tpu')])
def test_train_step_benchmark_runs_the_fused_kernel(kernel, interpret):
  rows = run_benchmark('train_step.py', f'--kernel={kernel}', '--num_layers=1', '--d_model=64', '--num_heads=2',
                       '--num_kv_heads=1', '--d_ff=128', '--vocab_size=256', '--seq_len=256', '--batch=2',
                       '--block=128', '--steps=1', '--remat', *([f'--interpret={interpret}'] if interpret else []))
  assert len(rows) == 1 and rows[0]['kernel_used'] == kernel and rows[0]['tokens_per_s'] > 0
  assert 0 < rows[0]['fraction_of_matmul_peak']


@pytest.mark.parametrize('script', ['gpu_check.sh', 'tpu_check.sh', 'kernel_checks.sh'])
def test_check_scripts_parse(script):
  assert subprocess.run(['bash', '-n', f'benchmarks/{script}'], cwd=ROOT).returncode == 0
