"""Tokenizers behind one interface: sentencepiece (trained on the corpus on first use, cached) and raw bytes.

The ones ringlm makes put the same special ids first: 0 pad, 1 bos, 2 eos, 3 mask (masked LM), then spare reserved
ids (UL2's mode tokens [R] [S] [X] are 5, 6, 7). An existing sentencepiece model (`data.spm_model_path`, e.g.
Llama's tokenizer.model) keeps its own ids; each tokenizer carries them (`bos_id`, `eos_id`, `pad_id`, `mask_id`,
`num_special`), and packing, objectives, sampling and export read them from it. Such a model without a pad piece
pads rows with eos (padding is never attended to nor scored: segment id 0) and exports no pad id; without a '<mask>'
control piece it has no mask id, and objectives or probes that need one are refused (train/runtime.py). The top
`data.extra_ids` ids of the vocabulary are never produced (T5's extra ids: span-corruption sentinels, sentinel
i = vocab_size - 1 - i); sentencepiece learns vocab_size - extra_ids pieces. `token_bytes[i]` is how many UTF-8
bytes id i stands for (0 for specials and extra ids), which turns a summed token loss into bits per byte.

Sentencepiece is trained lossless (no normalisation, spaces and newlines kept, byte fallback), so
decode(encode(text)) == text for the bpe, unigram and char models. The word model is not: sentencepiece's byte
fallback for an unseen word emits the bytes of its escaped leading space ('\u2581'), which decodes as that character.
"""

import abc
import hashlib
import io
import os
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from configs.errors import ConfigError
from configs.sections import DataConfig
from data import cache

PAD_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
NUM_SPECIAL = 8  # ids below this stand for no text: pad, bos, eos, mask, then unk (sentencepiece) or spare
RESERVED_IDS = (4, 5, 6, 7)  # free for later objectives in the byte tokenizer; sentencepiece puts unk at 4
UL2_MODE_IDS = {'R': 5, 'S': 6, 'X': 7}  # UL2's mode tokens: reserved ids both tokenizers leave unused
SPM_MIN_VOCAB = NUM_SPECIAL + 1 + 256 + 1  # specials, newline, the 256 byte-fallback pieces, one learned piece
_SPM_FORMAT = 1  # bump when the training options below change, so cached models are retrained
_SPM_CHUNK_CHARS = 2048  # training "sentences" are runs of whole lines about this long


class Tokenizer(abc.ABC):
  """Text <-> int32 ids. Ids below `num_special` never come out of `encode`."""

  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  mask_id: int | None = MASK_ID
  has_pad = True  # False: pad_id is a stand-in (eos) for a model without a pad piece
  num_special = NUM_SPECIAL  # ids below this are special: never drawn as random replacement tokens
  reserved_ids = RESERVED_IDS

  identity: str  # names the vocabulary, for cache keys of data tokenized with it
  digest: str  # hash of the exact vocabulary: equal digests tokenize alike
  vocab_size: int
  token_bytes: np.ndarray  # [V] int32: UTF-8 bytes each id stands for

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """[T] int32 ids of `text`, no bos/eos."""

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; special ids decode to nothing."""


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes shifted past the special ids: V = NUM_SPECIAL + 256 (+ extra ids), lossless on any text."""

  vocab_size = NUM_SPECIAL + 256

  def __init__(self, extra_ids: int = 0):
    self.vocab_size = ByteTokenizer.vocab_size + extra_ids
    self.identity = self.digest = f'byte{self.vocab_size}'
    self.token_bytes = np.concatenate([np.zeros(NUM_SPECIAL, np.int32), np.ones(256, np.int32),
                                       np.zeros(extra_ids, np.int32)])

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + NUM_SPECIAL

  def decode(self, ids: Iterable[int]) -> str:
    ids_T = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64)
    text_T = ids_T[(ids_T >= NUM_SPECIAL) & (ids_T < ByteTokenizer.vocab_size)]
    return bytes((text_T - NUM_SPECIAL).astype(np.uint8)).decode('utf-8', errors='replace')


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model. One ringlm trained has its special pieces at the shared ids (checked on load); an
  existing one (`own_ids`) keeps the ids its trainer spec gives (see the module docstring)."""

  def __init__(self, model_proto: bytes, identity: str, extra_ids: int = 0, own_ids: bool = False):
    self._sp = sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.identity, self.digest = identity, hashlib.sha256(model_proto).hexdigest()
    self.num_pieces = sp.get_piece_size()
    self.vocab_size = self.num_pieces + extra_ids
    if own_ids:
      self._take_ids()
    else:
      specials = {'<pad>': PAD_ID, '<s>': BOS_ID, '</s>': EOS_ID, '<mask>': MASK_ID}
      for piece, want in specials.items():
        if sp.piece_to_id(piece) != want:
          raise ValueError(f'sentencepiece model {identity}: {piece} is id {sp.piece_to_id(piece)}, not {want}')
    self.token_bytes = np.array([self._piece_bytes(i) for i in range(self.num_pieces)] + [0] * extra_ids, np.int32)

  def _take_ids(self) -> None:
    """The special ids of an existing model: bos and eos must exist; pad and mask may not."""
    sp = self._sp
    if sp.bos_id() < 0 or sp.eos_id() < 0:
      raise ValueError('it has no bos or eos piece (bos_id/eos_id -1); ringlm packs documents as bos + text + eos')
    self.bos_id, self.eos_id = sp.bos_id(), sp.eos_id()
    self.has_pad = sp.pad_id() >= 0
    self.pad_id = sp.pad_id() if self.has_pad else sp.eos_id()
    mask = sp.piece_to_id('<mask>')
    self.mask_id = mask if sp.id_to_piece(mask) == '<mask>' and sp.is_control(mask) else None
    special = [sp.is_control(i) or sp.is_unknown(i) for i in range(self.num_pieces)] + [False]
    self.num_special = special.index(False)

  def _piece_bytes(self, i: int) -> int:
    sp = self._sp
    if sp.is_control(i) or sp.is_unknown(i):
      return 0
    if sp.is_byte(i):
      return 1
    return len(sp.id_to_piece(i).replace('\u2581', ' ').encode('utf-8'))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(texts, num_threads=os.cpu_count() or 1)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) < self.num_pieces])


def existing_sentencepiece(data_config: DataConfig) -> SentencePieceTokenizer:
  """The model at `data.spm_model_path` with its own ids; ConfigError if it is not one or has another vocab size."""
  path = data_config.spm_model_path
  proto = pathlib.Path(path).expanduser().read_bytes()
  try:
    tok = SentencePieceTokenizer(proto, f'spm_file_{hashlib.sha256(proto).hexdigest()[:16]}',
                                 extra_ids=data_config.extra_ids, own_ids=True)
  except (RuntimeError, ValueError) as e:  # sentencepiece raises RuntimeError on bytes that are no model
    raise ConfigError('data.spm_model_path', path, f'not a usable sentencepiece model ({str(e).strip()[:200]})') \
        from None
  if tok.vocab_size != data_config.vocab_size:
    raise ConfigError('data.vocab_size', data_config.vocab_size,
                      f'data.spm_model_path={path} has {tok.num_pieces} pieces and data.extra_ids={data_config.extra_ids}; '
                      f'set data.vocab_size={tok.vocab_size}')
  return tok


def check_vocab(data_config: DataConfig) -> None:
  """Raises ConfigError when the configured tokenizer cannot have `data.vocab_size` ids."""
  if data_config.spm_model_path:
    existing_sentencepiece(data_config)
    return
  byte_vocab = ByteTokenizer.vocab_size + data_config.extra_ids
  if data_config.tokenizer == 'byte' and data_config.vocab_size != byte_vocab:
    raise ConfigError('data.vocab_size', data_config.vocab_size,
                      f'the byte tokenizer has exactly {byte_vocab} ids (256 bytes + {NUM_SPECIAL} special + '
                      f'data.extra_ids={data_config.extra_ids}); set data.vocab_size={byte_vocab}')
  least = SPM_MIN_VOCAB + data_config.extra_ids
  if data_config.tokenizer == 'sentencepiece' and data_config.vocab_size < least:
    raise ConfigError('data.vocab_size', data_config.vocab_size,
                      f'sentencepiece with byte fallback needs at least {SPM_MIN_VOCAB} pieces + data.extra_ids='
                      f'{data_config.extra_ids}; raise it to at least {least} (e.g. 2048)')


def make_tokenizer(data_config: DataConfig, corpus_identity: str, train_texts: Iterable[str]) -> Tokenizer:
  """The configured tokenizer; sentencepiece is trained on `train_texts` once per corpus, vocab and type, then cached.

  `train_texts` is only consumed when no cached model exists, so callers may pass a lazy iterator.
  """
  check_vocab(data_config)
  extra = data_config.extra_ids
  if data_config.tokenizer == 'byte':
    return ByteTokenizer(extra)
  if data_config.spm_model_path:
    return existing_sentencepiece(data_config)
  pieces = data_config.vocab_size - extra
  settings = f'{corpus_identity}|v{pieces}|{data_config.spm_model_type}|' \
             f'c{data_config.spm_max_chars}|f{_SPM_FORMAT}'
  model = f'spm_{data_config.spm_model_type}{pieces}_{hashlib.sha256(settings.encode()).hexdigest()[:16]}'
  identity = model + (f'_x{extra}' if extra else '')
  path = cache.root(data_config) / 'tokenizers' / f'{model}.model'
  with cache.lock(path):
    if not path.exists():
      cache.write_bytes(path, _train(data_config, pieces, train_texts))
  return SentencePieceTokenizer(path.read_bytes(), identity, extra)


def _sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  """Runs of whole lines (newlines kept, so sentencepiece learns them) up to about _SPM_CHUNK_CHARS each."""
  budget = max_chars
  for text in texts:
    text = text[:budget]
    budget -= len(text)
    start = 0
    while start < len(text):
      end = len(text)
      if end - start > _SPM_CHUNK_CHARS:
        newline = text.rfind('\n', start, start + _SPM_CHUNK_CHARS)
        end = newline + 1 if newline >= start else start + _SPM_CHUNK_CHARS
      yield text[start:end]
      start = end
    if budget <= 0:
      return


def _train(data_config: DataConfig, pieces: int, train_texts: Iterable[str]) -> bytes:
  """Trains a lossless model: no normalisation, whitespace kept as is, byte fallback for anything unseen."""
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(train_texts, data_config.spm_max_chars), model_writer=model,
        vocab_size=pieces, model_type=data_config.spm_model_type,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=RESERVED_IDS[0],
        control_symbols=['<mask>'] + [f'<reserved_{i}>' for i in range(len(RESERVED_IDS) - 1)],
        user_defined_symbols=['\n'], byte_fallback=True, normalization_rule_name='identity',
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        max_sentence_length=4 * _SPM_CHUNK_CHARS + 16, num_threads=os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:  # sentencepiece says how large the vocabulary may be for this text
    raise ConfigError('data.vocab_size', data_config.vocab_size,
                      f'sentencepiece cannot reach it on this corpus ({str(e).strip().split("] ")[-1]})') from None
  return model.getvalue()

