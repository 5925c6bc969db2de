"""Print the config reference (every key of configs/default.py, its default and its comment) as a Markdown table.

The README's "Config reference" section is this output; tests/test_readme.py checks they agree.
  .venv/bin/python scripts/config_reference.py
"""

import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from configs import default  # noqa: E402

DEFAULT_PY = pathlib.Path(default.__file__)
LINE = re.compile(r'^\s*(?:c\.)?(?P<obj>\w+)\.(?P<key>\w+) = .*?#\s*(?P<doc>.*)$')
TOP = re.compile(r'^\s*c\.(?P<key>\w+) = (?!ml_collections).*?#\s*(?P<doc>.*)$')


def rows() -> list[tuple[str, str, str]]:
  config = default.get_config()
  sections = {'c': ''}
  out = []
  for line in DEFAULT_PY.read_text().splitlines():
    alias = re.match(r'^\s*c\.(\w+) = (\w) = ml_collections.ConfigDict\(\)', line)
    if alias:
      sections[alias.group(2)] = alias.group(1)
      continue
    top = TOP.match(line)
    if top:
      out.append((top['key'], repr(config[top['key']]), top['doc']))
      continue
    m = LINE.match(line)
    if m and m['obj'] in sections and sections[m['obj']]:
      section = sections[m['obj']]
      out.append((f'{section}.{m["key"]}', repr(config[section][m['key']]), m['doc']))
  return out


def markdown() -> str:
  lines = ['| key | default | meaning |', '| --- | --- | --- |']
  lines += [f'| `{k}` | `{v}` | {d.replace("|", "/")} |' for k, v, d in rows()]
  return '\n'.join(lines)


if __name__ == '__main__':
  print(markdown())
