"""train.profile_start / train.profile_steps: a jax.profiler trace of exactly those steps; bad ranges are one line."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from configs import default
from configs.errors import ConfigError
from tests.conftest import typed
from train.profile import StepProfiler


def test_two_step_profile_writes_a_trace_of_those_steps(tmp_path):
  step_fn = jax.jit(lambda x: jnp.tanh(x @ x))
  x = jnp.eye(64)
  profiler = StepProfiler(str(tmp_path), start=1, steps=2)
  for step in range(4):
    with profiler.step(step):
      x = step_fn(x)
    profiler.done(step, x)
  assert not profiler.tracing
  assert list((tmp_path / 'profile').rglob('*.xplane.pb'))  # TensorBoard's profile plugin reads these
  (trace,) = (tmp_path / 'profile').rglob('*.trace.json.gz')  # Perfetto reads this
  events = json.loads(gzip.decompress(trace.read_bytes()))['traceEvents']
  assert sorted(e['args']['step_num'] for e in events if e.get('name') == 'train') == ['1', '2']


@pytest.mark.parametrize('start, steps', [(5, 2), (0, 7)])
def test_a_range_past_the_last_step_is_one_line(start, steps):
  c = default.get_config()
  c.train.steps, c.train.profile_start, c.train.profile_steps = 6, start, steps
  with pytest.raises(ConfigError) as err:
    typed(c)
  assert str(err.value).startswith(f'train.profile_steps={steps}: traces steps {start}..') and '\n' not in str(err.value)


def test_a_negative_start_is_one_line():
  c = default.get_config()
  c.train.profile_start = -1
  with pytest.raises(ConfigError, match=r'^train.profile_start=-1: use an integer >= 0$'):
    typed(c)
