"""Ring attention: sequence-sharded attention with k/v rotating around the mesh axis the sequence is split over.

Inside jax.shard_map each device keeps its q chunk and passes its k/v chunk (with the chunk's mask arrays) to the
next device n - 1 times, one kv block at a time: each block is folded into the online softmax (the blockwise
kernel's per-kv-block step) and replaced in place by the block arriving from the previous device, so a device holds
one visiting chunk plus a block in flight. The custom VJP repeats the ring, the dk/dv of each block following its
k/v one step behind; one last send returns them to their owner, so memory stays O(S / n) per device. Block pairs
the mask hides entirely (whole hops, under a causal mask in natural order) are skipped.

Which mesh axes carry the sequence, the batch and the heads comes from the active logical-axis rules
(`length`, `batch`, `heads`, `kv_heads`), the same rules that lay out every other activation.

Layout: the mask uses positions, so the math is the same for any order of tokens. For causal load balance the
caller puts the sequence in zig-zag order (`to_zigzag`: device i holds chunks i and 2n - 1 - i of 2n).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models.attention import blockwise as bw
from models.attention.mask import AttentionMask
from sharding import rules


Q_AXES = ('batch', 'length', 'heads', None)
# Logical axes of q, k, v and the mask, for the shard_map of a path that runs per device.
QKV_MASK_AXES = (Q_AXES, ('batch', 'length', 'kv_heads', None), ('batch', 'length', 'kv_heads', None),
                 ('batch', 'length'))


def zigzag_permutation(seq_len: int, n: int) -> np.ndarray:
  """Token order that gives device i chunks i and 2n - 1 - i: x_zigzag = x[:, perm]."""
  if seq_len % (2 * n):
    raise ValueError(f'seq_len={seq_len} must be divisible by 2 * {n} zig-zag chunks')
  chunks = np.arange(seq_len).reshape(2 * n, seq_len // (2 * n))
  return np.concatenate([np.concatenate([chunks[i], chunks[2 * n - 1 - i]]) for i in range(n)])


def zigzag_inverse_permutation(seq_len: int, n: int) -> np.ndarray:
  """Undoes zigzag_permutation: x = x_zigzag[:, inverse]."""
  return np.argsort(zigzag_permutation(seq_len, n))


def to_zigzag(tree, n: int):
  """Every [B, S, ...] array of `tree` in zig-zag order for a ring of n devices (the same permutation for all)."""
  def permute(x: jax.Array) -> jax.Array:
    return jnp.take(x, jnp.asarray(zigzag_permutation(x.shape[1], n)), axis=1)
  return jax.tree.map(permute, tree)


def block_sizes(local: int, q_block: int, kv_block: int) -> tuple[int, int]:
  """The (q, kv) block lengths on a device's `local` tokens. A kv block is at least halved to two per chunk: the
  backward pass sends a block's dk/dv one step late, into the slot the block left."""
  q_block, kv_block = bw.block_sizes(local, q_block, kv_block)
  if kv_block == local:
    if local % 2:
      raise ValueError(f'ring attention needs an even per-device length; got {local}')
    kv_block = local // 2
  return q_block, kv_block


@dataclasses.dataclass(frozen=True)
class Ring:
  """The mesh axis the sequence is split over, and its size n."""
  axis: str
  size: int


def _rotate(tree, ring: Ring):
  """Send every array to the next device on the ring."""
  n = ring.size
  return jax.tree.map(lambda x: lax.ppermute(x, ring.axis, [(i, (i + 1) % n) for i in range(n)]), tree)


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


def _forward(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring: Ring, q_block: int, kv_block: int) -> tuple:
  """Returns (out_BKGSE float32, lse_BKGS, visited block pairs) after every device's k/v chunk has visited.

  Hop t, block j: send block j of the visiting chunk on (it does not wait for this block's compute), fold it into
  the softmax, then store the block arriving from the previous device in its place. After the hop the buffer holds
  the next chunk; the only extra memory is one block in flight, not a second chunk. The visiting chunks carry
  kv_mask (the queries' own mask in self-attention, the encoder's in cross-attention).
  """
  q_summary = bw.summarize(q_mask, q_block)

  def hop(carry, send: bool):
    def block(j, carry):
      softmax, visited, chunk = carry
      k_BKJE, v_BKJE, block_mask = _take_block(chunk, j, kv_block)
      arrived = _rotate((k_BKJE, v_BKJE, block_mask), ring) if send else None
      softmax, visited = bw.forward_kv_block(softmax, visited, q_BKGSE, q_mask, q_summary, k_BKJE, v_BKJE,
                                             block_mask, q_block)
      return softmax, visited, _put_block(chunk, arrived, j, kv_block) if send else chunk

    return lax.fori_loop(0, k_BKSE.shape[2] // kv_block, block, carry)

  carry = (bw.Softmax.start(q_BKGSE), jnp.int32(0), (k_BKSE, v_BKSE, kv_mask))
  carry = lax.fori_loop(0, ring.size - 1, lambda _, carry: hop(carry, send=True), carry)
  softmax, visited, _ = hop(carry, send=False)
  return *softmax.finish(), visited


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _ring(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, q_block, kv_block):
  out_BKGSE, _, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, q_block, kv_block)
  return out_BKGSE.astype(q_BKGSE.dtype)


def _ring_fwd(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, q_block, kv_block):
  out_BKGSE, lse_BKGS, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, q_block, kv_block)
  out_BKGSE = out_BKGSE.astype(q_BKGSE.dtype)
  return out_BKGSE, (q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, out_BKGSE, lse_BKGS)


def _ring_bwd(ring, q_block, kv_block, residuals, do_BKGSE):
  """The forward's ring again, block by block, with each block's dk/dv travelling behind its k/v.

  A block's dk/dv are final for this hop only after its compute, so they are sent one step later, overlapping the
  next block's compute, and land in the slot the block just left (hence at least two kv blocks per chunk). The
  n-th send brings each chunk's gradients home.
  """
  q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, out_BKGSE, lse_BKGS = residuals
  delta_BKGS = bw.delta(do_BKGSE, out_BKGSE)
  q_summary = bw.summarize(q_mask, q_block)
  blocks = k_BKSE.shape[2] // kv_block

  def hop(carry, send: bool):
    def block(j, carry):
      dq_BKGSE, chunk, grads, done = carry
      k_BKJE, v_BKJE, block_mask = _take_block(chunk, j, kv_block)
      arrived = _rotate((k_BKJE, v_BKJE, block_mask), ring) if send else None
      arrived_done = _rotate(done, ring)  # the previous block's finished dk/dv
      dq_BKGSE, dk_BKJE, dv_BKJE = bw.backward_kv_block(
          (dq_BKGSE, *(bw.take(g, j, kv_block, axis=2) for g in grads)), q_BKGSE, do_BKGSE, lse_BKGS, delta_BKGS,
          q_mask, q_summary, k_BKJE, v_BKJE, block_mask, q_block)
      grads = _put_block(grads, arrived_done, (j - 1) % blocks, kv_block)
      return dq_BKGSE, _put_block(chunk, arrived, j, kv_block) if send else chunk, grads, (dk_BKJE, dv_BKJE)

    return lax.fori_loop(0, blocks, block, carry)

  zeros_BKSE = jnp.zeros(k_BKSE.shape, jnp.float32)
  zeros_BKJE = jnp.zeros(k_BKSE.shape[:2] + (kv_block,) + k_BKSE.shape[3:], jnp.float32)
  carry = (jnp.zeros(q_BKGSE.shape, jnp.float32), (k_BKSE, v_BKSE, kv_mask), (zeros_BKSE, zeros_BKSE),
           (zeros_BKJE, zeros_BKJE))
  carry = lax.fori_loop(0, ring.size - 1, lambda _, carry: hop(carry, send=True), carry)
  dq_BKGSE, _, grads, done = hop(carry, send=False)
  dk_BKSE, dv_BKSE = _put_block(grads, _rotate(done, ring), blocks - 1, kv_block)
  return dq_BKGSE.astype(q_BKGSE.dtype), dk_BKSE.astype(k_BKSE.dtype), dv_BKSE.astype(v_BKSE.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask: AttentionMask, q_block: int,
                   kv_block: int, kv_mask: AttentionMask | None = None) -> jax.Array:
  """Global arrays in, global array out, on the mesh set by jax.set_mesh; the axes come from the active rules.

  kv_mask describes the keys when they are another sequence than the queries (cross-attention over a sequence-
  sharded encoder output): its k/v chunks go round the ring like self-attention's. Both sequences must have the
  same length, split alike."""
  mesh = jax.sharding.get_abstract_mesh()
  length_axes = rules.mesh_axes('length')
  sizes = {} if mesh.empty else dict(mesh.shape)
  if len(length_axes) != 1 or sizes.get(length_axes[0], 1) <= 1:
    raise ValueError(f'ring attention needs the activations\' length (mesh.rules: length={"+".join(length_axes)}) '
                     f'split over one mesh axis of size > 1 set by jax.set_mesh(mesh), e.g. sequence; got '
                     f'{sizes or "no mesh"}. Use blockwise attention instead.')
  ring = Ring(length_axes[0], sizes[length_axes[0]])
  if k_BSKE.shape[1] != q_BSHE.shape[1]:
    raise ValueError(f'ring attention needs queries and keys of one length; got {q_BSHE.shape[1]} and '
                     f'{k_BSKE.shape[1]}')
  if q_BSHE.shape[1] % ring.size:
    raise ValueError(f'sequence length {q_BSHE.shape[1]} must be divisible by the {ring.axis} axis size {ring.size}')
  q_block, kv_block = block_sizes(q_BSHE.shape[1] // ring.size, q_block, kv_block)

  def local_attention(q_BSHE, k_BSKE, v_BSKE, q_mask, kv_mask):
    out_BKGSE = _ring(*bw.to_internal(q_BSHE, k_BSKE, v_BSKE), q_mask, kv_mask, ring, q_block, kv_block)
    return bw.from_internal(out_BKGSE)

  return rules.shard_map_by_names(local_attention, (q_BSHE, k_BSKE, v_BSKE, mask, mask if kv_mask is None else kv_mask),
                                  QKV_MASK_AXES + (('batch', 'length'),), Q_AXES)
