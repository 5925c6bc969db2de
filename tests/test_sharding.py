"""Sharded training on 8 fake CPU devices: every mesh and attention path gives the single-device vanilla losses and
gradient norms at every step (float32, 1e-5 relative), with no warmup and a learning rate that moves the loss, so a
wrong gradient shows in the norm at once and in the losses of later steps; and parameter layouts match the checked-in golden table (regenerate it on purpose with
`python -m tests.test_sharding --regenerate`)."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from tests.conftest import run_main, typed
from sharding import rules
from sharding.mesh import build_mesh
from train import optimizer as optimizer_lib
from train import state as state_lib
from train import step as step_lib
from train.objectives import ObjectiveSpec

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'param_shardings.json')
MESHES = {
    'data8': dict(data=8),
    'fsdp8': dict(data=1, fsdp=8),
    'data2_fsdp2_tensor2': dict(data=2, fsdp=2, tensor=2),
    'data2_sequence4': dict(data=2, sequence=4),
    'fsdp2_tensor2_sequence2': dict(data=1, fsdp=2, tensor=2, sequence=2),
}
S, B, STEPS = 64, 8, 3


def config_for(mesh: dict):
  c = tiny.get_config()
  c.data.seq_len, c.train.batch_size = S, B
  c.train.warmup_steps, c.train.learning_rate = 0, 1e-2  # every step updates (tiny's warmup starts at lr 0)
  c.model.q_block = c.model.kv_block = 16
  c.mesh.data = 1
  for k, v in mesh.items():
    c.mesh[k] = v
  if c.mesh.sequence > 1:
    c.model.attention = 'ring'
  return c


def packed_batches(vocab: int):
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    tokens = rng.integers(8, vocab, (B, S)).astype(np.int32)
    cut = rng.integers(4, S - 4, B)
    idx = np.arange(S)[None]
    seg = np.where(idx < cut[:, None], 1, 2).astype(np.int32)
    pos = np.where(idx < cut[:, None], idx, idx - cut[:, None]).astype(np.int32)
    yield {'tokens': tokens, 'segment_ids': seg, 'positions': pos}


def train_losses(config, devices) -> np.ndarray:
  """[STEPS, 2]: the loss and the gradient norm of each step."""
  config = typed(config)
  mesh = build_mesh(config.mesh, devices)
  setup = state_lib.build(config, mesh)
  spec = ObjectiveSpec(vocab_size=config.data.vocab_size, pad_id=0, mask_id=3, num_special=8)
  with jax.set_mesh(mesh), rules.use(config.mesh.logical_rules):
    step = step_lib.make_train_step(setup, mesh, 'causal', spec, np.ones(config.data.vocab_size, np.int32),
                                    optimizer_lib.learning_rate_schedule(config.train))
    state = setup.init()
    losses = []
    for batch in packed_batches(config.data.vocab_size):
      state, metrics = step(state, batch)
      losses.append((float(metrics['train/loss']), float(metrics['train/grad_norm'])))
  return np.array(losses)


def sharding_table(config) -> dict[str, str]:
  config = typed(config)
  setup = state_lib.build(config, build_mesh(config.mesh))
  flat = jax.tree_util.tree_flatten_with_path(setup.shardings['params'])[0]
  return {jax.tree_util.keystr(path): str(tuple(s.spec)) for path, s in flat}


@pytest.fixture(scope='module')
def reference_losses():
  return train_losses(config_for({}), jax.devices()[:1])


@pytest.mark.parametrize('name', MESHES)
def test_mesh_gives_single_device_losses(name, reference_losses):
  losses = train_losses(config_for(MESHES[name]), jax.devices())
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)


@pytest.mark.parametrize('mesh', ['data=2 fsdp=4', 'data=2 fsdp=2 tensor=2'])
def test_fsdp_step_compiles_without_full_rematerialization(mesh, tmp_path):
  """XLA's SPMD partitioner logs (C++ warning) when it can only reshard an array by replicating it whole: the
  embedding-gradient scatter did so until the table was gathered over fsdp for the lookup like any weight."""
  mesh_flags = [f'--config.mesh.{axis}' for axis in mesh.split()]
  proc = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}', '--mode=estimate',
                  '--config.data.seq_len=64', '--config.train.batch_size=8', *mesh_flags, devices=8,
                  env={'TF_CPP_MIN_LOG_LEVEL': '0'})
  assert 'Involuntary full rematerialization' not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize('model, mesh', [
    (dict(attention='blockwise'), {}),
    (dict(attention='blockwise', ffn='blockwise'), {}),
    (dict(ffn='blockwise', ffn_block=8), dict(data=2, sequence=4)),  # ring; 2 FFN and loss chunks per shard
])
def test_attention_paths_give_vanilla_losses(model, mesh, reference_losses):
  """A few training steps with blockwise attention / BPT / ring with BPT match vanilla (plain ring is covered by
  the sequence meshes)."""
  config = config_for(mesh)
  config.model.ffn_block = 16
  for k, v in model.items():
    config.model[k] = v
  devices = jax.devices() if mesh else jax.devices()[:1]
  np.testing.assert_allclose(train_losses(config, devices), reference_losses, rtol=1e-5)


def test_config_rules_change_the_layout_not_the_numbers(reference_losses):
  """mesh.rules replicating `embed` (no fsdp slicing of params) and sharding vocab over fsdp instead."""
  config = config_for(dict(data=2, fsdp=2, tensor=2))
  config.mesh.rules = config.mesh.rules.replace('embed=fsdp', 'embed=').replace('vocab=tensor', 'vocab=fsdp')
  table = sharding_table(config)
  assert table["['blocks'][0]['attn']['wq_DHE']"] == "(None, 'tensor', None)"
  assert table["['embed_VD']"] == "('fsdp', None)"
  np.testing.assert_allclose(train_losses(config, jax.devices()), reference_losses, rtol=1e-5)


@pytest.mark.parametrize('name', MESHES)
def test_param_shardings_match_golden(name):
  with open(GOLDEN) as f:
    golden = json.load(f)[name]
  assert sharding_table(config_for(MESHES[name])) == golden


if __name__ == '__main__' and '--regenerate' in sys.argv:
  with open(GOLDEN, 'w') as f:
    json.dump({name: sharding_table(config_for(m)) for name, m in MESHES.items()}, f, indent=1, sort_keys=True)
  print(f'wrote {GOLDEN}')
