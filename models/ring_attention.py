"""Ring attention: sequence-sharded attention with k/v rotating around the 'sequence' mesh axis.

Inside jax.shard_map each device keeps its q chunk and passes its k/v chunk (with the chunk's mask arrays) to the
next device n - 1 times, one kv block at a time: each block is folded into the online softmax (the blockwise
kernel's per-kv-block step) and replaced in place by the block arriving from the previous device, so a device holds
one visiting chunk plus a block in flight. The custom VJP repeats the ring, the dk/dv of each block following its
k/v one step behind; one last send returns them to their owner, so memory stays O(S / n) per device. Block pairs
the mask hides entirely (whole hops, under a causal mask in natural order) are skipped.

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


def _take_block(chunk: tuple, j: jax.Array, block: int) -> tuple:
  """Block j of a visiting (k_BKTE, v_BKTE, mask) chunk."""
  k_BKTE, v_BKTE, mask = chunk
  return bw.take(k_BKTE, j, block, axis=2), bw.take(v_BKTE, j, block, axis=2), bw.take_mask(mask, j, block)


def _put_block(chunk: tuple, arrived: tuple, j: jax.Array, block: int) -> tuple:
  """Overwrite block j of a (k_BKTE, v_BKTE, mask) chunk, or of (dk_BKTE, dv_BKTE), in place."""
  def put(x, x_block):
    axis = 1 if x.ndim == 2 else 2  # mask arrays are [B, T], the others [B, K, T, E]
    return lax.dynamic_update_slice_in_dim(x, x_block, j * block, axis=axis)

  return jax.tree.map(put, chunk, arrived)


def _forward(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block) -> tuple:
  """Returns (out_BKGSE float32, lse_BKGS, visited block pairs) after every device's k/v chunk has visited.

  Hop t, block j: send block j of the visiting chunk on (it does not wait for this block's compute), fold it into
  the softmax, then store the block arriving from the previous device in its place. After the hop the buffer holds
  the next chunk; the only extra memory is one block in flight, not a second chunk.
  """
  q_summary = bw.summarize(mask, q_block)

  def hop(carry, send: bool):
    def block(j, carry):
      softmax, visited, chunk = carry
      k_BKLE, v_BKLE, kv_mask = _take_block(chunk, j, kv_block)
      arrived = _rotate((k_BKLE, v_BKLE, kv_mask), n) if send else None
      softmax, visited = bw.forward_kv_block(softmax, visited, q_BKGSE, mask, q_summary, k_BKLE, v_BKLE, kv_mask,
                                             q_block)
      return softmax, visited, _put_block(chunk, arrived, j, kv_block) if send else chunk

    return lax.fori_loop(0, k_BKSE.shape[2] // kv_block, block, carry)

  carry = (bw.Softmax.start(q_BKGSE), jnp.int32(0), (k_BKSE, v_BKSE, mask))
  carry = lax.fori_loop(0, n - 1, lambda _, carry: hop(carry, send=True), carry)
  softmax, visited, _ = hop(carry, send=False)
  return *softmax.finish(), visited


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block):
  out_BKGSE, _, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block)
  return out_BKGSE.astype(q_BKGSE.dtype)


def _ring_fwd(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block):
  out_BKGSE, lse_BKGS, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, mask, n, q_block, kv_block)
  out_BKGSE = out_BKGSE.astype(q_BKGSE.dtype)
  return out_BKGSE, (q_BKGSE, k_BKSE, v_BKSE, mask, out_BKGSE, lse_BKGS)


def _ring_bwd(n, q_block, kv_block, residuals, do_BKGSE):
  """The forward's ring again, block by block, with each block's dk/dv travelling behind its k/v.

  A block's dk/dv are final for this hop only after its compute, so they are sent one step later, overlapping the
  next block's compute, and land in the slot the block just left (hence at least two kv blocks per chunk). The
  n-th send brings each chunk's gradients home.
  """
  q_BKGSE, k_BKSE, v_BKSE, mask, out_BKGSE, lse_BKGS = residuals
  delta_BKGS = bw.delta(do_BKGSE, out_BKGSE)
  q_summary = bw.summarize(mask, q_block)
  blocks = k_BKSE.shape[2] // kv_block

  def hop(carry, send: bool):
    def block(j, carry):
      dq_BKGSE, chunk, grads, done = carry
      k_BKLE, v_BKLE, kv_mask = _take_block(chunk, j, kv_block)
      arrived = _rotate((k_BKLE, v_BKLE, kv_mask), n) if send else None
      arrived_done = _rotate(done, n)  # the previous block's finished dk/dv
      dq_BKGSE, dk_BKLE, dv_BKLE = bw.backward_kv_block(
          (dq_BKGSE, *(bw.take(g, j, kv_block, axis=2) for g in grads)), q_BKGSE, do_BKGSE, lse_BKGS, delta_BKGS,
          mask, q_summary, k_BKLE, v_BKLE, kv_mask, q_block)
      grads = _put_block(grads, arrived_done, (j - 1) % blocks, kv_block)
      return dq_BKGSE, _put_block(chunk, arrived, j, kv_block) if send else chunk, grads, (dk_BKLE, dv_BKLE)

    return lax.fori_loop(0, blocks, block, carry)

  zeros_BKSE = jnp.zeros(k_BKSE.shape, jnp.float32)
  zeros_BKLE = jnp.zeros(k_BKSE.shape[:2] + (kv_block,) + k_BKSE.shape[3:], jnp.float32)
  carry = (jnp.zeros(q_BKGSE.shape, jnp.float32), (k_BKSE, v_BKSE, mask), (zeros_BKSE, zeros_BKSE),
           (zeros_BKLE, zeros_BKLE))
  carry = lax.fori_loop(0, n - 1, lambda _, carry: hop(carry, send=True), carry)
  dq_BKGSE, _, grads, done = hop(carry, send=False)
  dk_BKSE, dv_BKSE = _put_block(grads, _rotate(done, n), blocks - 1, kv_block)
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
  if kv_block == local:  # the backward sends a block's dk/dv one step late, into the slot it left: two at least
    if local % 2:
      raise ValueError(f'ring attention needs an even per-device length; got {local} ({q_BSHE.shape[1]} / {n})')
    kv_block = local // 2
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
