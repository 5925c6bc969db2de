"""Trainer pieces on synthetic batches: objective weights, loss masking, a learning step, checkpoint round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs.errors import ConfigError
from sharding.mesh import build_mesh
from tests.conftest import typed
from train import checkpoint as checkpoint_lib
from train import loss as loss_lib
from train import objectives
from train import optimizer as optimizer_lib
from train import runtime as runtime_lib
from train import state as state_lib
from train import step as step_lib
from train.objectives import ObjectiveSpec

V, S, B = 64, 16, 4
SPEC = ObjectiveSpec(vocab_size=V, pad_id=0, mask_id=3, num_special=8)


def small_config(**mesh):
  c = default.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.num_kv_heads, c.model.d_ff = 2, 32, 4, 2, 64
  c.data.vocab_size, c.data.seq_len = V, S
  c.train.batch_size, c.train.steps, c.train.warmup_steps, c.train.learning_rate = B, 40, 0, 1e-2
  c.mesh.data = 1
  for k, v in mesh.items():
    c.mesh[k] = v
  return c


def packed_batch(seed=0):
  """Two documents of 6 and 7 tokens, then 3 pads, in every row."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(8, V, (B, S)).astype(np.int32)
  seg = np.array([1] * 6 + [2] * 7 + [0] * 3, np.int32)[None].repeat(B, 0)
  pos = np.array(list(range(6)) + list(range(7)) + [0] * 3, np.int32)[None].repeat(B, 0)
  tokens[seg == 0] = 0
  return {'tokens': tokens, 'segment_ids': seg, 'positions': pos}


def test_causal_targets_and_weights():
  batch = {k: jnp.asarray(v) for k, v in packed_batch().items()}
  mb = objectives.get('causal')(batch, jax.random.PRNGKey(0), SPEC)
  np.testing.assert_array_equal(mb.targets[:, :-1], batch['tokens'][:, 1:])
  expected = np.array([1] * 5 + [0] + [1] * 6 + [0] + [0] * 3, np.float32)  # no target across docs or from pads
  np.testing.assert_array_equal(mb.weights, np.broadcast_to(expected, (B, S)))
  assert not mb.mask.bidirectional.any()


def test_unknown_objective_is_a_config_error():
  with pytest.raises(ConfigError, match='objective'):
    objectives.get('diffusion')


def test_pads_are_excluded_from_the_loss():
  h = jax.random.normal(jax.random.PRNGKey(0), (B, S, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (8, V))
  batch = packed_batch()
  mb = objectives.get('causal')({k: jnp.asarray(v) for k, v in batch.items()}, jax.random.PRNGKey(0), SPEC)
  token_bytes = jnp.ones(V, jnp.int32)
  base = loss_lib.loss_sums(h, w, mb.targets, mb.weights, token_bytes)
  # Change everything at unscored positions: hidden states and targets of pads and document ends.
  unscored = (mb.weights == 0)[..., None]
  h2 = jnp.where(unscored, 100.0, h)
  t2 = jnp.where(mb.weights == 0, 5, mb.targets)
  other = loss_lib.loss_sums(h2, w, t2, mb.weights, token_bytes)
  assert float(base['weight']) == 11 * B
  for k in base:
    np.testing.assert_allclose(other[k], base[k], rtol=1e-6)
  blockwise = loss_lib.loss_sums(h, w, mb.targets, mb.weights, token_bytes, block=4)
  for k in base:
    np.testing.assert_allclose(blockwise[k], base[k], rtol=1e-5)


def _setup(config, devices=None):
  config = typed(config)
  mesh = build_mesh(config.mesh, devices)
  return mesh, state_lib.build(config, mesh)


def test_train_step_lowers_the_loss_on_a_fixed_batch():
  config = small_config()
  mesh, setup = _setup(config, jax.devices()[:1])
  step = step_lib.make_train_step(setup, mesh, 'causal', SPEC, np.ones(V, np.int32),
                                  optimizer_lib.learning_rate_schedule(typed(config).train))
  state = setup.init()
  batch = packed_batch()
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['train/loss']))
  assert int(state['step']) == 30
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize('objective, mesh', [('causal', dict(data=2, fsdp=2)), ('masked_lm', dict(data=2, fsdp=2)),
                                             ('causal', dict(data=2, sequence=2))])
def test_gradient_accumulation_makes_the_big_batch_step(objective, mesh):
  """2 microbatches of 4 rows on 4 devices: the same loss, gradient norm and update as one batch of 8 (masked LM:
  the noise is drawn for the whole batch before it is split; the sequence mesh runs ring attention). Adam's eps is
  large here so its first update is linear in the gradient (about lr * g * (1 - b1) / eps) instead of
  lr * sign(g), which would turn the rounding of near-zero gradients into whole-step differences."""
  config = small_config(**mesh)
  config.train.batch_size, config.train.eps = 2 * B, 1.0
  config.model.attention = 'ring' if 'sequence' in mesh else config.model.attention
  mesh, setup = _setup(config, jax.devices()[:4])
  batch = {k: np.concatenate([a, b]) for (k, a), b in zip(packed_batch(seed=2).items(),
                                                         packed_batch(seed=3).values())}
  start = jax.device_get(setup.init()['params'])
  results = {}
  for accum in (1, 2):
    with jax.set_mesh(mesh):  # as the training loop runs its steps
      step = step_lib.make_train_step(setup, mesh, objective, SPEC, np.ones(V, np.int32),
                                      optimizer_lib.learning_rate_schedule(typed(config).train), grad_accum_steps=accum)
      state, metrics = step(setup.init(), batch)
    results[accum] = jax.device_get((metrics, jax.tree.map(jnp.subtract, state['params'], start)))
  (metrics_1, update_1), (metrics_2, update_2) = results[1], results[2]
  for key in ('train/loss', 'train/accuracy', 'train/tokens_scored', 'train/grad_norm'):
    np.testing.assert_allclose(metrics_2[key], metrics_1[key], rtol=1e-5, err_msg=key)
  assert np.abs(update_1['embed_VD']).max() > 1e-6  # the step did move the params
  # atol: a few float32 ulps of the params (~4e-9 at 0.03), against updates of ~1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-8), update_2, update_1)


def _eval_loss(config, setup, mesh, params) -> float:
  eval_step = step_lib.make_eval_step(setup, mesh, 'causal', SPEC, np.ones(V, np.int32))
  batch = {k: np.concatenate([v, v]) for k, v in packed_batch(seed=1).items()}  # 8 rows: divisible by any mesh
  sums = jax.device_get(eval_step(params, batch, jax.random.PRNGKey(0)))
  return float(sums['loss'] / sums['weight'])


def test_checkpoint_saved_on_data8_restores_onto_other_meshes(tmp_path):
  """Saved on data=8 after a few steps; restored bitwise on three other meshes, with the same eval loss."""
  config = small_config(data=8)
  config.train.batch_size = 8
  mesh, setup = _setup(config, jax.devices())
  step = step_lib.make_train_step(setup, mesh, 'causal', SPEC, np.ones(V, np.int32),
                                  optimizer_lib.learning_rate_schedule(typed(config).train))
  state = setup.init()
  batch = {k: np.concatenate([v, v]) for k, v in packed_batch().items()}
  for _ in range(3):
    state, _ = step(state, batch)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(config))
  ckpt.save(3, state, force=True)
  ckpt.close()
  expected = _eval_loss(config, setup, mesh, state['params'])

  for mesh_axes, devices in ((dict(fsdp=4, tensor=2), jax.devices()), (dict(data=2, fsdp=2, tensor=2), jax.devices()),
                             ({}, jax.devices()[:1])):
    other = small_config(**mesh_axes)
    other_mesh, other_setup = _setup(other, devices)
    moved = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(other)).restore(other_setup)
    assert int(moved['step']) == 3
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(state), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wq = moved['params']['blocks'][0]['attn']['wq_DHE']
    assert wq.sharding == other_setup.shardings['params']['blocks'][0]['attn']['wq_DHE']
    assert _eval_loss(other, other_setup, other_mesh, moved['params']) == pytest.approx(expected, rel=1e-5)


def test_init_from_takes_params_only(tmp_path):
  config = small_config()
  _, setup = _setup(config, jax.devices()[:1])
  source = setup.init()
  source['step'] = source['step'] + 5
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'source'), typed(config))
  ckpt.save(5, source, force=True)
  ckpt.close()
  params = checkpoint_lib.load_params(str(tmp_path / 'source'), setup)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(source['params']), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ConfigError, match='checkpoint.init_from'):
    checkpoint_lib.load_params(str(tmp_path / 'nothing'), setup)


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
  config = small_config()
  _, setup = _setup(config, jax.devices()[:1])
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(config))
  ckpt.save(1, setup.init(), force=True)
  ckpt.close()
  bigger = small_config()
  bigger.model.d_model = 64
  with pytest.raises(ConfigError, match='model.d_model'):
    checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(bigger)).restore(_setup(bigger, jax.devices()[:1])[1])


def test_streamed_layout_change_on_resume_is_a_clear_error(tmp_path):
  """Streamed rows depend on data.stream_shards and data.shuffle_buffer (not on the process count): a resume with
  another value would read other rows, so it is refused by name; local corpora ignore both keys."""
  config = small_config()
  config.data.tfds_name, config.data.text_dir = 'ringlm_stdlib', ''
  _, setup = _setup(small_config(), jax.devices()[:1])
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(config))
  ckpt.save(1, setup.init(), force=True)
  ckpt.close()
  assert int(checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(config)).restore(setup)['step']) == 0
  for key, value in (('stream_shards', 2), ('shuffle_buffer', 0)):
    changed = config.copy_and_resolve_references()
    changed.data[key] = value
    with pytest.raises(ConfigError, match=f'data.{key}') as err:
      checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), typed(changed)).restore(setup)
    assert '\n' not in str(err.value)


def test_weight_decay_skips_norms_and_embedding_whether_or_not_layers_are_scanned():
  from configs.sections import ModelConfig
  from train import params as params_lib

  for scan in (False, True):
    cfg = ModelConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64,
                      scan_layers=scan)
    mask = optimizer_lib.decay_mask(params_lib.logical_axes(cfg), decay_embeddings_and_norms=False)
    block = mask['blocks'] if scan else mask['blocks'][0]
    assert not block['attn_norm']['scale'] and not mask['embed_VD'] and not mask['final_norm']['scale']
    assert block['attn']['wq_DHE'] and block['mlp']['w_up_DF']


def test_processes_that_built_other_data_stop_with_a_config_error():
  """The runtime gathers each process's tokenizer-and-corpus digest (the 2-process test passes through it); here
  the comparison itself, on digests as process_allgather returns them."""
  cache_dir = small_config().data.cache_dir
  runtime_lib.raise_unless_equal(cache_dir, np.array([7, 7]))
  with pytest.raises(ConfigError, match=r'processes \[1, 3\] built other tokenizers') as err:
    runtime_lib.raise_unless_equal(cache_dir, np.array([7, 8, 7, 9]))
  assert err.value.key == 'data.cache_dir'


def test_loss_by_position_on_a_batch_whose_losses_are_known():
  """Logits are c_s on the target and 0 elsewhere, so the NLL of a token is log(e^c_s + V - 1) - c_s, set per
  query position; each bucket's mean loss (context of 1, 2-3, 4-7 tokens) is the mean of those, whole or chunked."""
  batch = {k: jnp.asarray(v) for k, v in packed_batch().items()}
  mb = objectives.get('causal')(batch, jax.random.PRNGKey(0), SPEC)
  c_BS = jnp.broadcast_to(jnp.linspace(-2.0, 6.0, S), (B, S))
  h_BSV = c_BS[..., None] * jax.nn.one_hot(mb.targets, V)
  nll_BS = np.log(np.exp(np.asarray(c_BS)) + V - 1) - np.asarray(c_BS)
  pos_BS, w_BS = np.asarray(mb.mask.positions), np.asarray(mb.weights)
  for block in (None, 4):
    sums = loss_lib.loss_sums(h_BSV, jnp.eye(V), mb.targets, mb.weights, jnp.ones(V, jnp.int32), block=block,
                              positions_BS=mb.mask.positions)
    got = step_lib.summarize(jax.device_get(sums), 'eval')
    for first in (1, 2, 4):  # positions 0, 1-2, 3-6 (documents of 6 and 7 tokens; the last of each is not scored)
      in_bucket = (pos_BS + 1 >= first) & (pos_BS + 1 < 2 * first) & (w_BS > 0)
      want = (nll_BS * in_bucket).sum() / in_bucket.sum()
      assert got[f'eval/loss_by_position/{first}'] == pytest.approx(want, rel=1e-5), (block, first)
    assert 'eval/loss_by_position/8' not in got  # no scored token has 8 tokens of context
    assert got['eval/loss'] == pytest.approx((nll_BS * w_BS).sum() / w_BS.sum(), rel=1e-5)
