"""model.attention_kernel: the dispatcher's choice for each path, mask kind and platform; the fused kernels inside
the whole model's train step (Pallas' interpreter on CPU, on a data x tensor mesh) against the pure-JAX kernels;
auto on CPU compiles today's program; pallas where no kernel serves is one ConfigError line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs.errors import ConfigError
from configs.validate import attention_kernel, validate
from models.attention import dispatch
from sharding.mesh import build_mesh
from tests.conftest import typed
from train import optimizer as optimizer_lib
from train import state as state_lib
from train import step as step_lib
from train.objectives import ObjectiveSpec

V, S, B = 64, 128, 2  # S: one of splash's 128-lane blocks; B: one row per data shard
SPEC = ObjectiveSpec(vocab_size=V, pad_id=0, mask_id=3, num_special=8)


def kernel_config(kernel: str, **overrides):
  """A 1-layer GQA model (head dim 16) on 128-token rows, blockwise attention in whole-row blocks."""
  c = default.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.num_kv_heads, c.model.d_ff = 1, 64, 4, 2, 128
  c.model.attention, c.model.attention_kernel, c.model.q_block, c.model.kv_block = 'blockwise', kernel, 128, 128
  c.data.vocab_size, c.data.seq_len = V, S
  c.train.batch_size, c.train.warmup_steps, c.train.learning_rate, c.train.eps = B, 0, 1e-2, 1.0
  c.mesh.data = 1
  for key, value in overrides.items():
    *section, name = key.split('.')
    (c[section[0]] if section else c)[name] = value
  return c


def packed_batch(seed: int = 0, seq_len: int = S) -> dict[str, np.ndarray]:
  """Per row three documents of random lengths, then 5 pads; positions restart per document, pads at 0."""
  rng = np.random.default_rng(seed)
  seg, pos = np.zeros((B, seq_len), np.int32), np.zeros((B, seq_len), np.int32)
  for b in range(B):
    ends = np.concatenate([np.sort(rng.choice(np.arange(8, seq_len - 13), 2, replace=False)), [seq_len - 5]])
    for doc, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
      seg[b, start:end], pos[b, start:end] = doc + 1, np.arange(end - start)
  tokens = np.where(seg > 0, rng.integers(8, V, (B, seq_len)), 0).astype(np.int32)
  return {'tokens': tokens, 'segment_ids': seg, 'positions': pos}


@pytest.mark.parametrize('setting, path, mask_kind, platform, expected', [
    ('auto', 'blockwise', 'none', 'tpu', 'pallas'),
    ('auto', 'blockwise', 'prefix', 'gpu', 'pallas'),
    ('auto', 'blockwise', 'all', 'tpu', 'pallas'),
    ('pallas', 'blockwise', 'prefix', 'tpu', 'pallas'),
    ('auto', 'blockwise', None, 'tpu', 'jax'),  # a mask whose maker promised no pattern
    ('auto', 'blockwise', 'none', 'cpu', 'jax'),
    ('auto', 'vanilla', 'none', 'tpu', 'jax'),
    ('auto', 'ring', 'none', 'tpu', 'pallas'),
    ('auto', 'ring', 'all', 'tpu', 'pallas'),
    ('auto', 'ring', 'prefix', 'tpu', 'jax'),
    ('auto', 'ring', 'none', 'gpu', 'jax'),
    ('jax', 'blockwise', 'none', 'tpu', 'jax'),
])
def test_dispatcher_choices(setting, path, mask_kind, platform, expected):
  choice, why = dispatch.choose(setting, path, mask_kind, platform, 1024, 128, 128)
  assert choice == expected and '\n' not in why


@pytest.mark.parametrize('path, mask_kind, platform, block, fragment', [
    ('blockwise', 'none', 'cpu', 128, "platform 'cpu'"),
    ('blockwise', 'none', 'tpu', 64, 'multiples of 128'),
    ('blockwise', None, 'gpu', 128, 'no static bidirectional pattern'),
    ('vanilla', 'all', 'tpu', 128, 'model.attention=vanilla'),
    ('ring', 'none', 'gpu', 128, 'segment ids from one array'),
    ('ring', 'prefix', 'tpu', 128, 'a prefix needs two kernel calls'),
])
def test_pallas_where_no_kernel_serves_is_one_line(path, mask_kind, platform, block, fragment):
  with pytest.raises(ValueError, match=fragment) as err:
    dispatch.choose('pallas', path, mask_kind, platform, 1024, block, block)
  assert '\n' not in str(err.value)


def test_config_error_names_the_key_before_anything_compiles():
  vocab = {'data.vocab_size': 2048}  # what the default sentencepiece tokenizer can have
  with pytest.raises(ConfigError) as err:
    validate(typed(kernel_config('pallas', **vocab)), 1, platform='cpu')
  assert str(err.value).startswith("model.attention_kernel='pallas': no Pallas attention kernel for platform 'cpu'")
  with pytest.raises(ConfigError, match='multiples of 128'):
    validate(typed(kernel_config('pallas', **vocab, **{'model.q_block': 64})), 1, platform='tpu')
  for objective in ('causal', 'prefix_lm', 'masked_lm'):  # every objective's masks are served on TPU and GPU
    for platform in ('tpu', 'gpu'):
      validate(typed(kernel_config('pallas', objective=objective, **vocab)), 1, platform=platform)
  assert attention_kernel(typed(kernel_config('auto')), 'cpu', 1)[0] == 'jax'


def test_the_platform_is_the_compile_target():
  assert dispatch.target_platform() == 'cpu'
  with dispatch.interpret_as('tpu'):
    assert dispatch.target_platform() == 'tpu'
  with jax.set_mesh(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])):
    assert dispatch.target_platform() == 'cpu'


def _one_step(config, batch, objective: str):
  """(metrics, param update) of one train step on the config's 4-device mesh, from the seed's init."""
  config = typed(config)
  mesh = build_mesh(config.mesh, jax.devices()[:4])
  setup = state_lib.build(config, mesh)
  start = jax.device_get(setup.init()['params'])
  with jax.set_mesh(mesh):
    step = step_lib.make_train_step(setup, mesh, objective, SPEC, np.ones(V, np.int32),
                                    optimizer_lib.learning_rate_schedule(config.train))
    state, metrics = step(setup.init(), batch)
  return jax.device_get((metrics, jax.tree.map(jnp.subtract, state['params'], start)))


RING = {'model.attention': 'ring', 'mesh.data': 1, 'mesh.tensor': 1, 'mesh.sequence': 4, 'data.seq_len': 1024}


@pytest.mark.parametrize('platform, objective, path', [('tpu', 'prefix_lm', {}), ('gpu', 'masked_lm', {}),
                                                       ('tpu', 'causal', RING)])
def test_fused_kernels_train_the_model_as_the_jax_kernels_do(platform, objective, path):
  """Loss, gradient norm and every parameter's update of a train step on a data x tensor mesh (the kernel runs per
  device shard), and of ring attention over 4 devices in the trainer's zig-zag layout (splash hops): the platform's
  Pallas kernel in the interpreter against the same path's pure-JAX kernel."""
  mesh = {'mesh.data': 2, 'mesh.tensor': 2, 'objective': objective, **path}
  batch = packed_batch(seed=1, seq_len=path.get('data.seq_len', S))
  expected_metrics, expected_update = _one_step(kernel_config('jax', **mesh), batch, objective)
  with dispatch.interpret_as(platform):
    metrics, update = _one_step(kernel_config('pallas', **mesh), batch, objective)
  for key in ('train/loss', 'train/accuracy', 'train/grad_norm'):
    np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=1e-5, err_msg=key)
  assert np.abs(expected_update['embed_VD']).max() > 1e-4  # the step moved the params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7), update, expected_update)


def test_auto_on_cpu_compiles_todays_program_and_losses():
  """auto on CPU lowers to exactly the jax kernel's program, so three steps on one batch give identical losses."""
  programs, losses = {}, {}
  for kernel in ('jax', 'auto'):
    config = typed(kernel_config(kernel, objective='prefix_lm'))
    mesh = build_mesh(config.mesh, jax.devices()[:1])
    setup = state_lib.build(config, mesh)
    step = step_lib.make_train_step(setup, mesh, 'prefix_lm', SPEC, np.ones(V, np.int32),
                                    optimizer_lib.learning_rate_schedule(config.train))
    state = setup.init()
    batch = packed_batch()
    programs[kernel] = step.lower(state, batch).as_text()
    losses[kernel] = []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses[kernel].append(float(metrics['train/loss']))
  assert programs['auto'] == programs['jax']
  assert losses['auto'] == losses['jax'] and losses['jax'][2] < losses['jax'][0]
