"""Exported tokenizers load with `AutoTokenizer.from_pretrained` and encode text to ringlm's ids (make test-interop).

Texts are real: standard-library sources the tokenizer was not trained on, plus non-ASCII, control characters and
strings that spell special pieces.
"""

import io
import json
import pathlib
import random
import sysconfig
import types

import numpy as np
import pytest
import sentencepiece as spm
import transformers

from configs.sections import ModelConfig
from data import hf_tokenizer
from data import tokenizers as tokenizers_lib
from models import hf_llama

transformers.utils.logging.set_verbosity_error()

EDGE_CASES = ['héllo wörld — 日本語 😀 \u200b\ufeff', '<s> </s> <pad> <mask> <unk> <reserved_0> <0x41> ▁x',
              ' leading space', '  two\n\n\nlines\t\ttabs  ', '', ' ', '\n', 'a\r\nb\rc', '\x00\x07 nul']


@pytest.fixture(scope='module')
def stdlib_texts() -> tuple[list[str], list[str]]:
  """(train, test): disjoint stdlib sources, a few hundred KB each."""
  files = sorted(pathlib.Path(sysconfig.get_paths()['stdlib']).rglob('*.py'))
  random.Random(0).shuffle(files)
  texts = [f.read_text(errors='replace') for f in files[:400]]
  return texts[:150], texts[150:] + EDGE_CASES


def _sentencepiece(tmp_path: pathlib.Path, train: list[str], model_type: str, vocab_size: int):
  data_config = types.SimpleNamespace(tokenizer='sentencepiece', vocab_size=vocab_size, extra_ids=0,
                                      spm_model_type=model_type, spm_max_chars=2_000_000,
                                      cache_dir=str(tmp_path / 'cache'), spm_model_path='')
  return tokenizers_lib.make_tokenizer(data_config, 'stdlib-test', train)


def _export(directory: pathlib.Path, tokenizer) -> 'transformers.PreTrainedTokenizerBase':
  """The tokenizer files beside a Llama config.json, as --mode=export writes them, loaded the way users load."""
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, d_model=8, num_heads=1, num_kv_heads=1,
                    head_dim=8, d_ff=8)
  hf_llama.save_config(directory, hf_llama.llama_config(cfg, max_position_embeddings=64), {})
  hf_tokenizer.save(directory, tokenizer, model_max_length=64)
  return transformers.AutoTokenizer.from_pretrained(directory)


def _hf_ids(hf, text: str) -> list[int]:
  return hf(text, add_special_tokens=False)['input_ids']


@pytest.mark.parametrize('kind', ['sentencepiece-bpe', 'byte'])
def test_exported_tokenizer_gives_ringlm_ids(kind, stdlib_texts, tmp_path):
  train, texts = stdlib_texts
  tokenizer = (_sentencepiece(tmp_path, train, 'bpe', 2048) if kind != 'byte' else tokenizers_lib.ByteTokenizer())
  hf = _export(tmp_path / 'hf', tokenizer)
  differ = [t for t in texts if _hf_ids(hf, t) != tokenizer.encode(t).tolist()]
  print(f'\n{kind}: {len(texts) - len(differ)}/{len(texts)} texts encode to the same ids '
        f'({sum(len(t) for t in texts)} characters)')
  assert not differ, f'{len(differ)} texts differ, e.g. {differ[0][:200]!r}'
  assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (1, 2, 0, 3)
  assert hf('def f')['input_ids'] == [1] + tokenizer.encode('def f').tolist()  # bos, as training documents began
  for text in texts:
    ids = tokenizer.encode(text).tolist()
    assert hf.decode(ids) == tokenizer.decode(ids)
    assert hf.decode([1] + ids + [2], skip_special_tokens=True) == tokenizer.decode(ids)


def test_unigram_differs_only_between_near_ties(stdlib_texts, tmp_path):
  """Unigram segmentations that tie or nearly tie (a run of 17 spaces as 16+1 or 1+16) are decided by rounding:
  sentencepiece sums its Viterbi scores in float32 over the whole text, `tokenizers` in float64. So ids may differ,
  but only to a segmentation at least as likely (in float64) and within float32 resolution of it, of the same text."""
  train, texts = stdlib_texts
  tokenizer = _sentencepiece(tmp_path, train, 'unigram', 1024)
  hf = _export(tmp_path / 'hf', tokenizer)
  sp = spm.SentencePieceProcessor(model_proto=(tmp_path / 'hf' / hf_tokenizer.SPM_MODEL).read_bytes())
  differ = 0
  for text in texts:
    ours, theirs = tokenizer.encode(text).tolist(), _hf_ids(hf, text)
    if ours != theirs:
      differ += 1
      score = lambda ids: sum(sp.get_score(i) for i in ids)  # noqa: E731
      gap = score(theirs) - score(ours)
      assert 0 <= gap <= 1e-5 * abs(score(ours))
      assert tokenizer.decode(theirs) == text
  print(f'\nunigram: {len(texts) - differ}/{len(texts)} texts encode to the same ids, the rest to near ties')


def test_llama_style_sentencepiece_model(stdlib_texts, tmp_path):
  """A model as Llama's tokenizer.model is made (dummy prefix, NFKC, its own ids, no pad), for data.spm_model_path:
  the dummy prefix is added once, also before text that starts with a space."""
  train, texts = stdlib_texts
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(t[:4000] for t in train), model_writer=model,
                                 vocab_size=1000, model_type='bpe', byte_fallback=True, add_dummy_prefix=True,
                                 normalization_rule_name='nmt_nfkc', remove_extra_whitespaces=False,
                                 max_sentence_length=20_000, minloglevel=2)
  tok = tokenizers_lib.SentencePieceTokenizer(model.getvalue(), 'llama-style', own_ids=True)  # as spm_model_path
  hf_tokenizer.save(tmp_path, tok)
  (tmp_path / hf_llama.CONFIG_FILE).write_text(json.dumps({'model_type': 'llama'}))
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
  sp = tok._sp
  assert (tok.bos_id, tok.eos_id, tok.has_pad, tok.mask_id) == (1, 2, False, None)
  assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, None)
  # NFKC of '\r\n' differs: tokenizers normalises the grapheme '\r\n' as one, sentencepiece each character
  texts = [t for t in texts if '\r' not in t]
  differ = [t for t in texts if _hf_ids(hf, t) != sp.encode(t)]
  assert not differ, f'{len(differ)} texts differ, e.g. {differ[0][:200]!r}'
  for text in texts[:50]:
    assert hf.decode(sp.encode(text)) == sp.decode(sp.encode(text))
  assert np.array_equal(hf(' x')['input_ids'], [1] + sp.encode(' x'))
