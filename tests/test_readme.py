"""The README stays current: its config reference is the generated one, and it shows every main.py mode."""

import pathlib
import re

import main
from scripts import config_reference

README = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text()


def test_config_reference_is_current():
  assert config_reference.markdown() in README, 'regenerate with: .venv/bin/python scripts/config_reference.py'


def test_every_key_has_a_comment():
  from configs import default

  def keys(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from keys(v, f'{prefix}{k}.')
      else:
        yield prefix + k

  documented = {k for k, _, _ in config_reference.rows()}
  assert set(keys(default.get_config().to_dict())) == documented


def test_every_mode_has_an_example():
  for mode in main.MODES:
    if mode == 'train':
      continue
    assert re.search(rf'main\.py .*--mode={mode}\b', README), f'README lacks an example of --mode={mode}'
