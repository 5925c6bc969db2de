"""Logical axis names -> mesh axes: the one place that decides how parameters and activations are partitioned.

Model code names each dimension (`embed`, `heads`, `mlp`, `vocab`, ...); these rules map the names onto the mesh.
Parameters: `embed` over fsdp (ZeRO-3 style: each device stores a slice, gathered for use), `heads`/`mlp`/`vocab`
over tensor (Megatron style). Activations: `batch` over (data, fsdp), `length` over sequence. A name mapped to None
is replicated. Optimizer state takes the sharding of the parameter it belongs to.
"""

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: LogicalRules = (
    ('batch', ('data', 'fsdp')),
    ('length', 'sequence'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('head_dim', None),
    ('norm', None),
    ('layers', None),  # the stacked-layer axis of scan_layers params: every device holds all layers' slices
)


def logical_to_spec(axes: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES) -> P:
  table = dict(rules)
  unknown = [a for a in axes if a is not None and a not in table]
  if unknown:
    raise KeyError(f'logical axis {unknown[0]!r} has no rule; add it to sharding.rules.DEFAULT_RULES')
  return P(*(None if a is None else table[a] for a in axes))


def named(mesh: Mesh, axes: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, S] host data: batch over (data, fsdp), length over sequence."""
  return named(mesh, ('batch', 'length'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def tree_shardings(mesh: Mesh, logical_tree, rules: LogicalRules = DEFAULT_RULES):
  """A tree of logical-axis tuples -> the same tree of NamedShardings."""
  return jax.tree.map(lambda axes: named(mesh, axes, rules), logical_tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def constrain(x: jax.Array, axes: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES) -> jax.Array:
  """Pin an activation's layout by logical names when a ringlm mesh is set (jax.set_mesh); else a no-op.

  This is how model code annotates activations without knowing the mesh: the same model runs unsharded in tests.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'sequence' not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules))
