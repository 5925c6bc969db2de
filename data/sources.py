"""Which text to read: the embedded stdlib corpus, a folder of text files, or a tfds catalogue dataset.

The two local corpora are built (once, under data.cache_dir) by the builders in data/builders.py and are small enough
to read whole; a catalogue dataset is read as is and streamed, since it may not fit in memory.
"""

import dataclasses
import functools
import hashlib
import pathlib
from collections.abc import Iterator

from configs.errors import ConfigError
from configs.sections import DataConfig
from data import builders, cache
from data.quiet_tf import quietly, tensorflow, tfds


@dataclasses.dataclass(frozen=True)
class Corpus:
  builder: tfds.core.DatasetBuilder
  identity: str  # stable name of this text, for cache keys of what is derived from it
  text_key: str  # the feature holding the document text
  local: bool  # built here from local files (read whole) rather than a catalogue dataset (streamed)


def open_corpus(data_config: DataConfig) -> Corpus:
  """The configured corpus, building a local one on first use (under a lock, so concurrent processes wait)."""
  if data_config.tfds_name:
    return _catalogue(data_config)
  data_dir = str(cache.root(data_config) / 'tfds')
  if data_config.text_dir:
    make = functools.partial(builders.RinglmTextDir.for_folder, pathlib.Path(data_config.text_dir).expanduser(),
                             data_config.text_glob, data_config.validation_percent, data_dir)
  else:
    make = functools.partial(builders.RinglmStdlib.for_percent, data_config.validation_percent, data_dir)
  with quietly():
    builder = make()
    with cache.lock(pathlib.Path(builder.data_dir)):
      if not builder.is_prepared():
        tensorflow()
      builder.download_and_prepare()
    builder = make()  # reloads the split sizes, in case another process built the data while this one waited
  identity = f'{builder.name}_{builder.builder_config.name}_{builder.version}'
  return Corpus(builder, identity, 'text', local=True)


def _catalogue(data_config: DataConfig) -> Corpus:
  name, data_dir = data_config.tfds_name, data_config.tfds_data_dir or None
  tensorflow()  # streamed: every batch reads records
  try:
    with quietly():
      builder = tfds.builder(name, data_dir=data_dir)
  except (ValueError, OSError) as e:
    raise ConfigError('data.tfds_name', name, f'tfds cannot open it ({type(e).__name__}); check the name and '
                      'data.tfds_data_dir') from None
  with quietly():
    prepared = builder.is_prepared()
  if not prepared:
    raise ConfigError('data.tfds_data_dir', data_config.tfds_data_dir,
                      f'{name} is not prepared there (it is read as is, never downloaded); run `tfds build {name}` '
                      'into a data dir and point data.tfds_data_dir at it')
  if data_config.text_key not in builder.info.features:
    raise ConfigError('data.text_key', data_config.text_key,
                      f'{name} has features {sorted(builder.info.features)}; name the one holding the text')
  place = hashlib.sha256(str(builder.data_dir).encode()).hexdigest()[:12]
  identity = f'{builder.name}_{builder.builder_config.name if builder.builder_config else ""}_{builder.version}_' \
             f'{data_config.text_key}_{place}'
  return Corpus(builder, identity, data_config.text_key, local=False)


def check_split(corpus: Corpus, split: str, key: str) -> None:
  """Raises ConfigError (naming `key`, the config key `split` came from) if the corpus cannot read `split`."""
  try:
    tfds.core.ReadInstruction.from_spec(split)
    base = split.split('[')[0]
    if base not in corpus.builder.info.splits:
      raise ValueError(base)
  except (ValueError, AssertionError):
    raise ConfigError(key, split, f'{corpus.builder.name} has splits {sorted(corpus.builder.info.splits)}') from None
  if not corpus.builder.info.splits[base].num_examples:
    raise ConfigError(key, split, f'{corpus.builder.name} has no documents in {base!r}; for a local folder add files '
                      'or raise data.validation_percent')


def local_documents(corpus: Corpus, split: str) -> list[str]:
  """Every document of `split`, ordered by path (so nothing depends on how tfds laid out the records)."""
  tensorflow()
  dataset = corpus.builder.as_dataset(split=split, shuffle_files=False)
  examples = sorted((e['path'], e['text']) for e in tfds.as_numpy(dataset))
  return [text.decode('utf-8') for _, text in examples]


def stream_documents(corpus: Corpus, split: str, shard: int, num_shards: int, skip: int = 0) -> Iterator[str]:
  """Shard `shard` of `num_shards` of `split` (tfds even_splits, disjoint), in stored order, once, from its document
  `skip` on (skipped records are read but never decoded or tokenized)."""
  tensorflow()
  dataset = corpus.builder.as_dataset(split=tfds.even_splits(split, n=num_shards)[shard], shuffle_files=False)
  dataset = dataset.skip(skip).map(lambda example: example[corpus.text_key])
  for text in tfds.as_numpy(dataset):
    yield text.decode('utf-8', errors='replace')
