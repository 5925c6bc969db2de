"""Packs documents into fixed-length rows without letting them see each other.

Each document becomes bos + tokens + eos (bos gives the first real token something to be predicted from; eos teaches
where documents end). Rows are filled in document order (next fit), which keeps order and is cheap:
  * a document that fits in a row is never split: if it does not fit in what is left of the current row, that
    remainder is padding and the document starts the next row;
  * a longer document is cut anyway, so it first fills what is left of the current row, then whole rows, then a tail.
Every document or piece is its own segment: `segment_ids` count 1, 2, 3, ... within a row (0 = padding) and
`positions` restart at 0 for each segment (pads 0). Attention is masked to same-segment keys, and a loss target is
valid only where the next token has the same nonzero segment id.
"""

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np


class Rows(NamedTuple):
  tokens_RS: np.ndarray  # int32, pad_id at padding
  segment_ids_RS: np.ndarray  # int32, 1.. per segment within a row, 0 = padding
  positions_RS: np.ndarray  # int32, position within the segment, 0 at padding

  def as_dict(self) -> dict[str, np.ndarray]:
    return {'tokens': self.tokens_RS, 'segment_ids': self.segment_ids_RS, 'positions': self.positions_RS}


class _RowBuilder:
  """One row being filled."""

  def __init__(self, seq_len: int, pad_id: int):
    self.seq_len, self.pad_id = seq_len, pad_id
    self.reset()

  def reset(self) -> None:
    self.tokens_S = np.full(self.seq_len, self.pad_id, np.int32)
    self.segment_ids_S = np.zeros(self.seq_len, np.int32)
    self.positions_S = np.zeros(self.seq_len, np.int32)
    self.fill = self.segments = 0

  @property
  def room(self) -> int:
    return self.seq_len - self.fill

  def add(self, piece_T: np.ndarray) -> None:
    end = self.fill + len(piece_T)
    self.segments += 1
    self.tokens_S[self.fill:end] = piece_T
    self.segment_ids_S[self.fill:end] = self.segments
    self.positions_S[self.fill:end] = np.arange(len(piece_T), dtype=np.int32)
    self.fill = end

  def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = self.tokens_S, self.segment_ids_S, self.positions_S
    self.reset()
    return row


def iter_rows(docs: Iterable[np.ndarray], seq_len: int, bos_id: int, eos_id: int, pad_id: int,
              first_offset: int = 0) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[int, int]]]:
  """Yields (row, start) as rows fill: row = (tokens_S, segment_ids_S, positions_S), start = (d, o) when the row's
  first token is token o of document d's bos + tokens + eos (d counts `docs` from 0). `docs` are token ids without
  bos/eos. With `first_offset` the first document starts at that token: given the documents from d on and o, this
  yields the same rows as the whole stream did from that row on (how a stream resumes mid-document).
  """
  row = _RowBuilder(seq_len, pad_id)
  start = (0, first_offset)
  for d, doc_T in enumerate(docs):
    doc_T = np.concatenate([[bos_id], np.asarray(doc_T, np.int32), [eos_id]]).astype(np.int32)
    done = first_offset if d == 0 else 0  # tokens of this document already in earlier rows
    if len(doc_T) - done > row.room and len(doc_T) <= seq_len:
      yield row.take(), start
      start = (d, 0)
    while done < len(doc_T):
      piece_T = doc_T[done:done + row.room]
      row.add(piece_T)
      done += len(piece_T)
      if not row.room:
        yield row.take(), start
        start = (d, done) if done < len(doc_T) else (d + 1, 0)
  if row.fill:
    yield row.take(), start


def pack(docs: Iterable[np.ndarray], seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> Rows:
  """All rows of `docs` at once: [N, S] arrays (N = 0 when there are no documents)."""
  rows = [row for row, _ in iter_rows(docs, seq_len, bos_id, eos_id, pad_id)]
  if not rows:
    return Rows(*(np.zeros((0, seq_len), np.int32) for _ in range(3)))
  return Rows(*(np.stack(parts) for parts in zip(*rows)))
