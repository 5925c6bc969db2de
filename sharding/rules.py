"""Logical axis names -> mesh axes: the one place that decides how parameters and activations are partitioned.

Model code names each dimension (`embed`, `heads`, `mlp`, `vocab`, ...); the config's `mesh.rules` maps the names
onto the mesh. By default, parameters: `embed` over fsdp (ZeRO-3 style: each device stores a slice, gathered for
use), `heads`/`mlp`/`vocab` over tensor (Megatron style). Activations: `batch` over (data, fsdp), `length` over
sequence. A name mapped to None is replicated. Optimizer state takes the sharding of the parameter it belongs to.
Parameter shardings come from the config's rules directly; activations and batches use the rules made active by
`use` for the run (default: the default config's).
"""

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs.default import LOGICAL_RULES
from configs.sections import LogicalRules, parse_rules

DEFAULT_RULES: LogicalRules = parse_rules(LOGICAL_RULES)
_ACTIVE: contextvars.ContextVar[LogicalRules] = contextvars.ContextVar('ringlm_logical_rules', default=DEFAULT_RULES)


@contextlib.contextmanager
def use(rules: LogicalRules) -> Iterator[None]:
  """Make `rules` the ones activations and batches are laid out by (the config's `mesh.rules` during a run)."""
  token = _ACTIVE.set(rules)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def logical_to_spec(axes: Sequence[str | None], rules: LogicalRules | None = None) -> P:
  table = dict(_ACTIVE.get() if rules is None else rules)
  unknown = [a for a in axes if a is not None and a not in table]
  if unknown:
    raise KeyError(f'logical axis {unknown[0]!r} has no rule; add it to mesh.rules and configs.sections.LOGICAL_NAMES')
  return P(*(None if a is None else table[a] for a in axes))


def mesh_axes(name: str, rules: LogicalRules | None = None) -> tuple[str, ...]:
  """The mesh axes a logical dimension is split over under `rules` (default: the active ones); empty = replicated."""
  target = logical_to_spec((name,), rules)[0]
  return (target,) if isinstance(target, str) else tuple(target or ())


def named(mesh: Mesh, axes: Sequence[str | None], rules: LogicalRules | None = None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, S] host data: batch over (data, fsdp), length over sequence."""
  return named(mesh, ('batch', 'length'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def tree_shardings(mesh: Mesh, logical_tree, rules: LogicalRules | None = None):
  """A tree of logical-axis tuples -> the same tree of NamedShardings."""
  return jax.tree.map(lambda axes: named(mesh, axes, rules), logical_tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def constrain(x: jax.Array, axes: Sequence[str | None], rules: LogicalRules | None = None) -> jax.Array:
  """Pin an activation's layout by logical names when a ringlm mesh is set (jax.set_mesh); else a no-op.

  This is how model code annotates activations without knowing the mesh: the same model runs unsharded in tests.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'sequence' not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules))


def shard_map_by_names(fn, args: tuple, in_axes: tuple, out_axes: Sequence[str | None]) -> jax.Array:
  """fn on each device's shard of `args` (jax.shard_map over the active mesh), each argument laid out by its logical
  axes (one tuple per argument, applied to all of its leaves) and the output by `out_axes`.

  For code the partitioner cannot split by itself (ring attention's collectives, Pallas custom calls). On an
  explicit-sharding mesh, whose arrays carry their layout in their type, the arguments move to that layout and the
  output back to the first argument's.
  """
  mesh = jax.sharding.get_abstract_mesh()
  in_specs = tuple(logical_to_spec(axes) for axes in in_axes)
  out_spec = logical_to_spec(out_axes)
  explicit = bool(mesh.explicit_axes)
  first_spec = jax.typeof(args[0]).sharding.spec if explicit else None
  if explicit:
    args = jax.sharding.reshard(args, in_specs)
  out = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_spec, check_vma=False)(*args)
  return jax.sharding.reshard(out, first_spec) if explicit else out


def length_shards(rules: LogicalRules | None = None) -> int:
  """How many ways activations' `length` axis is split on the current mesh (1 where constrain is a no-op)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'sequence' not in mesh.axis_names:
    return 1
  return math.prod(dict(mesh.shape)[a] for a in mesh_axes('length', rules))


def sequence_chunks(x_BS: jax.Array, block: int) -> jax.Array:
  """[B, S, ...] -> [N, B, P, block, ...]: each of the P sequence shards cut into N chunks of `block`.

  A scan over N then takes chunk n of every device's own part at once; scanning chunks of the global sequence
  would make XLA gather the sharded sequence onto every device. Undo with `merge_sequence_chunks`.
  """
  B, S, *rest = x_BS.shape
  shards = length_shards()
  x_BPNC = x_BS.reshape(B, shards, S // (shards * block), block, *rest)
  return constrain(jnp.moveaxis(x_BPNC, 2, 0), (None, 'batch', 'length') + (None,) * (1 + len(rest)))


def merge_sequence_chunks(x_NBPC: jax.Array) -> jax.Array:
  N, B, shards, block, *rest = x_NBPC.shape
  return jnp.moveaxis(x_NBPC, 0, 2).reshape(B, shards * N * block, *rest)
