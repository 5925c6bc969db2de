"""ringlm's tokenizers as Hugging Face tokenizer files: `AutoTokenizer.from_pretrained(dir)` loads them, no code.

The files are a `tokenizer.json` (the `tokenizers` library's format, which every transformers version with fast
tokenizers reads as is) and a `tokenizer_config.json` naming the generic class (`PreTrainedTokenizerFast`), the
special tokens and these settings:
  add_bos_token=true, add_eos_token=false: documents were trained as bos + text + eos, so a prompt starts with bos;
  split_special_tokens=true: text that spells a special piece ('<s>') encodes as text, as sentencepiece does.
A sentencepiece model also goes along as `tokenizer.model`, for tools that read sentencepiece.

Why not the class `LlamaTokenizer` with only `tokenizer.model`: transformers then converts the model at load time
(needing sentencepiece and protobuf), and its Llama class prepends a dummy-prefix space unless `add_prefix_space`
is false in the config; building the pipeline here from the model's own normaliser settings avoids both.

How a sentencepiece model maps onto `tokenizers`:
  normaliser: the model's precompiled character map if it has one, ' ' -> '\u2581', a '\u2581' prepended to the
  text's first piece when the model adds a dummy prefix; user-defined pieces (ringlm's '\n') are split out first,
  so merges never cross them; control and unknown pieces become special added tokens at their ids.
  bpe: a BPE model whose merges are every split of each piece into two pieces, ranked by the piece's score
  (sentencepiece merges the highest-scoring piece first); unigram: a Unigram model with the pieces' scores;
  char: BPE without merges. Byte fallback carries over. The word model is refused: `tokenizers` has no word-level
  model with byte fallback.
The byte tokenizer is a BPE model with the 256 byte pieces '<0x00>'..'<0xFF>' at ids 8..263 and nothing else, so
byte fallback turns every character into its UTF-8 bytes.
"""

import base64
import json
import os
import pathlib
import re
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from data import tokenizers as tokenizers_lib

TOKENIZER_JSON = 'tokenizer.json'
TOKENIZER_CONFIG = 'tokenizer_config.json'
SPM_MODEL = 'tokenizer.model'

_SPACE = '\u2581'
# sentencepiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_MODEL_TYPES = {1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char'}
_UNREACHABLE = -1e9  # unigram score for pieces sentencepiece never matches in text (control, byte, unused)
_BYTE_SPECIALS = ('<pad>', '<s>', '</s>', '<mask>') + tuple(f'<reserved_{i}>' for i in range(4))


def _added(token_id: int, content: str) -> dict:
  return {'id': token_id, 'content': content, 'single_word': False, 'lstrip': False, 'rstrip': False,
          'normalized': False, 'special': True}


def _bos_template(bos: str, bos_id: int) -> dict:
  """Post-processor adding bos in front (the template transformers' Llama tokenizers use)."""
  return {'type': 'TemplateProcessing',
          'single': [{'SpecialToken': {'id': bos, 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}],
          'pair': [{'SpecialToken': {'id': bos, 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}},
                   {'SpecialToken': {'id': bos, 'type_id': 1}}, {'Sequence': {'id': 'B', 'type_id': 1}}],
          'special_tokens': {bos: {'id': bos, 'ids': [bos_id], 'tokens': [bos]}}}


def _tokenizer_json(model: dict, added: list[dict], normalizer: dict | None, pre_tokenizer: dict | None,
                    decoder: dict, post_processor: dict | None) -> dict:
  return {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': added, 'normalizer': normalizer,
          'pre_tokenizer': pre_tokenizer, 'post_processor': post_processor, 'decoder': decoder, 'model': model}


def _bpe(vocab: dict[str, int], merges: list[list[str]], unk: str | None, byte_fallback: bool) -> dict:
  return {'type': 'BPE', 'dropout': None, 'unk_token': unk, 'continuing_subword_prefix': None,
          'end_of_word_suffix': None, 'fuse_unk': True, 'byte_fallback': byte_fallback, 'ignore_merges': False,
          'vocab': vocab, 'merges': merges}


def _merges(pieces: list[Any]) -> list[list[str]]:
  """Every (left, right) of normal pieces that concatenate to a normal piece, the highest-scoring result first.

  Ties (one piece, several splits) go by the ids of the parts, earlier-learned parts first.
  """
  ids = {p.piece: i for i, p in enumerate(pieces) if p.type == _NORMAL}
  ranked = []
  for piece, i in ids.items():
    for k in range(1, len(piece)):
      left, right = piece[:k], piece[k:]
      if left in ids and right in ids:
        ranked.append((-pieces[i].score, i, ids[left], ids[right], left, right))
  return [[left, right] for *_, left, right in sorted(ranked)]


def sentencepiece_json(model_proto: bytes) -> dict:
  """tokenizer.json for a sentencepiece model (bpe, unigram or char), encoding text to sentencepiece's ids."""
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  kind = _MODEL_TYPES.get(proto.trainer_spec.model_type, '?')
  if kind not in ('bpe', 'unigram', 'char'):
    raise ValueError(f'a sentencepiece {kind} model has no Hugging Face tokenizer form; use bpe, unigram or char')
  norm, spec = proto.normalizer_spec, proto.trainer_spec
  if not norm.escape_whitespaces or spec.treat_whitespace_as_suffix:
    raise ValueError('sentencepiece models without escaped whitespace, or with whitespace as suffix, are not '
                     'supported')
  pieces = list(proto.pieces)
  unk = pieces[spec.unk_id].piece if spec.unk_id >= 0 else None
  added = [_added(i, p.piece) for i, p in enumerate(pieces) if p.type in (_CONTROL, _UNKNOWN)]

  normalizers: list[dict] = []
  if norm.precompiled_charsmap:
    normalizers.append({'type': 'Precompiled',
                        'precompiled_charsmap': base64.b64encode(norm.precompiled_charsmap).decode()})
  if norm.remove_extra_whitespaces:
    normalizers += [{'type': 'Strip', 'strip_left': True, 'strip_right': True},
                    {'type': 'Replace', 'pattern': {'Regex': ' {2,}'}, 'content': ' '}]
  if norm.add_dummy_prefix:  # a normaliser, not Metaspace's prepend_scheme, which skips text already led by a space
    normalizers.append({'type': 'Prepend', 'prepend': _SPACE})
  normalizers.append({'type': 'Replace', 'pattern': {'String': ' '}, 'content': _SPACE})
  user_defined = sorted((p.piece.replace(' ', _SPACE) for p in pieces if p.type == _USER_DEFINED), key=len,
                        reverse=True)
  pre_tokenizer = None
  if user_defined:
    pre_tokenizer = {'type': 'Split', 'pattern': {'Regex': '|'.join(map(re.escape, user_defined))},
                     'behavior': 'Isolated', 'invert': False}

  if kind == 'unigram':
    reachable = (_NORMAL, _USER_DEFINED)
    vocab = [[p.piece, p.score if p.type in reachable else _UNREACHABLE] for p in pieces]
    model = {'type': 'Unigram', 'unk_id': spec.unk_id if spec.unk_id >= 0 else None, 'vocab': vocab,
             'byte_fallback': spec.byte_fallback}
  else:
    merges = _merges(pieces) if kind == 'bpe' else []
    model = _bpe({p.piece: i for i, p in enumerate(pieces)}, merges, unk, spec.byte_fallback)
  decoder = {'type': 'Sequence', 'decoders': [
      {'type': 'Replace', 'pattern': {'String': _SPACE}, 'content': ' '}, {'type': 'ByteFallback'}, {'type': 'Fuse'}]
      + ([{'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}] if norm.add_dummy_prefix else [])}
  post_processor = _bos_template(pieces[spec.bos_id].piece, spec.bos_id) if spec.bos_id >= 0 else None
  return _tokenizer_json(model, added, {'type': 'Sequence', 'normalizers': normalizers}, pre_tokenizer, decoder,
                         post_processor)


def byte_json() -> dict:
  """tokenizer.json for ringlm's byte tokenizer: id = 8 + byte value, ids 0-7 special."""
  offset = tokenizers_lib.NUM_SPECIAL
  vocab = {piece: i for i, piece in enumerate(_BYTE_SPECIALS)}
  vocab.update({f'<0x{b:02X}>': offset + b for b in range(256)})
  decoder = {'type': 'Sequence', 'decoders': [{'type': 'ByteFallback'}, {'type': 'Fuse'}]}
  return _tokenizer_json(_bpe(vocab, [], None, True), [_added(i, p) for i, p in enumerate(_BYTE_SPECIALS)], None,
                         None, decoder, _bos_template('<s>', tokenizers_lib.BOS_ID))


def tokenizer_config(specials: dict[str, str | None], model_max_length: int | None = None) -> dict:
  """tokenizer_config.json: the generic fast class, the special tokens by role, and the settings in the module
  docstring. `specials` maps bos/eos/pad/unk/mask to piece strings (None: the tokenizer has none)."""
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': True, 'add_eos_token': False,
            'split_special_tokens': True, 'clean_up_tokenization_spaces': False, 'legacy': False,
            'add_prefix_space': False}
  config.update({f'{role}_token': piece for role, piece in specials.items() if piece is not None})
  if model_max_length:
    config['model_max_length'] = model_max_length
  return config


def _spm_specials(model_proto: bytes) -> dict[str, str | None]:
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  spec, pieces = proto.trainer_spec, proto.pieces
  piece = lambda i: pieces[i].piece if 0 <= i < len(pieces) else None  # noqa: E731
  mask = next((p.piece for p in pieces if p.piece == '<mask>' and p.type == _CONTROL), None)
  return {'bos': piece(spec.bos_id), 'eos': piece(spec.eos_id), 'pad': piece(spec.pad_id),
          'unk': piece(spec.unk_id), 'mask': mask}


def save_sentencepiece(directory: str | os.PathLike, model_proto: bytes,
                       model_max_length: int | None = None) -> list[str]:
  """tokenizer.model, tokenizer.json and tokenizer_config.json of a sentencepiece model; returns the names."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / SPM_MODEL).write_bytes(model_proto)
  _write_json(directory, sentencepiece_json(model_proto), tokenizer_config(_spm_specials(model_proto),
                                                                           model_max_length))
  return [SPM_MODEL, TOKENIZER_JSON, TOKENIZER_CONFIG]


def save_byte(directory: str | os.PathLike, model_max_length: int | None = None) -> list[str]:
  """tokenizer.json and tokenizer_config.json of the byte tokenizer; returns the names."""
  specials = {'bos': '<s>', 'eos': '</s>', 'pad': '<pad>', 'mask': '<mask>'}
  _write_json(pathlib.Path(directory), byte_json(), tokenizer_config(specials, model_max_length))
  return [TOKENIZER_JSON, TOKENIZER_CONFIG]


def save(directory: str | os.PathLike, tokenizer: tokenizers_lib.Tokenizer,
         model_max_length: int | None = None) -> list[str]:
  """The Hugging Face files of either ringlm tokenizer (see save_sentencepiece and save_byte)."""
  if isinstance(tokenizer, tokenizers_lib.ByteTokenizer):
    return save_byte(directory, model_max_length)
  if isinstance(tokenizer, tokenizers_lib.SentencePieceTokenizer):
    return save_sentencepiece(directory, tokenizer._sp.serialized_model_proto(), model_max_length)
  raise TypeError(f'no Hugging Face form for {type(tokenizer).__name__}')


def _write_json(directory: pathlib.Path, tokenizer_json: dict, config: dict) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  for name, content in ((TOKENIZER_JSON, tokenizer_json), (TOKENIZER_CONFIG, config)):
    (directory / name).write_text(json.dumps(content, ensure_ascii=False, indent=1) + '\n')
