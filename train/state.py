"""The training state (params, optimizer state, step, RNG) and where each piece lives on the mesh.

State is a plain dict so orbax saves and restores it as is; its shardings are derived from the parameters' logical
axes: optimizer moments take their parameter's sharding, scalars are replicated.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from configs.sections import Config, ModelConfig
from sharding import rules
from train import optimizer as optimizer_lib
from train import params as params_lib

State = dict


@dataclasses.dataclass
class StateSetup:
  """Everything needed to create, shard, restore and step a training state on one mesh."""

  model_cfg: ModelConfig
  optimizer: optax.GradientTransformation
  shardings: State  # NamedSharding per leaf
  abstract: State  # ShapeDtypeStruct per leaf, with sharding (the restore target)
  seed: int

  def init(self) -> State:
    """A fresh state, created directly in its sharded layout (no host copy of the full params)."""
    def fresh() -> State:
      params = params_lib.init(self.model_cfg, self.seed)
      return {'params': params, 'opt_state': self.optimizer.init(params), 'step': jnp.zeros((), jnp.int32),
              'rng': jax.random.PRNGKey(self.seed)}

    return jax.jit(fresh, out_shardings=self.shardings)()


def build(config: Config, mesh: Mesh) -> StateSetup:
  """The state of `config.model` trained by `config.train` on `mesh`, parameters laid out by `mesh.rules`."""
  model_cfg = config.model
  axes = params_lib.logical_axes(model_cfg)
  optimizer = optimizer_lib.make_optimizer(config.train, axes)
  param_shardings = rules.tree_shardings(mesh, axes, config.mesh.logical_rules)
  param_shapes = params_lib.shapes(model_cfg)
  opt_shapes = jax.eval_shape(optimizer.init, param_shapes)
  replicated = rules.replicated(mesh)
  opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, opt_shapes, param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, NamedSharding))
  shardings = {'params': param_shardings, 'opt_state': opt_shardings, 'step': replicated, 'rng': replicated}
  shapes = {'params': param_shapes, 'opt_state': opt_shapes, 'step': jax.ShapeDtypeStruct((), jnp.int32),
            'rng': jax.eval_shape(lambda: jax.random.PRNGKey(0))}
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return StateSetup(model_cfg=model_cfg, optimizer=optimizer, shardings=shardings, abstract=abstract,
                    seed=config.seed)
