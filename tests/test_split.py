"""data.split on real stdlib text: near-duplicates share a side, the split ignores input order, shares stay near."""

import random

import pytest

from data import builders, split


@pytest.fixture(scope='module')
def stdlib_docs() -> list[tuple[str, str]]:
  docs = builders.split_documents(builders.stdlib_root(), builders.stdlib_files(), 5)
  return docs['train'] + docs['validation']


def _edited(text: str, k: int) -> str:
  """The text with one of its long lines rewritten: a near-duplicate."""
  lines = text.splitlines()
  i = next(i for i, line in enumerate(lines) if len(line.strip()) >= split.MIN_LINE_CHARS)
  lines[i] = f'# edited copy {k}: ' + lines[i]
  return '\n'.join(lines)


def test_files_that_differ_in_one_line_share_a_side(stdlib_docs):
  """Twenty sources, each beside a copy with one line changed, at 50%: path hashes alone split some pairs."""
  picked = [d for d in stdlib_docs if 2_000 < len(d[1]) < 20_000][::25][:20]
  docs = picked + [(f'copies/{k}/{path}', _edited(text, k)) for k, (path, text) in enumerate(picked)]
  sides = split.assign_splits(docs, 50)
  pairs = [(path, f'copies/{k}/{path}') for k, (path, _) in enumerate(picked)]
  assert all(sides[a] == sides[b] for a, b in pairs)
  assert any(split.is_validation(a, 50) != split.is_validation(b, 50) for a, b in pairs)  # the test can fail
  assert {'train', 'validation'} == set(sides.values())


def test_stdlib_near_duplicates_share_a_side(stdlib_docs):
  """The copies found under the old path-hash split: codec tables, and distutils' two MSVC compilers."""
  sides = split.assign_splits(stdlib_docs, 5)
  for family in (['encodings/cp1250.py', 'encodings/cp1252.py', 'encodings/iso8859_15.py', 'encodings/latin_1.py'],
                 ['distutils/msvccompiler.py', 'distutils/msvc9compiler.py']):
    present = [path for path in family if path in sides]
    assert len(present) >= 2 and len({sides[path] for path in present}) == 1, family


def test_shared_boilerplate_alone_does_not_group():
  """Unrelated files under one licence header stay apart: otherwise a licensed project would become one group."""
  header = '\n'.join(f'# This is line {k} of a licence header that every file of the project carries.' for k in range(4))
  docs = [(f'f{i}.py', header + '\n' + '\n'.join(f'value_{i}_{j} = compute_something_specific({i}, {j}, {i * j})'
                                               for j in range(30))) for i in range(40)]
  assert len(split.near_duplicate_groups(docs)) == 40


def test_split_ignores_input_order(stdlib_docs):
  shuffled = list(stdlib_docs)
  random.Random(0).shuffle(shuffled)
  assert split.assign_splits(shuffled, 20) == split.assign_splits(stdlib_docs, 20)


@pytest.mark.parametrize('percent', [5, 20, 50])
def test_validation_share_is_near_the_percent(stdlib_docs, percent):
  """Groups, not files, are drawn, so the share of files strays further than a binomial over files: allow 3 sd of
  that binomial plus the largest group's share of the files (the charmap codecs, about 7% of the stdlib's)."""
  sides = split.assign_splits(stdlib_docs, percent)
  share = sum(side == 'validation' for side in sides.values()) / len(sides)
  sd = (percent / 100 * (1 - percent / 100) / len(sides)) ** 0.5
  largest = max(map(len, split.near_duplicate_groups(stdlib_docs))) / len(sides)
  assert largest < 0.1
  assert abs(share - percent / 100) < 3 * sd + largest


def test_unique_paths_required():
  with pytest.raises(ValueError, match='unique'):
    split.assign_splits([('a.py', 'x'), ('a.py', 'y')], 5)
