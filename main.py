"""ringlm entry point: parse flags, validate the config, start distributed JAX, dispatch --mode.

  python main.py --config=configs/tiny.py --workdir=runs/tiny [--mode=train] [--config.train.steps=100 ...]
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs.errors import ConfigError
from train.loop import TrainingDiverged

MODES = ('train', 'eval', 'sample', 'estimate', 'compare', 'scaling', 'fit')

config_flags.DEFINE_config_file('config', 'configs/default.py', 'Config file (a get_config() module).')
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


def _run(config, workdir: str, mode: str) -> None:
  import jax

  from configs.validate import validate
  from experiments import compare, scaling
  from train import loop

  _init_distributed()
  validate(config, jax.device_count())
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  if mode == 'train':
    loop.train(config, workdir)
  elif mode == 'eval':
    print(json.dumps(loop.eval_only(config, workdir)))
  elif mode == 'sample':
    for i, text in enumerate(loop.sample_only(config, workdir)):
      print(f'--- sample {i} ---\n{text}')
  elif mode == 'estimate':
    result = loop.estimate(config, workdir)
    for k, v in result.items():
      print(f'{k:36s} {v:,}' if isinstance(v, int) else f'{k:36s} {v}')
  elif mode == 'compare':
    compare.run(config, workdir)
  elif mode == 'scaling':
    scaling.sweep(config, workdir)
  elif mode == 'fit':
    scaling.fit_only(config, workdir)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a bad --config.x.y override reported as one line instead of a traceback."""
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
    _run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except ConfigError as e:
    _fail(str(e))
  except TrainingDiverged as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
