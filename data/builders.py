"""tfds builders for the local corpora: the installed Python standard library, and any folder of text files.

Both read local files only (nothing is downloaded), put one document per file with features `text` and `path`
(relative to the corpus root), and split train/validation with data.split: near-duplicate files are grouped, then
whole groups are split by a hash, so the split depends on neither file order nor machine and no copy of a validation
file sits in train. Built once into a data dir, they are then read like any tfds dataset.
"""

import abc
import dataclasses
import hashlib
import os
import pathlib
import re
import sys
import sysconfig
from collections.abc import Iterator

from configs.errors import ConfigError
from data import split
from data.quiet_tf import tfds

# Folders of the stdlib that hold tests, test data or installed third-party packages rather than library source.
_STDLIB_SKIP_DIRS = frozenset({'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__'})


def stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()['stdlib'])


def stdlib_files() -> list[pathlib.Path]:
  """The stdlib's own .py sources, sorted, without tests and site-packages."""
  root, files = stdlib_root(), []
  for folder, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _STDLIB_SKIP_DIRS)
    files += [pathlib.Path(folder, n) for n in names if n.endswith('.py')]
  return sorted(files)


def text_dir_files(text_dir: pathlib.Path, text_glob: str) -> list[pathlib.Path]:
  return sorted(p for p in text_dir.glob(text_glob) if p.is_file())


def read_documents(root: pathlib.Path, files: list[pathlib.Path]) -> tuple[list[tuple[str, str]], dict[str, int]]:
  """[(path, text), ...] of the files that are UTF-8 text, and how many were skipped for being something else
  (undecodable, or with NUL bytes: binaries, images, compressed files) or for being blank."""
  docs, skipped = [], {'not UTF-8 text': 0, 'empty': 0}
  for file in files:
    try:
      text = file.read_bytes().decode('utf-8')
    except UnicodeDecodeError:
      text = '\0'
    if '\0' in text:
      skipped['not UTF-8 text'] += 1
    elif not text.strip():
      skipped['empty'] += 1
    else:
      docs.append((file.relative_to(root).as_posix(), text))
  return docs, skipped


def hold_out_tails(docs: list[tuple[str, str]], validation_percent: int) -> dict[str, list[tuple[str, str]]]:
  """Validation from too few documents to hold out whole ones: the last validation_percent of each document's
  characters (from the start of a line where one begins there), `path#tail`; train keeps the rest."""
  out = {'train': [], 'validation': []}
  for path, text in docs:
    cut = min(len(text) - 1, len(text) * (100 - validation_percent) // 100)
    line = text.find('\n', cut, len(text) - 1)
    cut = line + 1 if line >= 0 else cut
    out['train'].append((path, text[:cut]))
    out['validation'].append((f'{path}#tail', text[cut:]))
  return out


def split_documents(root: pathlib.Path, files: list[pathlib.Path],
                    validation_percent: int) -> dict[str, list[tuple[str, str]]]:
  """{'train': [(path, text), ...], 'validation': [...]}: the files that are UTF-8 text, split by
  data.split.assign_splits, each split in path order. Too few documents for that to give both splits some: each
  document's tail is held out instead (`hold_out_tails`). Skipped files and the fallback are reported on stderr
  (stdout is silenced while tfds builds)."""
  docs, skipped = read_documents(root, files)
  skipped_text = ', '.join(f'{n} {why}' for why, n in skipped.items() if n)
  if not docs:
    raise ConfigError('data.text_dir', str(root), f'none of its {len(files)} files is a non-empty UTF-8 text file '
                      f'({skipped_text}); add text files or change data.text_glob')
  if skipped_text:
    print(f'{root}: skipped {skipped_text} of {len(files)} files', file=sys.stderr, flush=True)
  sides = split.assign_splits(docs, validation_percent)
  out = {s: sorted(d for d in docs if sides[d[0]] == s) for s in ('train', 'validation')}
  if not (out['train'] and out['validation']):
    print(f'{root}: {len(docs)} documents are too few to hold out whole ones ({validation_percent}%): validation is '
          f'the last {validation_percent}% of each document, train the rest', file=sys.stderr, flush=True)
    out = hold_out_tails(sorted(docs), validation_percent)
  return out


class _LocalFilesBuilder(tfds.core.GeneratorBasedBuilder):
  """What both local builders share: features, the two splits, and no download checksums to look up."""

  code_path = None  # tfds looks for a checksums file beside the builder's code; local files have none

  @abc.abstractmethod
  def _root(self) -> pathlib.Path:
    """The folder document paths are relative to."""

  @abc.abstractmethod
  def _files(self) -> list[pathlib.Path]:
    """The documents, sorted."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({'text': tfds.features.Text(), 'path': tfds.features.Text()})
    return tfds.core.DatasetInfo(builder=self, description=f'One document per file under {self._root()}',
                                 features=features)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    docs = split_documents(self._root(), self._files(), self.builder_config.validation_percent)
    return {s: self._generate_examples(d) for s, d in docs.items()}

  def _generate_examples(self, docs: list[tuple[str, str]]) -> Iterator[tuple[str, dict[str, str]]]:
    for path, text in docs:
      yield path, {'text': text, 'path': path}


@dataclasses.dataclass(eq=False)
class StdlibConfig(tfds.core.BuilderConfig):
  validation_percent: int = 5


class RinglmStdlib(_LocalFilesBuilder):
  """The running interpreter's standard library sources: real text every machine already has.

  The config name carries the Python version (the stdlib differs between them) and the validation percent.
  """

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'One document per .py file; tests and site-packages left out.',
                   '1.1.0': 'Split by groups of near-duplicate files (data.split), not by each path alone.'}

  @classmethod
  def for_percent(cls, validation_percent: int, data_dir: str) -> 'RinglmStdlib':
    name = f'py{sys.version_info.major}_{sys.version_info.minor}_val{validation_percent}'
    return cls(config=StdlibConfig(name=name, validation_percent=validation_percent), data_dir=data_dir)

  def _root(self) -> pathlib.Path:
    return stdlib_root()

  def _files(self) -> list[pathlib.Path]:
    return stdlib_files()


@dataclasses.dataclass(eq=False)
class TextDirConfig(tfds.core.BuilderConfig):
  text_dir: str = ''
  text_glob: str = '**/*.txt'
  validation_percent: int = 5


class RinglmTextDir(_LocalFilesBuilder):
  """Any folder of text files, one document per file.

  The config name hashes the folder's absolute path, the glob, the validation percent and the files' names, sizes
  and mtimes, so two folders (or one folder edited) never share built data.
  """

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'One document per file matching the glob.',
                   '1.1.0': 'Split by groups of near-duplicate files (data.split), not by each path alone.',
                   '1.2.0': 'Files that are not UTF-8 text, and blank ones, skipped; too few documents to split: '
                            'each one\'s tail held out for validation.'}

  @classmethod
  def for_folder(cls, text_dir: pathlib.Path, text_glob: str, validation_percent: int,
                 data_dir: str) -> 'RinglmTextDir':
    text_dir = text_dir.resolve()
    identity = hashlib.sha256(f'{text_dir}\0{text_glob}\0{validation_percent}'.encode())
    for file in text_dir_files(text_dir, text_glob):
      stat = file.stat()
      identity.update(f'\0{file.relative_to(text_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}'.encode())
    label = re.sub(r'[^A-Za-z0-9_]', '_', text_dir.name)[:40]
    config = TextDirConfig(name=f'{label}_{identity.hexdigest()[:16]}', text_dir=str(text_dir),
                           text_glob=text_glob, validation_percent=validation_percent)
    return cls(config=config, data_dir=data_dir)

  def _root(self) -> pathlib.Path:
    return pathlib.Path(self.builder_config.text_dir)

  def _files(self) -> list[pathlib.Path]:
    return text_dir_files(self._root(), self.builder_config.text_glob)
