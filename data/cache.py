"""The cache dir (built tfds data, tokenizers, packed arrays): atomic writes under a file lock.

Several processes on one machine (scripts/local_multiprocess.sh) may ask for the same artefact at once: the first
builds it while the others wait on the lock, then all read the same files.
"""

import contextlib
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterator

import numpy as np


def root(data_config) -> pathlib.Path:
  """The cache folder of a DataConfig (`data.cache_dir`, ~ expanded)."""
  return pathlib.Path(os.path.expanduser(data_config.cache_dir))


@contextlib.contextmanager
def lock(path: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive lock named after `path` (creating its folder) for the duration of the block."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path.parent / f'.{path.name}.lock', 'w') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def write_bytes(path: pathlib.Path, payload: bytes) -> None:
  """Writes beside `path` then renames, so readers never see half a file."""
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f'.{path.name}.', delete=False) as handle:
    handle.write(payload)
  os.replace(handle.name, path)


def save_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """One .npy per array in a folder, renamed into place whole so np.load(mmap_mode='r') can read each."""
  scratch = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f'.{path.name}.'))
  for name, array in arrays.items():
    np.save(scratch / f'{name}.npy', array)
  os.replace(scratch, path)


def load_arrays(path: pathlib.Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
  return {name: np.load(path / f'{name}.npy', mmap_mode='r') for name in names}
