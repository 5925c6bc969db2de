"""Hugging Face tokenizer files without transformers: names, special ids, vocabulary and merges.

That transformers loads them and encodes to ringlm's ids is checked in tests/interop/ (make test-interop).
"""

import json
import pathlib
import random
import re
import sysconfig
import types

import pytest

from data import hf_tokenizer
from data import tokenizers as tokenizers_lib


def _texts() -> list[str]:
  files = sorted(pathlib.Path(sysconfig.get_paths()['stdlib']).glob('*.py'))
  random.Random(0).shuffle(files)
  return [f.read_text(errors='replace') for f in files[:30]]


def _sentencepiece(tmp_path: pathlib.Path, model_type: str = 'bpe') -> tokenizers_lib.SentencePieceTokenizer:
  data_config = types.SimpleNamespace(tokenizer='sentencepiece', vocab_size=400, extra_ids=0,
                                      spm_model_type=model_type, spm_max_chars=300_000,
                                      cache_dir=str(tmp_path / 'cache'), spm_model_path='')
  return tokenizers_lib.make_tokenizer(data_config, 'stdlib-test', _texts())


@pytest.fixture(scope='module')
def bpe(tmp_path_factory) -> tokenizers_lib.SentencePieceTokenizer:
  return _sentencepiece(tmp_path_factory.mktemp('spm'))


def _load(directory: pathlib.Path) -> tuple[dict, dict]:
  return (json.loads((directory / hf_tokenizer.TOKENIZER_JSON).read_text()),
          json.loads((directory / hf_tokenizer.TOKENIZER_CONFIG).read_text()))


def test_sentencepiece_files(bpe, tmp_path):
  assert hf_tokenizer.save(tmp_path, bpe) == ['tokenizer.model', 'tokenizer.json', 'tokenizer_config.json']
  assert tokenizers_lib.SentencePieceTokenizer((tmp_path / 'tokenizer.model').read_bytes(), 'x').digest == bpe.digest
  tok, config = _load(tmp_path)
  model = tok['model']
  assert model['type'] == 'BPE' and model['byte_fallback'] and not model['ignore_merges']
  assert model['vocab'] == {bpe._sp.id_to_piece(i): i for i in range(bpe.vocab_size)}
  assert [(t['id'], t['content'], t['special']) for t in tok['added_tokens']] == [
      (0, '<pad>', True), (1, '<s>', True), (2, '</s>', True), (3, '<mask>', True), (4, '<unk>', True),
      (5, '<reserved_0>', True), (6, '<reserved_1>', True), (7, '<reserved_2>', True)]
  # ringlm's models: no dummy prefix, '\n' split out as the user-defined piece it is
  assert [n['type'] for n in tok['normalizer']['normalizers']] == ['Replace']
  assert tok['pre_tokenizer'] == {'type': 'Split', 'pattern': {'Regex': re.escape('\n')}, 'behavior': 'Isolated',
                                  'invert': False}
  assert tok['post_processor']['special_tokens'] == {'<s>': {'id': '<s>', 'ids': [1], 'tokens': ['<s>']}}
  assert {k: config[k] for k in ('tokenizer_class', 'add_bos_token', 'add_eos_token', 'split_special_tokens')} == {
      'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': True, 'add_eos_token': False,
      'split_special_tokens': True}
  assert [config[f'{r}_token'] for r in ('bos', 'eos', 'pad', 'unk', 'mask')] == ['<s>', '</s>', '<pad>', '<unk>',
                                                                                  '<mask>']


def test_merges_rank_pieces_by_score(bpe):
  """Each merge makes a learned piece from two normal pieces, every learned piece has one, and ranks follow the
  result's score (its id, for BPE)."""
  sp = bpe._sp
  merges = hf_tokenizer.sentencepiece_json(sp.serialized_model_proto())['model']['merges']
  ids = [sp.piece_to_id(left + right) for left, right in merges]
  assert ids == sorted(ids)
  normal = [i for i in range(bpe.vocab_size)
            if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.id_to_piece(i) == '\n')]
  assert set(ids) == {i for i in normal if len(sp.id_to_piece(i)) > 1}
  assert {sp.piece_to_id(p) for merge in merges for p in merge} <= set(normal)


def test_byte_files(tmp_path):
  assert hf_tokenizer.save(tmp_path, tokenizers_lib.ByteTokenizer()) == ['tokenizer.json', 'tokenizer_config.json']
  tok, config = _load(tmp_path)
  vocab = tok['model']['vocab']
  assert len(vocab) == tokenizers_lib.ByteTokenizer.vocab_size and tok['model']['merges'] == []
  assert vocab['<0x00>'] == 8 and vocab['<0x41>'] == 8 + 0x41 and vocab['<0xFF>'] == 263
  assert [t['id'] for t in tok['added_tokens']] == list(range(8))
  assert (config['bos_token'], config['eos_token'], config['pad_token']) == ('<s>', '</s>', '<pad>')


def test_word_models_are_refused(tmp_path):
  with pytest.raises(ValueError, match='word model has no Hugging Face tokenizer form'):
    hf_tokenizer.save(tmp_path, _sentencepiece(tmp_path, 'word'))
