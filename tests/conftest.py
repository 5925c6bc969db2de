"""Test-wide setup: 8 fake CPU devices for mesh tests, before jax is imported anywhere."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # scipy's L-BFGS is faster single-threaded on 2 cores
# The many main.py runs compile the same programs: JAX's persistent cache (fresh for each session, removed at exit)
# lets a later process load what an earlier one compiled. It changes no numbers: executables are keyed by their HLO.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ringlm-tests-jax-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='session')
def corpus(tmp_path_factory) -> pathlib.Path:
  """A folder of real text for fast end-to-end runs: 40 stdlib sources."""
  from data import builders

  root, out = builders.stdlib_root(), tmp_path_factory.mktemp('corpus_small')
  for file in [f for f in builders.stdlib_files() if 3_000 < f.stat().st_size < 40_000][::10][:40]:
    shutil.copy(file, out / file.relative_to(root).as_posix().replace('/', '_').replace('.py', '.txt'))
  return out


@pytest.fixture(scope='session')
def small_run_flags(corpus, tmp_path_factory) -> list[str]:
  """main.py flags for a small, fast model on `corpus` (data and tokenizer cached once per session)."""
  cache = tmp_path_factory.mktemp('cache_small')
  return ['--config=configs/tiny.py', f'--config.data.text_dir={corpus}', f'--config.data.cache_dir={cache}',
          '--config.data.vocab_size=512', '--config.data.seq_len=64', '--config.model.num_layers=2',
          '--config.train.batch_size=4', '--config.train.log_every=2', '--config.train.eval_every=3',
          '--config.train.eval_batches=2', '--config.checkpoint.every_steps=3']


def config_of(flags: list[str]):
  """The typed Config that main.py builds from these flags (a --config= preset and --config.x.y= overrides)."""
  import ast
  import importlib

  preset = next((f.split('=', 1)[1] for f in flags if f.startswith('--config=')), 'configs/default.py')
  c = importlib.import_module(preset.removesuffix('.py').replace('/', '.')).get_config()
  for flag in flags:
    if flag.startswith('--config.'):
      key, text = flag.removeprefix('--config.').split('=', 1)
      *path, last = key.split('.')
      node = c
      for part in path:
        node = node[part]
      try:
        node[last] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        node[last] = text
  return typed(c)


def typed(config):
  """The typed Config of an ml_collections config, as main.py builds it."""
  from configs.sections import Config

  return Config.from_dict(config.to_dict())


def typed_mesh(mesh_config):
  """The typed mesh section of an ml_collections `config.mesh`."""
  from configs.sections import MeshConfig

  return MeshConfig(**mesh_config.to_dict())


def run_main(*flags: str, check: bool = True, devices: int = 1, env: dict[str, str] | None = None,
             python: str = sys.executable) -> subprocess.CompletedProcess:
  """Run main.py as a user would, in a fresh process of `python` with `devices` fake CPU devices (and `env` on
  top)."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             **(env or {}))
  proc = subprocess.run([python, 'main.py', *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}')
  return proc
