"""How much of the validation split is verbatim in train: prints one JSON object per corpus.

  .venv/bin/python scripts/split_leakage.py                                   # the embedded stdlib corpus
  .venv/bin/python scripts/split_leakage.py --text_dir=DIR --text_glob='**/*.txt'   # and a folder of text

Leakage is the share of validation characters that sit in long lines found verbatim in train. Precisely: a long
line is a line of a document (str.splitlines) stripped of leading and trailing whitespace and then at least
`--min_chars` (40) characters long; every occurrence of such a line in a validation document whose stripped text is
also a long line of some train document counts its stripped length; the sum is divided by the total characters of
the validation documents. `boilerplate_share` is the part of it from lines found in at least 1% of the corpus's
documents and at least 10 of them (licence headers, generated-file banners): a split by whole documents cannot avoid
those without putting most of the corpus in one group.
`split` is the builders' split (data.builders.split_documents, near-duplicate groups); `path_hash` is the rule the
builders used before version 1.1.0, each path hashed alone, for comparison.
"""

import argparse
import collections
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import builders, split  # noqa: E402


def long_lines(text: str, min_chars: int) -> list[str]:
  return [s for s in (line.strip() for line in text.splitlines()) if len(s) >= min_chars]


def leakage(train: list[tuple[str, str]], validation: list[tuple[str, str]], min_chars: int,
            boilerplate: set[str]) -> dict:
  """Leaked share of validation characters, its boilerplate part, and the validation documents that leak most."""
  seen = {line for _, text in train for line in long_lines(text, min_chars)}
  leaked = {path: [line for line in long_lines(text, min_chars) if line in seen] for path, text in validation}
  per_doc = {path: sum(map(len, lines)) for path, lines in leaked.items()}
  common = sum(len(line) for lines in leaked.values() for line in lines if line in boilerplate)
  chars = max(sum(len(text) for _, text in validation), 1)
  worst = sorted(validation, key=lambda d: (-per_doc[d[0]] / len(d[1]), d[0]))[:5]
  return dict(validation_documents=len(validation), validation_chars=chars,
              leaked_share=round(sum(per_doc.values()) / chars, 5), boilerplate_share=round(common / chars, 5),
              worst=[dict(path=path, leaked_share=round(per_doc[path] / len(text), 3)) for path, text in worst])


def report(name: str, root: pathlib.Path, files: list[pathlib.Path], percent: int, min_chars: int) -> dict:
  start = time.perf_counter()
  docs = builders.split_documents(root, files, percent)
  seconds = time.perf_counter() - start
  every = docs['train'] + docs['validation']
  by_path = {False: [], True: []}
  for path, text in every:
    by_path[split.is_validation(path, percent)].append((path, text))
  total = sum(len(text) for _, text in every)
  documents_with = collections.Counter(line for _, text in every for line in set(long_lines(text, min_chars)))
  boilerplate = {line for line, count in documents_with.items() if count >= max(10, len(every) / 100)}
  result = dict(corpus=name, documents=len(every), chars=total, validation_percent=percent, min_chars=min_chars,
                read_and_split_seconds=round(seconds, 2),
                split=leakage(docs['train'], docs['validation'], min_chars, boilerplate),
                path_hash=leakage(by_path[False], by_path[True], min_chars, boilerplate))
  for rule in ('split', 'path_hash'):
    result[rule]['validation_chars_share'] = round(result[rule]['validation_chars'] / total, 4)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--validation_percent', type=int, default=5)
  parser.add_argument('--min_chars', type=int, default=40)
  parser.add_argument('--text_dir', default='', help='also measure this folder (as data.text_dir)')
  parser.add_argument('--text_glob', default='**/*.txt')
  args = parser.parse_args()
  print(json.dumps(report('stdlib', builders.stdlib_root(), builders.stdlib_files(), args.validation_percent,
                          args.min_chars)), flush=True)
  if args.text_dir:
    text_dir = pathlib.Path(args.text_dir).expanduser().resolve()
    print(json.dumps(report(str(text_dir), text_dir, builders.text_dir_files(text_dir, args.text_glob),
                            args.validation_percent, args.min_chars)), flush=True)


if __name__ == '__main__':
  main()
