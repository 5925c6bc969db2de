"""TensorFlow and tfds, imported once with their logs down and no accelerators.

TF is only a file reader here: if it grabbed GPU/TPU memory, JAX (which owns the accelerators) would run out.
"""

import contextlib
import io
import logging
import os
from collections.abc import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner ignores the log level; TF does no math here

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

try:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
except (RuntimeError, ValueError):
  pass  # already initialised (then already hidden by an earlier import of this module) or no such device type
tf.get_logger().setLevel('ERROR')
tfds.disable_progress_bar()



@contextlib.contextmanager
def quietly() -> Iterator[None]:
  """Silences tfds' build banner (printed to stdout) and absl chatter about custom builder configs."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.setLevel(level)
