"""Local corpora of any size and content: folders of 1, 2, 5 and 13,000 files, binary and blank files."""

import pathlib

import pytest

from configs.errors import ConfigError
from data import builders

LINES = [f'line {i} of a note about topic {i % 7}, long enough to count as content for the split.\n' for i in range(40)]


def folder(root: pathlib.Path, count: int) -> list[pathlib.Path]:
  root.mkdir(exist_ok=True)
  for i in range(count):
    (root / f'note_{i:05d}.txt').write_text(f'note {i}\n' + ''.join(LINES[i % 5:][:20]))
  return builders.text_dir_files(root, '**/*.txt')


@pytest.mark.parametrize('count', [1, 2, 5])
def test_too_few_files_to_split_hold_out_each_documents_tail(tmp_path, count, capfd):
  files = folder(tmp_path, count)
  docs = builders.split_documents(tmp_path, files, 10)
  texts = {f.name: f.read_text() for f in files}
  assert [p for p, _ in docs['train']] == sorted(texts) and [p for p, _ in docs['validation']] == [
      f'{p}#tail' for p in sorted(texts)]
  for (path, head), (_, tail) in zip(docs['train'], docs['validation']):
    assert head + tail == texts[path] and head and tail.startswith('line ')  # cut at a line start
    assert 0.04 <= len(tail) / len(texts[path]) < 0.2
  assert 'validation is the last 10% of each document' in capfd.readouterr().err


def test_binary_and_blank_files_are_skipped_with_a_count(tmp_path, capfd):
  files = folder(tmp_path, 3)
  (tmp_path / 'image.txt').write_bytes(bytes(range(256)) * 4)  # not UTF-8
  (tmp_path / 'nul.txt').write_bytes(b'PK\x03\x04\x00\x00 zip-like bytes that decode but hold NULs')
  (tmp_path / 'blank.txt').write_text('  \n\n')
  docs = builders.split_documents(tmp_path, builders.text_dir_files(tmp_path, '*.txt'), 10)
  assert sorted(p for p, _ in docs['train']) == sorted(f.name for f in files)
  assert 'skipped 2 not UTF-8 text, 1 empty of 6 files' in capfd.readouterr().err


def test_a_folder_with_no_text_is_one_config_error(tmp_path):
  (tmp_path / 'a.txt').write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00')
  (tmp_path / 'b.txt').write_text('')
  with pytest.raises(ConfigError, match=r'none of its 2 files .*1 not UTF-8 text, 1 empty') as err:
    builders.split_documents(tmp_path, builders.text_dir_files(tmp_path, '*.txt'), 10)
  assert err.value.key == 'data.text_dir'


def test_thirteen_thousand_files_split_by_documents(tmp_path):
  files = folder(tmp_path, 13_000)
  docs = builders.split_documents(tmp_path, files, 5)
  assert len(docs['train']) + len(docs['validation']) == 13_000
  assert 0.02 < len(docs['validation']) / 13_000 < 0.08 and not any('#tail' in p for p, _ in docs['validation'])
