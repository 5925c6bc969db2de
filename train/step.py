"""The jitted train and eval steps: objective -> model -> loss, with explicit shardings in and out."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from models.ring_attention import zigzag_permutation
from sharding import rules
from train import loss as loss_lib
from train import objectives
from train import params as params_lib
from train.objectives import ModelBatch, ObjectiveSpec
from train.state import StateSetup

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _loss_sums(setup: StateSetup, params, mb: ModelBatch, token_bytes_V: jax.Array) -> dict[str, jax.Array]:
  cfg = setup.model_cfg
  model = params_lib.apply(cfg, params)
  h_BSD = model.hidden(mb.inputs, mb.mask)
  block = cfg.ffn_block if cfg.ffn == 'blockwise' else None
  return loss_lib.loss_sums(h_BSD, model.head_weights_DV(), mb.targets, mb.weights, token_bytes_V, block)


def ring_layout(mb: ModelBatch, mesh: Mesh) -> ModelBatch:
  """Zig-zag the sequence for ring attention so each device holds one early and one late chunk (causal balance).

  Applied after the objective (targets are already aligned), to every [B, S] array alike; attention masks by
  positions and the loss is a sum over tokens, so the numbers do not depend on the order.
  """
  n = mesh.shape['sequence']
  order = jnp.asarray(zigzag_permutation(mb.inputs.shape[1], n))
  return jax.tree.map(lambda x: jnp.take(x, order, axis=1), mb)


def _objective(name: str, mesh: Mesh, attention: str) -> Callable:
  make_batch = objectives.get(name)
  if attention != 'ring':
    return make_batch
  return lambda batch, rng, spec: ring_layout(make_batch(batch, rng, spec), mesh)


def make_train_step(setup: StateSetup, mesh: Mesh, objective: str, spec: ObjectiveSpec,
                    token_bytes: np.ndarray, schedule: optax.Schedule) -> Callable:
  """state, batch -> state, metrics. The objective's randomness is keyed by (seed, step), so resume is exact."""
  make_batch = _objective(objective, mesh, setup.model_cfg.attention)
  token_bytes_V = jnp.asarray(token_bytes, jnp.int32)

  def step(state, batch: Batch):
    mb = make_batch(batch, jax.random.fold_in(state['rng'], state['step']), spec)

    def loss_fn(params):
      sums = _loss_sums(setup, params, mb, token_bytes_V)
      return sums['loss'] / jnp.maximum(sums['weight'], 1.0), sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = setup.optimizer.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state,
                 'step': state['step'] + 1, 'rng': state['rng']}
    metrics = {'train/loss': loss, 'train/accuracy': sums['correct'] / jnp.maximum(sums['weight'], 1.0),
               'train/tokens_scored': sums['weight'], 'train/grad_norm': optax.tree.norm(grads),
               'train/lr': schedule(state['step'])}
    return new_state, metrics

  batch_sharding = rules.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(setup.shardings, batch_sharding),
                 out_shardings=(setup.shardings, rules.replicated(mesh)), donate_argnums=0)


def make_eval_step(setup: StateSetup, mesh: Mesh, objective: str, spec: ObjectiveSpec,
                   token_bytes: np.ndarray) -> Callable:
  """params, batch, rng -> loss sums (add them over batches, then `summarize`)."""
  make_batch = _objective(objective, mesh, setup.model_cfg.attention)
  token_bytes_V = jnp.asarray(token_bytes, jnp.int32)

  def step(params, batch: Batch, rng: jax.Array):
    return _loss_sums(setup, params, make_batch(batch, rng, spec), token_bytes_V)

  return jax.jit(step, in_shardings=(setup.shardings['params'], rules.batch_sharding(mesh), rules.replicated(mesh)),
                 out_shardings=rules.replicated(mesh))


def summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
  """Loss sums -> mean loss (nats/token), perplexity, accuracy and bits per UTF-8 byte."""
  weight = max(sums['weight'], 1.0)
  loss = sums['loss'] / weight
  return {f'{prefix}/loss': loss, f'{prefix}/perplexity': math.exp(min(loss, 50.0)),
          f'{prefix}/accuracy': sums['correct'] / weight,
          f'{prefix}/bits_per_byte': sums['loss'] / math.log(2) / max(sums['bytes'], 1.0)}
