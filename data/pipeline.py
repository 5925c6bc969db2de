"""The trainer's one entry point: `make_dataset(data, seed, split, process_index, process_count).batch(step, B)`.

Batches are indexed by step, not drawn from an iterator: the batch for (seed, step) is the same whatever was asked
before, so resuming at step k needs only k (no iterator state in checkpoints).

Local corpora (stdlib, text_dir) are tokenized and packed whole once, cached as .npy under data.cache_dir, and
memory-mapped. Row r of the endless training stream is row perm_e[r % N] of the packed split, where
e = r // N is the epoch and perm_e a permutation seeded by (seed, e). Other splits (evaluation) read one epoch of a
permutation seeded by EVAL_SEED whatever the run's seed: a sample spread over the whole split, the same batches for
every evaluation and every run, and an error rather than a wrap past the split's end. Global batch `step` is stream rows [step*B, (step+1)*B); process p of P
takes its contiguous B/P of them, so the processes' rows are disjoint and together form the one-process batch.

Catalogue datasets (data.tfds_name) may not fit in memory, so they are streamed: each process reads its own
tfds.even_splits slice in stored order (no shuffle; catalogue data such as c4 is stored shuffled), packs as it
goes and repeats at the end. Batch `step` is rows [step*b, (step+1)*b) of that process's stream (b = B/P), so
results depend only on step. Where every 64th row starts (epoch, document, token offset) is recorded as the stream
is read, and saved to data.cache_dir every 1024 rows: a batch behind the reader, or far ahead (a resumed run), is
reached by skipping to the nearest recorded row at or before it (skipped documents are not decoded or tokenized)
and packing < 64 rows from there; only rows this machine has never recorded must be read through. Here the global
batch is the processes' batches together, which differs from what one process would read alone.
"""

import hashlib
import io
import pathlib
import re
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from configs.errors import ConfigError
from configs.sections import DataConfig
from data import cache, packing, sources, tokenizers

_PACK_FORMAT = 1  # bump when packing changes, so cached arrays are rebuilt
_INDEX_EVERY = 64  # streamed rows between recorded row starts: a resumed stream seeks to one, then reads < 64 rows
_INDEX_SAVE_EVERY = 16  # recorded starts between writes of the table (a new run re-reads at most 64 * 16 rows)
_FIELDS = ('tokens', 'segment_ids', 'positions')
EVAL_SEED = 0  # orders every evaluation split, whatever the run's seed, so runs are scored on the same rows


class Dataset(Protocol):
  tokenizer: tokenizers.Tokenizer
  seq_len: int
  num_rows: int | None  # packed rows in the split; None when streamed (unknown without reading it all)

  def batch(self, step: int, global_batch_size: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`: tokens, segment_ids, positions, each [B / P, S] int32."""

  def unigram_entropy(self) -> float | None:
    """Entropy of the split's token frequencies (nats/token); None when streamed."""


def make_dataset(data_config: DataConfig, seed: int, split: str, process_index: int = 0, process_count: int = 1,
                 shuffle: bool = True) -> Dataset:
  """Opens (building and caching on first use) this process's view of `split`.

  The train split repeats in epochs, each a permutation seeded by `seed`; any other split is read once in the order
  EVAL_SEED gives it (local corpora; shuffle=False: stored order).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  d = data_config
  corpus = sources.open_corpus(d)
  sources.check_split(corpus, split, 'data.train_split' if split == d.train_split else 'data.eval_split')
  sources.check_split(corpus, d.train_split, 'data.train_split')  # the tokenizer is trained on it
  tokenizer = tokenizers.make_tokenizer(d, corpus.identity, _train_texts(corpus, d.train_split))
  if corpus.local:
    rows = _packed(d, corpus, split, tokenizer)
    training = split == d.train_split
    return LocalDataset(tokenizer, rows, process_index, process_count, seed=seed if training else EVAL_SEED,
                        shuffle=shuffle, repeat=training)
  index = (cache.root(d) / 'stream_index' / f'{corpus.identity}_{_split_key(split)}_{tokenizer.identity}_S{d.seq_len}_'
           f'p{process_index}of{process_count}_f{_PACK_FORMAT}.npy')
  return StreamingDataset(tokenizer, corpus, split, d.seq_len, process_index, process_count, index)


def _train_texts(corpus: sources.Corpus, split: str) -> Iterator[str]:
  """Lazily, the tokenizer's training text (only read when no cached tokenizer exists)."""
  if corpus.local:
    yield from sources.local_documents(corpus, split)
  else:
    yield from sources.stream_documents(corpus, split, 0, 1)


def _split_key(split: str) -> str:
  """A split spec ('train[:90%]') as a file-name part."""
  return f'{re.sub(r"[^A-Za-z0-9_]", "_", split)}_{hashlib.sha256(split.encode()).hexdigest()[:8]}'


def _packed(d: DataConfig, corpus: sources.Corpus, split: str, tokenizer: tokenizers.Tokenizer) -> dict[str, np.ndarray]:
  """The whole split tokenized and packed, from the cache (built here on first use)."""
  name = f'{corpus.identity}_{_split_key(split)}_{tokenizer.identity}_S{d.seq_len}_f{_PACK_FORMAT}'
  path = cache.root(d) / 'packed' / name
  with cache.lock(path):
    if not path.exists():
      ids = tokenizer.encode_batch(sources.local_documents(corpus, split))
      rows = packing.pack(ids, d.seq_len, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
      cache.save_arrays(path, rows.as_dict())
  return cache.load_arrays(path, _FIELDS)


def _rows_per_process(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ConfigError('train.batch_size', global_batch_size,
                      f'use a positive multiple of the process count ({process_count})')
  return global_batch_size // process_count


class LocalDataset:
  """A packed split held as memory-mapped [N, S] arrays, indexed by step (see the module docstring)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, rows: dict[str, np.ndarray], process_index: int,
               process_count: int, seed: int, shuffle: bool, repeat: bool):
    self.tokenizer, self._rows = tokenizer, rows
    self.num_rows, self.seq_len = rows['tokens'].shape
    self._process_index, self._process_count = process_index, process_count
    self._seed, self._shuffle, self._repeat = seed, shuffle, repeat
    self._perms: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:  # a batch spans at most two epochs (when B <= N)
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self.num_rows)
    return self._perms[epoch]

  def unigram_entropy(self) -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best model that ignores context.

    A language model's loss should end far below it; bos tokens are left out (their position makes them free).
    """
    tokens = self._rows['tokens'][self._rows['segment_ids'] != 0]
    counts = np.bincount(tokens[tokens != self.tokenizer.bos_id], minlength=self.tokenizer.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

  def batch(self, step: int, global_batch_size: int) -> dict[str, np.ndarray]:
    if step < 0:
      raise ValueError(f'step {step} < 0')
    local = _rows_per_process(global_batch_size, self._process_count)
    stream_B = step * global_batch_size + self._process_index * local + np.arange(local)
    if not self._repeat and (step + 1) * global_batch_size > self.num_rows:
      raise ValueError(f'batch {step} of {global_batch_size} rows is past the {self.num_rows} rows of the split')
    epoch_B, offset_B = np.divmod(stream_B, self.num_rows)
    index_B = offset_B.copy()
    if self._shuffle:
      for epoch in np.unique(epoch_B):
        in_epoch_B = epoch_B == epoch
        index_B[in_epoch_B] = self._permutation(int(epoch))[offset_B[in_epoch_B]]
    return {name: np.asarray(self._rows[name][index_B], np.int32) for name in _FIELDS}


class StreamingDataset:
  """This process's slice of a catalogue split, packed as read, repeated endlessly (see the module docstring)."""

  num_rows = None

  def unigram_entropy(self) -> None:
    return None  # would need the whole split

  def __init__(self, tokenizer: tokenizers.Tokenizer, corpus: sources.Corpus, split: str, seq_len: int,
               process_index: int, process_count: int, index_path: pathlib.Path):
    self.tokenizer, self.seq_len = tokenizer, seq_len
    self._corpus, self._split = corpus, split
    self._process_index, self._process_count = process_index, process_count
    self._stream: Iterator[tuple[np.ndarray, ...]] | None = None
    self._next_row = 0  # index in this process's stream of the row self._stream yields next
    self._index_path = index_path
    self._index = {int(r): (int(e), int(d), int(o)) for r, e, d, o in
                   (np.load(index_path) if index_path.exists() else np.zeros((0, 4), np.int64))}
    self._unsaved = 0

  def _rows_from(self, row: int, epoch: int, doc: int, offset: int) -> Iterator[tuple[np.ndarray, ...]]:
    """The stream from `row` on, which starts at token `offset` of document `doc` of `epoch`; records where every
    _INDEX_EVERY-th row starts."""
    while True:
      texts = sources.stream_documents(self._corpus, self._split, self._process_index, self._process_count, doc)
      empty = True
      for arrays, (d, o) in packing.iter_rows(_encoded(self.tokenizer, texts), self.seq_len, self.tokenizer.bos_id,
                                              self.tokenizer.eos_id, self.tokenizer.pad_id, first_offset=offset):
        empty = False
        if row % _INDEX_EVERY == 0 and row not in self._index:
          self._record(row, (epoch, doc + d, o))
        yield arrays
        row += 1
      if empty and doc == offset == 0:
        raise ConfigError('data.tfds_name', self._corpus.builder.name,
                          f'process {self._process_index} of {self._process_count} got no text from {self._split!r}')
      epoch, doc, offset = epoch + 1, 0, 0

  def _record(self, row: int, position: tuple[int, int, int]) -> None:
    """Remember where `row` starts; every _INDEX_SAVE_EVERY new rows, save the table (atomically) for later runs."""
    self._index[row] = position
    self._unsaved += 1
    if self._unsaved >= _INDEX_SAVE_EVERY:
      buffer = io.BytesIO()
      np.save(buffer, np.array([(r, *p) for r, p in sorted(self._index.items())], np.int64))
      self._index_path.parent.mkdir(parents=True, exist_ok=True)
      cache.write_bytes(self._index_path, buffer.getvalue())
      self._unsaved = 0

  def batch(self, step: int, global_batch_size: int) -> dict[str, np.ndarray]:
    if step < 0:
      raise ValueError(f'step {step} < 0')
    local = _rows_per_process(global_batch_size, self._process_count)
    first = step * local
    known = max((r for r in self._index if r <= first), default=0)
    if self._stream is None or first < self._next_row or known > self._next_row:
      self._stream, self._next_row = self._rows_from(known, *self._index.get(known, (0, 0, 0))), known
    for _ in range(first - self._next_row):
      next(self._stream)
    rows = [next(self._stream) for _ in range(local)]
    self._next_row = first + local
    return {name: np.stack(parts) for name, parts in zip(_FIELDS, zip(*rows))}


def _encoded(tokenizer: tokenizers.Tokenizer, texts: Iterable[str], chunk: int = 256) -> Iterator[np.ndarray]:
  """Token ids of `texts` in order, encoded `chunk` documents at a time (sentencepiece spreads them over threads)."""
  texts = iter(texts)
  while batch := [text for _, text in zip(range(chunk), texts)]:
    yield from tokenizer.encode_batch(batch)
