"""tfds, imported with its logs down, and TensorFlow, imported only when tfds records are built or read.

TF takes seconds to import, and a run whose corpus, tokenizer and packed rows are already cached reads none of it:
builders, split sizes and the prepared-data check are tfds alone. So `tensorflow()` is called right before anything
that reads or writes records. TF is only a file reader here: if it grabbed GPU/TPU memory, JAX (which owns the
accelerators) would run out, so its devices are hidden before tfds can touch it.
"""

import contextlib
import functools
import io
import logging
import os
from collections.abc import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner ignores the log level; TF does no math here

import tensorflow_datasets as tfds  # noqa: E402  (imports TF lazily, on first use)

tfds.disable_progress_bar()


@functools.cache
def tensorflow() -> None:
  """Imports TF with its GPUs and TPUs hidden and its logger quiet; call before building or reading tfds records."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass  # already initialised (then already hidden by an earlier call) or no such device type
  tf.get_logger().setLevel('ERROR')


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
