"""The trainer's one entry point: `make_dataset(data, seed, split, process_index, process_count).batch(step, B)`.

Batches are indexed by step, not drawn from an iterator: the batch for (seed, step) is the same whatever was asked
before, so resuming at step k needs only k (no iterator state in checkpoints).

Local corpora (stdlib, text_dir) are tokenized and packed whole once, cached as .npy under data.cache_dir, and
memory-mapped. Row r of the endless training stream is row perm_e[r % N] of the packed split, where
e = r // N is the epoch and perm_e a permutation seeded by (seed, e). Other splits (evaluation) read one epoch of a
permutation seeded by EVAL_SEED whatever the run's seed: a sample spread over the whole split, the same batches for
every evaluation and every run, and an error rather than a wrap past the split's end. Global batch `step` is stream rows [step*B, (step+1)*B); process p of P
takes its contiguous B/P of them, so the processes' rows are disjoint and together form the one-process batch.

Catalogue datasets (data.tfds_name) may not fit in memory, so they are streamed, with rows indexed globally so a
run resumes exactly on any process count. The split is read as K = data.stream_shards shards (tfds.even_splits),
each packed as read, in stored order, repeated at its end. Shard k's rows are shuffled in windows of
W = data.shuffle_buffer rows: rows [w*W, (w+1)*W) come out in the order of a permutation seeded by (seed, k, w), so
the shuffle's state is a function of the step, like everything else (W = 0: stored order). Global batch `step` is
K equal slices, slice k being rows [step*B/K, (step+1)*B/K) of shard k's shuffled stream; process p of P holds rows
[p*B/P, (p+1)*B/P) of the global batch and reads only the shards they come from (K/P each when P divides K; with
P > K, processes share shards, reading the same rows). Nothing depends on P, so 1 or 8 processes see the same
global batches. Where every 64th row of a shard starts (epoch, document, token offset) is recorded as it is read
and saved to data.cache_dir every 1024 rows: a row behind the reader, or far ahead (a resumed run), is reached by
skipping to the nearest recorded row at or before it (skipped documents are not decoded or tokenized) and packing
< 64 rows from there; only rows this machine has never recorded must be read through.
"""

import hashlib
import io
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator
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
  documents = corpus.builder.info.splits[split].num_examples
  if documents < d.stream_shards:
    raise ConfigError('data.stream_shards', d.stream_shards, f'{split!r} of {corpus.builder.name} has {documents} '
                      f'documents, fewer than the shards it is read as; use at most {documents}')

  def open_shard(shard: int) -> _ShardStream:
    index = (cache.root(d) / 'stream_index' / f'{corpus.identity}_{_split_key(split)}_{tokenizer.identity}_'
             f'S{d.seq_len}_shard{shard}of{d.stream_shards}_f{_PACK_FORMAT}.npy')
    return _ShardStream(tokenizer, corpus, split, d.seq_len, shard, d.stream_shards, index)

  return StreamingDataset(tokenizer, d.seq_len, open_shard, d.stream_shards, d.shuffle_buffer,
                          seed if split == d.train_split else EVAL_SEED, process_index, process_count)


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


class _ShardStream:
  """Shard `shard` of `num_shards` of a catalogue split, packed as read and repeated endlessly; row r is reached from
  the nearest recorded row start at or before it (see the module docstring)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, corpus: sources.Corpus, split: str, seq_len: int,
               shard: int, num_shards: int, index_path: pathlib.Path):
    self._tokenizer, self._seq_len = tokenizer, seq_len
    self._corpus, self._split = corpus, split
    self._shard, self._num_shards = shard, num_shards
    self._stream: Iterator[tuple[np.ndarray, ...]] | None = None
    self._next_row = 0  # the row self._stream yields next
    self._index_path = index_path
    self._index = {int(r): (int(e), int(d), int(o)) for r, e, d, o in
                   (np.load(index_path) if index_path.exists() else np.zeros((0, 4), np.int64))}
    self._unsaved = 0

  def _rows_from(self, row: int, epoch: int, doc: int, offset: int) -> Iterator[tuple[np.ndarray, ...]]:
    """The stream from `row` on, which starts at token `offset` of document `doc` of `epoch`; records where every
    _INDEX_EVERY-th row starts."""
    tok = self._tokenizer
    while True:
      texts = sources.stream_documents(self._corpus, self._split, self._shard, self._num_shards, doc)
      for arrays, (d, o) in packing.iter_rows(_encoded(tok, texts), self._seq_len, tok.bos_id, tok.eos_id,
                                              tok.pad_id, first_offset=offset):
        if row % _INDEX_EVERY == 0 and row not in self._index:
          self._record(row, (epoch, doc + d, o))
        yield arrays
        row += 1
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

  def rows(self, first: int, count: int) -> list[tuple[np.ndarray, ...]]:
    """Rows [first, first + count) of the shard's stream (tokens, segment_ids, positions), each [S]."""
    known = max((r for r in self._index if r <= first), default=0)
    if self._stream is None or first < self._next_row or known > self._next_row:
      self._stream, self._next_row = self._rows_from(known, *self._index.get(known, (0, 0, 0))), known
    for _ in range(first - self._next_row):
      next(self._stream)
    rows = [next(self._stream) for _ in range(count)]
    self._next_row = first + count
    return rows


class StreamingDataset:
  """A catalogue split streamed in shards, globally indexed by step (see the module docstring)."""

  num_rows = None

  def unigram_entropy(self) -> None:
    return None  # would need the whole split

  def __init__(self, tokenizer: tokenizers.Tokenizer, seq_len: int, open_shard: Callable[[int], _ShardStream],
               num_shards: int, shuffle_buffer: int, seed: int, process_index: int, process_count: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len
    self._open_shard, self._num_shards, self._window_rows, self._seed = open_shard, num_shards, shuffle_buffer, seed
    self._process_index, self._process_count = process_index, process_count
    self._shards: dict[int, _ShardStream] = {}  # opened on first use: only the shards this process reads
    self._windows: dict[int, tuple[int, list[tuple[np.ndarray, ...]]]] = {}  # shard -> (window, its shuffled rows)

  def _shard(self, shard: int) -> _ShardStream:
    if shard not in self._shards:
      self._shards[shard] = self._open_shard(shard)
    return self._shards[shard]

  def _shuffled(self, shard: int, row: int) -> tuple[np.ndarray, ...]:
    """Row `row` of the shard's shuffled stream: row perm[row % W] of window row // W, perm seeded by the window."""
    window, within = divmod(row, self._window_rows)
    if self._windows.get(shard, (None,))[0] != window:
      rows = self._shard(shard).rows(window * self._window_rows, self._window_rows)
      order = np.random.default_rng([self._seed, shard, window]).permutation(self._window_rows)
      self._windows[shard] = (window, [rows[i] for i in order])
    return self._windows[shard][1][within]

  def batch(self, step: int, global_batch_size: int) -> dict[str, np.ndarray]:
    if step < 0:
      raise ValueError(f'step {step} < 0')
    local = _rows_per_process(global_batch_size, self._process_count)
    if global_batch_size % self._num_shards:
      raise ConfigError('data.stream_shards', self._num_shards, f'must divide the batch size {global_batch_size}')
    per_shard = global_batch_size // self._num_shards
    shard_b, within_b = np.divmod(self._process_index * local + np.arange(local), per_shard)
    rows = []
    for shard in np.unique(shard_b).tolist():
      first = step * per_shard + int(within_b[shard_b == shard][0])
      count = int((shard_b == shard).sum())
      if self._window_rows:
        rows += [self._shuffled(shard, r) for r in range(first, first + count)]
      else:
        rows += self._shard(shard).rows(first, count)
    return {name: np.stack(parts) for name, parts in zip(_FIELDS, zip(*rows))}


def _encoded(tokenizer: tokenizers.Tokenizer, texts: Iterable[str], chunk: int = 256) -> Iterator[np.ndarray]:
  """Token ids of `texts` in order, encoded `chunk` documents at a time (sentencepiece spreads them over threads)."""
  texts = iter(texts)
  while batch := [text for _, text in zip(range(chunk), texts)]:
    yield from tokenizer.encode_batch(batch)
