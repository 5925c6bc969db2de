"""data/: builders, tokenizers, packing and the step-indexed pipeline, on real stdlib text (small subsets for speed)."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from configs.errors import ConfigError
from data import builders, packing, pipeline, sources, split, tokenizers
from data.quiet_tf import quietly, tfds
from tests.conftest import ROOT, typed

NON_ASCII = '\n# ünïcödé ✓ 日本語 𝔘 — tabs\tand   spaces\n'


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('ringlm_cache')


@pytest.fixture(scope='session')
def text_dir(tmp_path_factory) -> pathlib.Path:
  """About 60 small stdlib sources (with their subfolders) copied out: a real folder of text."""
  root, out = builders.stdlib_root(), tmp_path_factory.mktemp('corpus')
  picked = [f for f in builders.stdlib_files() if 2_000 < f.stat().st_size < 30_000][::6][:60]
  for file in picked:
    target = out / file.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(file, target)
  return out


def make_config(cache_dir: pathlib.Path, text_dir: pathlib.Path | str = '', **data):
  config = default.get_config()
  d = config.data
  d.cache_dir, d.text_dir, d.text_glob = str(cache_dir), str(text_dir), '**/*.py'
  d.validation_percent, d.vocab_size, d.seq_len, d.spm_max_chars = 20, 512, 128, 400_000
  d.update(data)
  return config


def make_dataset(config, split: str, *args, **kwargs):
  """pipeline.make_dataset with the typed data section and seed of an ml_collections config."""
  return pipeline.make_dataset(typed(config).data, config.seed, split, *args, **kwargs)


def split_paths(builder, split: str) -> list[str]:
  return sorted(e['path'].decode() for e in tfds.as_numpy(builder.as_dataset(split=split)))


def build(builder):
  with quietly():
    builder.download_and_prepare()
  return builder


# Tokenizers.


def test_byte_tokenizer_round_trips_real_text_and_counts_bytes():
  text = (builders.stdlib_root() / 'textwrap.py').read_text() + NON_ASCII
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= tokenizers.NUM_SPECIAL and ids.max() < tok.vocab_size == 264
  assert tok.decode(ids) == text
  assert tok.token_bytes[ids].sum() == len(text.encode('utf-8'))
  assert tok.decode([tok.bos_id, *ids[:5], tok.eos_id, tok.pad_id]) == text[:5]


@pytest.fixture(scope='session')
def spm_tokenizer(cache_dir, text_dir) -> tokenizers.Tokenizer:
  d = typed(make_config(cache_dir, text_dir)).data
  corpus = sources.open_corpus(d)
  return tokenizers.make_tokenizer(d, corpus.identity, sources.local_documents(corpus, 'train'))


def test_sentencepiece_round_trips_unseen_text_and_counts_bytes(spm_tokenizer, cache_dir, text_dir):
  corpus = sources.open_corpus(typed(make_config(cache_dir, text_dir)).data)
  unseen = sources.local_documents(corpus, 'validation')
  assert unseen
  tok = spm_tokenizer
  assert tok.vocab_size == 512 and (tok.token_bytes[:tokenizers.NUM_SPECIAL] == 0).all()
  for text in unseen + [NON_ASCII]:
    ids = tok.encode(text)
    assert ids.min() >= tokenizers.NUM_SPECIAL
    assert tok.decode(ids) == text
    assert tok.token_bytes[ids].sum() == len(text.encode('utf-8'))
  assert len(tok.encode(unseen[0])) < 0.7 * len(unseen[0].encode())  # it learned merges, not just bytes


def test_sentencepiece_is_cached_per_corpus_and_vocab(spm_tokenizer, cache_dir, text_dir):
  def never_read():
    raise AssertionError('a cached tokenizer must not read its training text')
    yield  # pragma: no cover

  d = typed(make_config(cache_dir, text_dir)).data
  corpus = sources.open_corpus(d)
  again = tokenizers.make_tokenizer(d, corpus.identity, never_read())
  assert again.identity == spm_tokenizer.identity
  other = typed(make_config(cache_dir, text_dir, vocab_size=600)).data
  assert tokenizers.make_tokenizer(other, corpus.identity, sources.local_documents(corpus, 'train')).vocab_size == 600


def test_extra_ids_sit_at_the_top_and_never_stand_for_text(spm_tokenizer, cache_dir, text_dir):
  """data.extra_ids (span-corruption sentinels): sentencepiece keeps its vocab_size - extra_ids pieces (the cached
  512-piece model, not retrained) and the byte tokenizer its 264 ids; the ids above them encode no text."""
  def never_read():
    raise AssertionError('the 512-piece model is cached: it must not be retrained')
    yield  # pragma: no cover

  d = typed(make_config(cache_dir, text_dir, vocab_size=612, extra_ids=100)).data
  corpus = sources.open_corpus(d)
  text = sources.local_documents(corpus, 'validation')[0] + NON_ASCII
  for tok, pieces in ((tokenizers.make_tokenizer(d, corpus.identity, never_read()), 512),
                      (tokenizers.ByteTokenizer(100), 264)):
    assert tok.vocab_size == pieces + 100 and tok.identity != spm_tokenizer.identity
    ids = tok.encode(text)
    assert ids.max() < pieces and (tok.token_bytes[pieces:] == 0).all() and len(tok.token_bytes) == tok.vocab_size
    assert tok.decode([*ids[:3], tok.vocab_size - 1, *ids[3:]]) == text
  np.testing.assert_array_equal(tokenizers.make_tokenizer(d, corpus.identity, never_read()).encode(text),
                                spm_tokenizer.encode(text))
  with pytest.raises(ConfigError, match='extra_ids=100'):
    tokenizers.check_vocab(typed(make_config(cache_dir, text_dir, tokenizer='byte', vocab_size=264,
                                             extra_ids=100)).data)


def test_unigram_round_trips(cache_dir, text_dir):
  d = typed(make_config(cache_dir, text_dir, spm_model_type='unigram')).data
  corpus = sources.open_corpus(d)
  tok = tokenizers.make_tokenizer(d, corpus.identity, sources.local_documents(corpus, 'train'))
  text = sources.local_documents(corpus, 'validation')[0] + NON_ASCII
  assert tok.decode(tok.encode(text)) == text
  assert tok.token_bytes[tok.encode(text)].sum() == len(text.encode('utf-8'))


# Packing.


def unpack(rows: packing.Rows) -> list[np.ndarray]:
  """The segments of every row, in order, after checking each row's segment ids and positions are well formed."""
  pieces = []
  for tokens_S, segments_S, positions_S in zip(*rows):
    assert (tokens_S[segments_S == 0] == 0).all() and (positions_S[segments_S == 0] == 0).all()
    used = segments_S > 0
    assert used[:used.sum()].all()  # padding only at the end
    ids = segments_S[used]
    assert ids[0] == 1 and (np.diff(ids) >= 0).all() and (np.diff(ids) <= 1).all()
    for s in np.unique(ids):
      in_segment = segments_S == s
      np.testing.assert_array_equal(positions_S[in_segment], np.arange(in_segment.sum()))
      pieces.append(tokens_S[in_segment])
  return pieces


def test_packing_keeps_documents_whole_apart_and_in_order():
  rng = np.random.default_rng(0)
  S, bos, eos = 16, 1, 2
  lengths = [0, 3, 14, 14, 15, 40, 1, 7, 16, 5, 33]
  docs = [rng.integers(8, 100, n).astype(np.int32) for n in lengths]
  rows = packing.pack(docs, S, bos, eos, 0)
  assert rows.tokens_RS.shape[1] == S and all(a.dtype == np.int32 for a in rows)
  pieces = unpack(rows)
  np.testing.assert_array_equal(np.concatenate(pieces), np.concatenate([[bos, *d, eos] for d in docs]))
  # A document that fits in a row (len + 2 <= S) is one segment; longer ones are cut into row-sized pieces.
  wanted = [[bos, *d, eos] for d in docs]
  whole = {tuple(w) for w in wanted if len(w) <= S}
  assert whole <= {tuple(p) for p in pieces}
  assert len(rows.tokens_RS) == 12  # next fit, worked by hand: long documents fill the gaps short ones leave


def test_packing_resumes_from_any_row_start():
  """Each row's start (document, offset) is enough to repack from there: the same rows follow, mid-document too."""
  rng = np.random.default_rng(1)
  docs = [rng.integers(8, 100, n).astype(np.int32) for n in [0, 3, 14, 14, 15, 40, 1, 7, 16, 5, 33, 2]]
  stream = list(packing.iter_rows(docs, 16, 1, 2, 0))
  assert any(offset for _, (_, offset) in stream)  # some rows start inside a long document
  for r, (_, (doc, offset)) in enumerate(stream):
    resumed = list(packing.iter_rows(docs[doc:], 16, 1, 2, 0, first_offset=offset))
    assert [(doc + d, o) for _, (d, o) in resumed] == [start for _, start in stream[r:]]
    for (want, _), (got, _) in zip(stream[r:], resumed):
      for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_packing_of_nothing_is_empty():
  rows = packing.pack([], 8, 1, 2, 0)
  assert all(a.shape == (0, 8) for a in rows)


# Builders.


def test_text_dir_builder_splits_are_disjoint_complete_and_deterministic(text_dir, tmp_path):
  files = {f.relative_to(text_dir).as_posix() for f in builders.text_dir_files(text_dir, '**/*.py')}
  first = build(builders.RinglmTextDir.for_folder(text_dir, '**/*.py', 20, str(tmp_path / 'a')))
  second = build(builders.RinglmTextDir.for_folder(text_dir, '**/*.py', 20, str(tmp_path / 'b')))
  train, validation = split_paths(first, 'train'), split_paths(first, 'validation')
  assert train and validation and not set(train) & set(validation)
  assert set(train) | set(validation) == files
  docs = [(p, (text_dir / p).read_text()) for p in files]
  assert validation == sorted(p for p, side in split.assign_splits(docs, 20).items() if side == 'validation')
  assert (split_paths(second, 'train'), split_paths(second, 'validation')) == (train, validation)


def test_text_dir_builder_is_keyed_by_folder(text_dir, tmp_path):
  twin = tmp_path / text_dir.name
  shutil.copytree(text_dir, twin)
  a = builders.RinglmTextDir.for_folder(text_dir, '**/*.py', 20, str(tmp_path / 'data'))
  b = builders.RinglmTextDir.for_folder(twin, '**/*.py', 20, str(tmp_path / 'data'))
  assert a.data_dir != b.data_dir


def test_stdlib_builder_holds_library_sources_only(cache_dir, tmp_path):
  corpus = sources.open_corpus(typed(make_config(cache_dir)).data)
  train, validation = split_paths(corpus.builder, 'train'), split_paths(corpus.builder, 'validation')
  assert len(train) > 500 and len(validation) > 5 and not set(train) & set(validation)
  every = train + validation
  assert all(p.endswith('.py') for p in every) and 'argparse.py' in every and 'json/decoder.py' in every
  assert not [p for p in every if {'test', 'tests', 'idle_test', 'site-packages'} & set(p.split('/'))]
  again = build(builders.RinglmStdlib.for_percent(20, str(tmp_path)))
  assert split_paths(again, 'validation') == validation


# Pipeline.


@pytest.fixture(scope='session')
def config(cache_dir, text_dir, spm_tokenizer):
  del spm_tokenizer  # trained (and cached) first
  return make_config(cache_dir, text_dir)


def test_cached_data_is_read_without_importing_tensorflow(config):
  """TF takes seconds to import and is needed only to build or read tfds records: once the corpus, tokenizer and
  packed rows are cached, opening both splits and reading batches in a new process never imports it."""
  for split_name in ('train', 'validation'):
    make_dataset(config, split_name).batch(0, 2)  # builds and caches
  script = (f'import sys, json\nfrom configs.sections import Config\nfrom data import pipeline\n'
            f'data = Config.from_dict(json.loads(sys.argv[1])).data\n'
            f'for split in ("train", "validation"):\n  pipeline.make_dataset(data, 0, split).batch(0, 2)\n'
            f'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', script, json.dumps(config.to_dict())], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.stdout.strip() == 'False', out.stderr[-2000:]


def test_batches_are_step_indexed_whatever_was_asked_before(config):
  ds = make_dataset(config, 'train')
  assert ds.num_rows > 40
  first = ds.batch(7, 8)
  assert set(first) == {'tokens', 'segment_ids', 'positions'}
  assert all(v.shape == (8, 128) and v.dtype == np.int32 for v in first.values())
  ds.batch(0, 8), ds.batch(1000, 8)
  again = make_dataset(config, 'train').batch(7, 8)
  for key in first:
    np.testing.assert_array_equal(first[key], ds.batch(7, 8)[key])
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first['tokens'], ds.batch(8, 8)['tokens'])


def test_an_epoch_visits_every_row_once_in_a_seeded_order(config):
  ds = make_dataset(config, 'train')
  n = ds.num_rows
  epoch0, epoch1 = ds.batch(0, n)['tokens'], ds.batch(1, n)['tokens']
  rows = make_dataset(config, 'train', shuffle=False).batch(0, n)['tokens']
  key = lambda a: sorted(map(bytes, a))  # noqa: E731
  assert key(epoch0) == key(rows) == key(epoch1)
  assert not np.array_equal(epoch0, rows) and not np.array_equal(epoch0, epoch1)
  config.seed = 1
  try:
    assert not np.array_equal(make_dataset(config, 'train').batch(0, n)['tokens'], epoch0)
  finally:
    config.seed = 0


@pytest.mark.parametrize('process_count', [2, 4])
def test_process_shards_are_disjoint_and_make_the_global_batch(config, process_count):
  whole = make_dataset(config, 'train').batch(3, 8)
  parts = [make_dataset(config, 'train', p, process_count).batch(3, 8) for p in range(process_count)]
  assert all(len(p['tokens']) == 8 // process_count for p in parts)
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  assert len({bytes(row) for p in parts for row in p['tokens']}) == 8


def test_eval_batches_are_a_fixed_sample_spread_over_the_split(config):
  """Evaluation reads one seeded permutation of the validation rows: the same batches every time and for every
  run's seed, together covering the split once, the first few already spread over it; no wrap past its end."""
  ds = make_dataset(config, 'validation')
  in_order = make_dataset(config, 'validation', shuffle=False).batch(0, ds.num_rows)['tokens']
  row_of = {bytes(row): i for i, row in enumerate(in_order)}
  B = 2
  batches = [ds.batch(i, B)['tokens'] for i in range(ds.num_rows // B)]
  read = [row_of[bytes(row)] for batch in batches for row in batch]
  assert len(set(read)) == len(read) == ds.num_rows // B * B  # each row at most once, all of them read
  first = read[:len(read) // 4]
  assert max(first) > ds.num_rows / 2 and min(first) < ds.num_rows / 2  # not a prefix in path order
  config.seed = 5
  try:
    np.testing.assert_array_equal(make_dataset(config, 'validation').batch(1, B)['tokens'], batches[1])
  finally:
    config.seed = 0
  with pytest.raises(ValueError, match='past the'):
    ds.batch(ds.num_rows // B, B)


def test_packed_split_holds_every_document_token_once_in_order(config, spm_tokenizer):
  ds = make_dataset(config, 'train', shuffle=False)
  rows = packing.Rows(**{f'{k}_RS': v for k, v in ds.batch(0, ds.num_rows).items()})
  corpus = sources.open_corpus(typed(config).data)
  docs = spm_tokenizer.encode_batch(sources.local_documents(corpus, 'train'))
  bos, eos = spm_tokenizer.bos_id, spm_tokenizer.eos_id
  np.testing.assert_array_equal(np.concatenate(unpack(rows)), np.concatenate([[bos, *d, eos] for d in docs]))


def catalogue_config(config, cache_dir, **data):
  """The local corpus of `config`, read back by name as a catalogue dataset (so streamed), with byte tokens."""
  corpus = sources.open_corpus(typed(config).data)
  return make_config(cache_dir, tfds_name=f'{corpus.builder.name}/{corpus.builder.builder_config.name}',
                     tfds_data_dir=str(cache_dir / 'tfds'), tokenizer='byte', vocab_size=264, **data)


def global_batch(cat, step: int, batch_size: int, process_count: int) -> dict[str, np.ndarray]:
  parts = [make_dataset(cat, 'train', p, process_count).batch(step, batch_size) for p in range(process_count)]
  return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


@pytest.mark.parametrize('shards', [1, 2, 4])
def test_streamed_global_batches_are_the_same_on_any_process_count(config, cache_dir, shards):
  """Rows are indexed globally: 1, 2 and 4 processes together read the same global batches, rows and order, at any
  step, whichever of them is asked first; and the shuffle reorders rows only within their windows."""
  cat = catalogue_config(config, cache_dir, seq_len=64, stream_shards=shards, shuffle_buffer=8)
  assert make_dataset(cat, 'train').num_rows is None
  for step in (5, 0, 1):
    one = global_batch(cat, step, 8, 1)
    for process_count in (2, 4):
      for name, rows in global_batch(cat, step, 8, process_count).items():
        np.testing.assert_array_equal(rows, one[name], err_msg=f'{process_count} processes, step {step}, {name}')
  # Steps 0..3 hold rows 0..31 of every shard's stream: 32 / (8 / shards) windows of 8 rows each, shuffled inside.
  stored = catalogue_config(config, cache_dir, seq_len=64, stream_shards=shards, shuffle_buffer=0)
  shuffled_rows = [bytes(r) for step in range(4 * shards) for r in make_dataset(cat, 'train').batch(step, 8)['tokens']]
  stored_rows = [bytes(r) for step in range(4 * shards) for r in make_dataset(stored, 'train').batch(step, 8)['tokens']]
  assert sorted(shuffled_rows) == sorted(stored_rows) and shuffled_rows != stored_rows


def test_streamed_shards_are_disjoint_and_the_shuffle_follows_the_seed(config, cache_dir):
  cat = catalogue_config(config, cache_dir, seq_len=64, stream_shards=2, shuffle_buffer=8)
  batch = make_dataset(cat, 'train').batch(0, 8)['tokens']
  assert not {bytes(r) for r in batch[:4]} & {bytes(r) for r in batch[4:]}  # shard 0's slice, then shard 1's
  reseeded = cat.copy_and_resolve_references()
  reseeded.seed += 1
  other = make_dataset(reseeded, 'train').batch(0, 8)['tokens']
  assert sorted(map(bytes, other)) != sorted(map(bytes, batch))  # another seed, another order (another window pick)
  with pytest.raises(ConfigError, match='data.stream_shards'):
    make_dataset(cat, 'train').batch(0, 5)


def test_streamed_batch_is_reached_from_the_nearest_recorded_row(config, cache_dir, monkeypatch):
  """A new dataset (a resumed run) reaches batch 300 by skipping to the saved start of row 960, inside a document,
  instead of re-reading the stream from its first document; the rows are the ones the first reader got."""
  cat = catalogue_config(config, cache_dir, seq_len=128, shuffle_buffer=0)
  reader = make_dataset(cat, 'train', 0, 1)
  want = reader.batch(300, 4)  # rows 1200..1203; the starts of rows 0, 64, ..., 960 are saved on the way
  assert reader._shards[0]._index[960][2] > 0  # (epoch, document, token offset): row 960 starts inside a document
  skips, stream_documents = [], sources.stream_documents

  def spy(corpus, split, shard, num_shards, skip=0):
    skips.append(skip)
    return stream_documents(corpus, split, shard, num_shards, skip)

  monkeypatch.setattr(sources, 'stream_documents', spy)
  got = make_dataset(cat, 'train', 0, 1).batch(300, 4)
  assert skips and skips[0] > 0, skips
  for name in want:
    np.testing.assert_array_equal(got[name], want[name])
  cat.data.text_key = 'body'
  with pytest.raises(ConfigError, match='data.text_key'):
    make_dataset(cat, 'train')


def test_default_corpus_end_to_end_with_bytes(cache_dir):
  ds = make_dataset(make_config(cache_dir, tokenizer='byte', vocab_size=264, seq_len=256), 'validation')
  assert ds.num_rows > 100
  batch = ds.batch(0, 4)
  assert batch['tokens'].shape == (4, 256)
  assert ds.tokenizer.decode(batch['tokens'][0]).strip()


def test_building_and_reading_print_nothing(text_dir, tmp_path, capfd):
  config = make_config(tmp_path, text_dir, tokenizer='byte', vocab_size=264)
  make_dataset(config, 'train').batch(0, 2)
  assert capfd.readouterr() == ('', '')


# Errors name the key.


@pytest.mark.parametrize('key, overrides', [
    ('data.text_dir', {'text_dir': '/no/such/folder'}),
    ('data.text_dir', {'text_glob': '**/*.nothing'}),
    ('data.tfds_name', {'tfds_name': 'mnist'}),
    ('data.tfds_name', {'text_dir': '', 'tfds_name': 'no_such_dataset_ringlm'}),
    ('data.tokenizer', {'tokenizer': 'wordpiece'}),
    ('data.spm_model_type', {'spm_model_type': 'bytepair'}),
    ('data.vocab_size', {'tokenizer': 'byte', 'vocab_size': 2048}),
    ('data.vocab_size', {'vocab_size': 100}),
    ('data.vocab_size', {'vocab_size': 60_000}),
    ('data.validation_percent', {'validation_percent': 0}),
    ('data.seq_len', {'seq_len': 1}),
])
def test_bad_config_raises_config_error_naming_the_key(cache_dir, text_dir, key, overrides):
  config = make_config(cache_dir, text_dir)
  config.data.update(overrides)
  with pytest.raises(ConfigError) as error:
    make_dataset(config, 'train')
  assert error.value.key == key and str(error.value).startswith(key) and '\n' not in str(error.value)


def test_empty_text_dir_and_bad_split_and_batch_size(cache_dir, config, tmp_path):
  with pytest.raises(ConfigError, match='^data.text_dir'):
    make_dataset(make_config(cache_dir, tmp_path), 'train')
  with pytest.raises(ConfigError, match='^data.eval_split'):
    make_dataset(config, 'test')
  with pytest.raises(ConfigError, match='^train.batch_size'):
    make_dataset(config, 'train', 1, 3).batch(0, 8)
