"""The jitted train and eval steps: objective -> model -> loss, with explicit shardings in and out."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from configs.sections import ModelConfig
from models.attention.ring import to_zigzag
from sharding import rules
from train import loss as loss_lib
from train import objectives
from train import params as params_lib
from train.objectives import ModelBatch, ObjectiveSpec
from train.objectives.encoder_decoder import EncoderDecoderBatch, to_encoder_decoder
from train.state import StateSetup

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def hidden(model: params_lib.Model, mb: ModelBatch | EncoderDecoderBatch) -> jax.Array:
  """The final hidden states [B, S, D] of the batch's (decoder) tokens, for either architecture."""
  if isinstance(mb, EncoderDecoderBatch):
    return model.hidden(mb.inputs, mb.mask, mb.encoder_inputs, mb.encoder_mask)
  return model.hidden(mb.inputs, mb.mask)


def _loss_sums(setup: StateSetup, params, mb: ModelBatch | EncoderDecoderBatch,
               token_bytes_V: jax.Array) -> dict[str, jax.Array]:
  cfg = setup.model_cfg
  model = params_lib.apply(cfg, params)
  h_BSD = hidden(model, mb)
  return loss_lib.loss_sums(h_BSD, model.head_weights_DV(), mb.targets, mb.weights, token_bytes_V, cfg.ffn_chunk,
                            positions_BS=mb.mask.positions)


def ring_layout(mb: ModelBatch | EncoderDecoderBatch, mesh: Mesh) -> ModelBatch | EncoderDecoderBatch:
  """Zig-zag the sequence for ring attention so each device holds one early and one late chunk (causal balance).

  Applied after the objective (targets are already aligned), to every [B, S] array alike; attention masks by
  positions and the loss is a sum over tokens, so the numbers do not depend on the order.
  """
  return to_zigzag(mb, math.prod(mesh.shape[a] for a in rules.mesh_axes('length')))


def objective_batch(name: str, mesh: Mesh, model_cfg: ModelConfig) -> Callable:
  """(batch, rng, spec) -> the objective's batch for the model: its decoder form, adapted for the encoder-decoder,
  in ring layout. What the train and eval steps build; tests check both architectures' examples through it."""
  make_batch = objectives.get(name)
  if model_cfg.architecture == 'encoder_decoder':
    decoder_form = make_batch
    make_batch = lambda batch, rng, spec: to_encoder_decoder(decoder_form(batch, rng, spec), spec)
  if model_cfg.attention != 'ring':
    return make_batch
  return lambda batch, rng, spec: ring_layout(make_batch(batch, rng, spec), mesh)


def step_rng(state) -> jax.Array:
  """The objective's key at the state's step: it depends on (seed, step) only, so resume is exact."""
  return jax.random.fold_in(state['rng'], state['step'])


def _microbatches(x_B: jax.Array, count: int) -> jax.Array:
  """[B, ...] -> [count, B / count, ...]: microbatch i takes rows i, i + count, ..., so with the batch sharded in
  contiguous blocks every microbatch is spread over every device (B / count divisible by the batch shards)."""
  x = x_B.reshape(x_B.shape[0] // count, count, *x_B.shape[1:]).swapaxes(0, 1)
  return rules.constrain(x, (None, 'batch', 'length') + (None,) * (x.ndim - 3))


def make_train_step(setup: StateSetup, mesh: Mesh, objective: str, spec: ObjectiveSpec,
                    token_bytes: np.ndarray, schedule: optax.Schedule, grad_accum_steps: int = 1) -> Callable:
  """state, batch -> state, metrics. The objective's randomness is keyed by (seed, step), so resume is exact.

  With grad_accum_steps > 1 the batch's gradient is summed over that many microbatches in turn (activations for
  one microbatch at a time), then one optimizer update: the same step as one big batch, up to float rounding.
  """
  make_batch = objective_batch(objective, mesh, setup.model_cfg)
  token_bytes_V = jnp.asarray(token_bytes, jnp.int32)

  def step(state, batch: Batch):
    mb = make_batch(batch, step_rng(state), spec)
    scored = jnp.maximum(mb.weights.sum(), 1.0)  # the whole batch's, so microbatch losses add up to its mean

    def loss_fn(params, mb: ModelBatch | EncoderDecoderBatch):
      sums = _loss_sums(setup, params, mb, token_bytes_V)
      return sums['loss'] / scored, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
      (loss, sums), grads = grad_fn(state['params'], mb)
    else:
      def accumulate(total, micro):
        return jax.tree.map(jnp.add, total, grad_fn(state['params'], micro)), None

      micro = jax.tree.map(lambda x: _microbatches(x, grad_accum_steps), mb)
      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state['params'], first))
      ((loss, sums), grads), _ = jax.lax.scan(accumulate, zeros, micro)
    updates, opt_state = setup.optimizer.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state,
                 'step': state['step'] + 1, 'rng': state['rng']}
    metrics = {'train/loss': loss, 'train/accuracy': sums['correct'] / scored,
               'train/tokens_scored': sums['weight'], 'train/grad_norm': optax.tree.norm(grads),
               'train/lr': schedule(state['step'])}
    return new_state, metrics

  batch_sharding = rules.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(setup.shardings, batch_sharding),
                 out_shardings=(setup.shardings, rules.replicated(mesh)), donate_argnums=0)


def make_eval_step(setup: StateSetup, mesh: Mesh, objective: str, spec: ObjectiveSpec,
                   token_bytes: np.ndarray) -> Callable:
  """params, batch, rng -> loss sums (add them over batches, then `summarize`)."""
  make_batch = objective_batch(objective, mesh, setup.model_cfg)
  token_bytes_V = jnp.asarray(token_bytes, jnp.int32)

  def step(params, batch: Batch, rng: jax.Array):
    return _loss_sums(setup, params, make_batch(batch, rng, spec), token_bytes_V)

  return jax.jit(step, in_shardings=(setup.shardings['params'], rules.batch_sharding(mesh), rules.replicated(mesh)),
                 out_shardings=rules.replicated(mesh))


def summarize(sums: dict, prefix: str) -> dict[str, float]:
  """Loss sums -> mean loss (nats/token), perplexity, accuracy and bits per UTF-8 byte; with position sums, the
  mean loss of each position bucket that holds scored tokens, as `{prefix}/loss_by_position/{first}` (the bucket of
  predictions from first..2*first-1 tokens of context, train/loss.py)."""
  weight = max(float(sums['weight']), 1.0)
  loss = float(sums['loss']) / weight
  out = {f'{prefix}/loss': loss, f'{prefix}/perplexity': math.exp(min(loss, 50.0)),
         f'{prefix}/accuracy': float(sums['correct']) / weight,
         f'{prefix}/bits_per_byte': float(sums['loss']) / math.log(2) / max(float(sums['bytes']), 1.0)}
  if 'position_loss' in sums:
    for b, (total, count) in enumerate(zip(sums['position_loss'], sums['position_weight'])):
      if count > 0:
        out[f'{prefix}/loss_by_position/{2 ** b}'] = float(total) / float(count)
  return out
