"""ringlm entry point: parse flags, build and check the typed config, start distributed JAX, run --mode.

  python main.py --config=configs/tiny.py --workdir=runs/tiny [--mode=train] [--config.train.steps=100 ...]

Only the flags and the config are handled here; jax, the trainer and the studies are imported once the config has
passed, so a bad config is one line in well under a second, and `--mode=fit` needs neither jax nor TensorFlow.
"""

import ast
import json
import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from configs.errors import ConfigError, TrainingDiverged
from configs.sections import Config

MODES = ('train', 'eval', 'sample', 'estimate', 'compare', 'scaling', 'fit', 'export')

DEFAULT_CONFIG = 'configs/default.py'
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Config file (a get_config() module).')
flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics.jsonl, config.json.', required=True)
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_bool('distributed', False, 'Join a multi-process run described by the environment (TPU pod, SLURM); '
                  'automatic on a multi-host TPU VM.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 for multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes in a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index in a multi-process run.')
FLAGS = flags.FLAGS


def _on_tpu_pod() -> bool:
  """A TPU VM of a multi-host slice: its runtime lists every worker's hostname."""
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def _init_distributed() -> None:
  """Join a multi-process run described by flags (local CPU processes) or by the cluster (--distributed, or a
  multi-host TPU VM found from its environment)."""
  import jax

  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # only affects CPU devices
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed or _on_tpu_pod():
    jax.distributed.initialize()  # JAX detects the cluster (TPU pod, SLURM, Open MPI, Kubernetes) itself


def _write_config(config: Config, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)


def _check_workdir(workdir: str) -> None:
  """Creates the workdir and writes a scratch file in it, so a folder that cannot be written is one line up front."""
  try:
    os.makedirs(workdir, exist_ok=True)
    tempfile.TemporaryFile(dir=workdir).close()
  except OSError as e:
    raise ConfigError('--workdir', workdir, f'cannot create or write it ({e.strerror}); choose a writable folder')


def _run(config: Config, workdir: str, mode: str) -> None:
  _check_workdir(workdir)
  if mode == 'fit':  # numpy and scipy only
    from experiments import scaling

    _write_config(config, workdir)
    scaling.fit_only(config, workdir)
    return
  import jax

  from configs.validate import attention_kernel, validate
  from models.attention import dispatch

  _init_distributed()
  devices = None
  if mode == 'estimate' and config.estimate.topology:
    from train import estimate

    devices = estimate.topology_devices(config.estimate.topology)
  platform = devices[0].platform if devices else dispatch.target_platform()
  validate(config, len(devices) if devices else jax.device_count(), platform)
  from train.runtime import Runtime  # orbax and the trainer, once the config has passed

  runtime = Runtime(config, devices)
  if runtime.is_main:
    _write_config(config, workdir)
    kernel, why = attention_kernel(config, platform, len(devices) if devices else jax.device_count())
    print(f'{config.model.attention} attention, {kernel} kernel: {why}', flush=True)
  JOBS[mode](runtime, config, workdir)


def _train(runtime, config: Config, workdir: str) -> None:
  from train import trainer

  trainer.train(runtime.run(config, workdir))


def _eval(runtime, config: Config, workdir: str) -> None:
  from train import evaluate

  print(json.dumps(evaluate.evaluate_checkpoint(runtime.run(config, workdir))))


def _sample(runtime, config: Config, workdir: str) -> None:
  from train import sample

  for i, text in enumerate(sample.sample_checkpoint(runtime.run(config, workdir))):
    print(f'--- sample {i} ---\n{text}')


def _estimate(runtime, config: Config, workdir: str) -> None:
  from train import estimate

  for k, v in estimate.estimate(runtime.run(config, workdir, with_data=False)).items():
    print(f'{k:36s} {v:,}' if isinstance(v, int) else f'{k:36s} {v}')


def _compare(runtime, config: Config, workdir: str) -> None:
  from experiments import compare

  compare.run(runtime, config, workdir)


def _scaling(runtime, config: Config, workdir: str) -> None:
  from experiments import scaling

  scaling.sweep(runtime, config, workdir)


def _export(runtime, config: Config, workdir: str) -> None:
  from train import hf_checkpoint

  hf_checkpoint.export(runtime, config, workdir)


# Each job of a mode: (the command's runtime, the typed config, the workdir); `fit` runs in _run without devices.
JOBS = {'train': _train, 'eval': _eval, 'sample': _sample, 'estimate': _estimate, 'compare': _compare,
        'scaling': _scaling, 'export': _export}


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config_file(argv: list[str]) -> str:
  """The --config file named in argv (its path, without a ':argument'), or the default."""
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1].split(':', 1)[0]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return DEFAULT_CONFIG


def _check_config_file(path: str) -> None:
  """A config file that is missing, does not parse or defines no get_config is one line, not ml-collections'
  traceback (which it raises only when the config is first read)."""
  try:
    with open(path) as f:
      tree = ast.parse(f.read(), path)
  except OSError as e:
    _fail(f'--config={path}: cannot read it ({e.strerror}); presets are in configs/, e.g. configs/tiny.py')
  except SyntaxError as e:
    _fail(f'--config={path}: syntax error at line {e.lineno}: {e.msg}; fix the file')
  defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
  defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
  defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
  if 'get_config' not in defined:
    _fail(f'--config={path}: it defines no get_config(); a config file returns its ConfigDict from get_config()')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a bad config file or --config.x.y override reported as one line instead of a
  traceback."""
  _check_config_file(_config_file(argv))
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    name = str(e).strip('"\'')
    override = next((a for a in argv if a.startswith('--config.') and name in a.split('=')[0]), name)
    _fail(f'{override.split("=")[0].removeprefix("--")}: unknown config key; the keys are in configs/default.py')
  except (TypeError, ValueError) as e:
    _fail(f'{e}; check the --config overrides\' types against configs/default.py')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  try:
    _run(Config.from_dict(FLAGS.config.to_dict()), FLAGS.workdir, FLAGS.mode)
  except ConfigError as e:
    _fail(str(e))
  except TrainingDiverged as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
