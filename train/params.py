"""Model parameters as plain nested dicts, and the logical axes of each leaf.

Training works on pure pytrees (dicts of arrays) rather than live NNX modules: they jit, shard, go through optax and
orbax unchanged. `apply` rebuilds the module from a graph definition and the dict inside the jitted function; that
costs nothing at run time (tracing only).
"""

import functools

import jax
from flax import nnx

from configs.sections import ModelConfig
from models.encoder_decoder import EncoderDecoder
from models.transformer import Transformer

Params = dict
Model = Transformer | EncoderDecoder
MODELS: dict[str, type[Model]] = {'decoder': Transformer, 'encoder_decoder': EncoderDecoder}  # model.architecture


@functools.lru_cache(maxsize=8)
def _abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  model = nnx.eval_shape(lambda: MODELS[cfg.architecture](cfg, nnx.Rngs(0)))
  return nnx.split(model, nnx.Param)


def logical_axes(cfg: ModelConfig) -> Params:
  """The same tree as the params, each leaf the tuple of logical axis names of that parameter."""
  _, state = _abstract(cfg)
  axes = jax.tree.map(lambda var: var.get_metadata()['logical_axes'], state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(axes)


def init(cfg: ModelConfig, seed: int) -> Params:
  return nnx.to_pure_dict(nnx.split(MODELS[cfg.architecture](cfg, nnx.Rngs(seed)), nnx.Param)[1])


def shapes(cfg: ModelConfig) -> Params:
  _, state = _abstract(cfg)
  return nnx.to_pure_dict(state)


def apply(cfg: ModelConfig, params: Params) -> Model:
  """The model of `model.architecture` whose parameters are `params` (used inside jitted functions)."""
  graphdef, state = _abstract(cfg)
  state = jax.tree.map(lambda x: x, state)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def count(params: Params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
