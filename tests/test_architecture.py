"""The structure the code base promises: typed config sections below main.py, one list of each key's choices,
and no heavy import (TensorFlow, jax) for commands that do not need it."""

import ast
import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from configs import default
from configs.errors import ConfigError
from configs.sections import ARCHITECTURES, ATTENTION_KERNELS, ATTENTION_KINDS, OBJECTIVES, Config, ModelConfig
from tests.conftest import ROOT

LIBRARY = ('models', 'data', 'train', 'sharding', 'experiments')


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
  return names


def test_no_module_below_main_reads_the_ml_collections_config():
  """Only main.py and the presets know the user's format; every module takes a typed section."""
  readers = [str(p.relative_to(ROOT)) for package in LIBRARY for p in sorted((ROOT / package).rglob('*.py'))
             if any(name.split('.')[0] == 'ml_collections' for name in _imports(p))]
  assert readers == []


def test_every_choice_is_listed_once_and_implemented():
  from models.attention import PATHS, dispatch
  from models.attention.pallas import BIDIRECTIONAL
  from train import objectives, params

  assert tuple(objectives.OBJECTIVES) == OBJECTIVES == tuple(objectives.MASK_KINDS)
  assert set(objectives.MASK_KINDS.values()) <= set(BIDIRECTIONAL)
  assert tuple(PATHS) == ATTENTION_KINDS
  assert tuple(params.MODELS) == ARCHITECTURES
  assert dispatch.KERNELS == ATTENTION_KERNELS


def test_model_defaults_are_the_default_config():
  model = default.get_config().model
  for f in dataclasses.fields(ModelConfig):
    if f.default is not dataclasses.MISSING:
      assert model[f.name] == f.default, f.name


def test_config_round_trips_and_overrides_recompute_derived_values():
  values = default.get_config().to_dict()
  config = Config.from_dict(values)
  assert config.to_dict() == values and config.model.head_dim == 128 // 4  # 0 in the user's dict: derived
  wider = config.override({'model.d_model': 256, 'objective': 'masked_lm'})
  assert wider.model.head_dim == 64 and wider.objective == 'masked_lm' and config.model.d_model == 128
  for changes, key in (({'model.d_modl': 1}, 'model.d_modl'), ({'train.learning_rate': -1.0}, 'train.learning_rate')):
    with pytest.raises(ConfigError) as err:
      config.override(changes)
    assert err.value.key == key


def _main_modules(*flags: str) -> tuple[subprocess.CompletedProcess, set[str]]:
  """Runs main.py with `flags` in a fresh interpreter; returns the process and which heavy modules it loaded."""
  probe = ('import runpy, sys\n'
           f'sys.argv = ["main.py", *{list(flags)!r}]\n'
           'try:\n'
           '  runpy.run_path("main.py", run_name="__main__")\n'
           'except SystemExit as e:\n'
           '  code = e.code\n'
           'print("LOADED", sorted(m for m in ("tensorflow", "tensorflow_datasets", "jax", "orbax") if m in sys.modules))\n'
           'sys.exit(code)\n')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  loaded = [line for line in proc.stdout.splitlines() if line.startswith('LOADED')]
  assert loaded, proc.stderr[-2000:]
  return proc, set(ast.literal_eval(loaded[-1].removeprefix('LOADED ')))


def test_a_config_error_loads_neither_tensorflow_nor_jax(tmp_path):
  proc, loaded = _main_modules('--config=configs/tiny.py', f'--workdir={tmp_path}', '--config.model.d_model=-8')
  assert proc.returncode == 2 and proc.stderr.startswith('error: model.d_model=-8')
  assert loaded == set()


def test_a_mesh_error_loads_no_tensorflow(tmp_path):
  proc, loaded = _main_modules('--config=configs/tiny.py', f'--workdir={tmp_path}', '--config.mesh.tensor=3')
  assert proc.returncode == 2 and proc.stderr.startswith('error: mesh.tensor=3: with mesh.data=-1 the other axes multiply to 3')
  assert 'tensorflow' not in loaded and 'jax' in loaded


def test_fit_mode_loads_neither_tensorflow_nor_jax(tmp_path):
  points = tmp_path / 'points.csv'
  rows = [(n, d, 2 + 400 / n ** 0.34 + 400 / d ** 0.28) for n in (1e5, 3e5, 1e6) for d in (1e8, 3e8)]
  points.write_text('N,D,loss\n' + ''.join(f'{n},{d},{loss}\n' for n, d, loss in rows))
  proc, loaded = _main_modules(f'--workdir={tmp_path / "fit"}', '--mode=fit', f'--config.scaling.points={points}',
                               '--config.scaling.bootstrap=0')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / 'fit' / 'scaling' / 'fit.json').exists()
  assert loaded == set()
