"""Ring attention: sequence-sharded attention with k/v rotating around the 'sequence' mesh axis.

Inside jax.shard_map each device keeps its q chunk and passes its k/v chunk (with the chunk's mask arrays) to the
next device n - 1 times, running the blockwise kernel on each visiting chunk and merging the results by their
log-sum-exp. The custom VJP repeats the ring, carrying dk/dv with the chunk they belong to; one last hop returns
them to their owner, so backward memory stays O(S / n) per device. Hops the mask hides entirely are skipped.

Layout: the mask uses positions, so the math is the same for any order of tokens. For causal load balance the
caller permutes the sequence with zigzag_permutation (device i holds chunks i and 2n - 1 - i of 2n).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from models import blockwise_attention as bw

if TYPE_CHECKING:
  from models.attention import AttentionMask

AXIS = 'sequence'
BATCH_AXES = ('data', 'fsdp')
HEAD_AXIS = 'tensor'


def zigzag_permutation(seq_len: int, n: int) -> np.ndarray:
  """Token order that gives device i chunks i and 2n - 1 - i: x_zigzag = x[:, perm]."""
  if seq_len % (2 * n):
    raise ValueError(f'seq_len={seq_len} must be divisible by 2 * {n} zig-zag chunks')
  chunks = np.arange(seq_len).reshape(2 * n, seq_len // (2 * n))
  return np.concatenate([np.concatenate([chunks[i], chunks[2 * n - 1 - i]]) for i in range(n)])


def zigzag_inverse_permutation(seq_len: int, n: int) -> np.ndarray:
  """Undoes zigzag_permutation: x = x_zigzag[:, inverse]."""
  return np.argsort(zigzag_permutation(seq_len, n))


def _rotate(tree, n: int):
  """Send every array to the next device on the ring."""
  return jax.tree.map(lambda x: lax.ppermute(x, AXIS, [(i, (i + 1) % n) for i in range(n)]), tree)


def _merge(out_a: jax.Array, lse_a: jax.Array, out_b: jax.Array, lse_b: jax.Array) -> tuple:
  """Combine two normalised partial softmax results over disjoint key sets."""
  lse = jnp.logaddexp(lse_a, lse_b)
  lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  weight_a, weight_b = jnp.exp(lse_a - lse_safe)[..., None], jnp.exp(lse_b - lse_safe)[..., None]
  return out_a * weight_a + out_b * weight_b, lse


def _chunk_hidden(q_mask: AttentionMask, kv_mask: AttentionMask) -> jax.Array:
  """True when no query of this device sees any key of the visiting chunk."""
  return bw.hidden(bw.summarize(q_mask, q_mask.positions.shape[1]), bw.summarize(kv_mask, kv_mask.positions.shape[1]))


def _forward(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block) -> tuple:
  """Returns (out_BKGSE float32, lse_BKGS) after visiting every device's k/v chunk."""

  def visit(state, kv):
    k_BKTE, v_BKTE, kv_mask = kv

    out_t, lse_t, _ = bw.forward_chunk(q_BKGSE, k_BKTE, v_BKTE, mask, kv_mask, q_block, kv_block,
                                       skip=_chunk_hidden(mask, kv_mask))
    return _merge(*state, out_t, lse_t)

  def hop(_, carry):
    state, kv = carry
    return visit(state, kv), _rotate(kv, n)  # sending the chunk on does not wait for this hop's compute

  init = (jnp.zeros(q_BKGSE.shape, jnp.float32), jnp.full(q_BKGSE.shape[:-1], -jnp.inf))
  state, kv = lax.fori_loop(0, n - 1, hop, (init, (k_BKSE, v_BKSE, mask)))
  return visit(state, kv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block):
  out_BKGSE, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block)
  return out_BKGSE.astype(q_BKGSE.dtype)


def _ring_fwd(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block):
  out_BKGSE, lse_BKGS = _forward(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block)
  out_BKGSE = out_BKGSE.astype(q_BKGSE.dtype)
  return out_BKGSE, (q_BKGSE, k_BKSE, v_BKSE, mask, out_BKGSE, lse_BKGS)


def _ring_bwd(n, q_block, kv_block, residuals, do_BKGSE):
  q_BKGSE, k_BKSE, v_BKSE, mask, out_BKGSE, lse_BKGS = residuals
  delta_BKGS = bw.delta(do_BKGSE, out_BKGSE)

  def visit(dq_BKGSE, kv, dkv):
    k_BKTE, v_BKTE, kv_mask = kv
    dq_BKGSE, dk_BKTE, dv_BKTE = bw.backward_chunk(q_BKGSE, k_BKTE, v_BKTE, mask, kv_mask, do_BKGSE, lse_BKGS,
                                                   delta_BKGS, (dq_BKGSE, *dkv), q_block, kv_block,
                                                   skip=_chunk_hidden(mask, kv_mask))
    return dq_BKGSE, (dk_BKTE, dv_BKTE)

  def hop(_, carry):
    dq_BKGSE, kv, dkv = carry
    dq_BKGSE, dkv = visit(dq_BKGSE, kv, dkv)
    return dq_BKGSE, _rotate(kv, n), _rotate(dkv, n)

  zeros_BKSE = jnp.zeros(k_BKSE.shape, jnp.float32)
  init = (jnp.zeros(q_BKGSE.shape, jnp.float32), (k_BKSE, v_BKSE, mask), (zeros_BKSE, zeros_BKSE))
  dq_BKGSE, kv, dkv = lax.fori_loop(0, n - 1, hop, init)
  dq_BKGSE, dkv = visit(dq_BKGSE, kv, dkv)
  dk_BKSE, dv_BKSE = _rotate(dkv, n)  # the n-th rotation brings each chunk's gradient home
  return dq_BKGSE.astype(q_BKGSE.dtype), dk_BKSE.astype(k_BKSE.dtype), dv_BKSE.astype(v_BKSE.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask: AttentionMask, q_block: int,
                   kv_block: int) -> jax.Array:
  """Global arrays in, global array out; the mesh comes from jax.set_mesh (batch over data/fsdp, heads over tensor)."""
  mesh = jax.sharding.get_abstract_mesh()
  n = 0 if mesh.empty else dict(mesh.shape).get(AXIS, 1)
  if n <= 1:
    raise ValueError(f"ring attention needs a mesh with a '{AXIS}' axis of size > 1 set by jax.set_mesh(mesh); "
                     f'got {"no mesh" if mesh.empty else dict(mesh.shape)}. Use blockwise attention instead.')
  local = q_BSHE.shape[1] // n
  if q_BSHE.shape[1] % n:
    raise ValueError(f'sequence length {q_BSHE.shape[1]} must be divisible by the {AXIS} axis size {n}')
  q_block, kv_block = bw.check_blocks(local, q_block, kv_block)
  batch = tuple(a for a in BATCH_AXES if a in mesh.axis_names) or None
  heads = HEAD_AXIS if HEAD_AXIS in mesh.axis_names else None
  x_spec, mask_spec = P(batch, AXIS, heads, None), P(batch, AXIS)

  def local_attention(q_BSHE, k_BSKE, v_BSKE, mask):
    out_BKGSE = _ring(*bw.to_internal(q_BSHE, k_BSKE, v_BSKE), mask, n, q_block, kv_block)
    return bw.from_internal(out_BKGSE)

  specs = (x_spec, x_spec, x_spec, mask_spec)
  args = (q_BSHE, k_BSKE, v_BSKE, mask)
  explicit = bool(mesh.explicit_axes)  # explicit-sharding meshes type arrays: move them to the ring layout and back
  if explicit:
    args = jax.sharding.reshard(args, specs)
  out_BSHE = jax.shard_map(local_attention, mesh=mesh, in_specs=specs, out_specs=x_spec, check_vma=False)(*args)
  return jax.sharding.reshard(out_BSHE, jax.typeof(q_BSHE).sharding.spec) if explicit else out_BSHE
