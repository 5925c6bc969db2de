"""Ring attention: sequence-sharded attention with k/v rotating around the mesh axis the sequence is split over.

Inside jax.shard_map each device keeps its q chunk and passes its k/v chunk (with the chunk's mask arrays) to the
next device n - 1 times, one kv block at a time: each block is folded into the online softmax (the blockwise
kernel's per-kv-block step) and replaced in place by the block arriving from the previous device, so a device holds
one visiting chunk plus a block in flight. The custom VJP repeats the ring, the dk/dv of each block following its
k/v one step behind; one last send returns them to their owner, so memory stays O(S / n) per device. Block pairs
the mask hides entirely (whole hops, under a causal mask in natural order) are skipped.

Each hop's block step is pluggable: JaxHops folds a block into the blockwise kernel's online softmax; SplashHops
(TPU) computes each (q half-chunk, kv half-chunk) pair with splash attention, which returns the log-sum-exp the
merge needs, and runs splash's backward against the merged out and lse. The messaging is the same for both.

Which mesh axes carry the sequence, the batch and the heads comes from the active logical-axis rules
(`length`, `batch`, `heads`, `kv_heads`), the same rules that lay out every other activation.

Layout: the mask uses positions, so the pure-JAX math is the same for any order of tokens. For causal load balance
the caller puts the sequence in zig-zag order (`to_zigzag`: device i holds chunks i and 2n - 1 - i of 2n, and the
mask's static `layout` says so, which SplashHops needs: it masks by token index within chunks).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models.attention import blockwise as bw
from models.attention import pallas
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
  """Every [B, S, ...] array of `tree` in zig-zag order for a ring of n devices (the same permutation for all);
  its attention masks say so (layout 'zigzag')."""
  def permute(x: jax.Array) -> jax.Array:
    return jnp.take(x, jnp.asarray(zigzag_permutation(x.shape[1], n)), axis=1)

  def permute_mask(x):
    if isinstance(x, AttentionMask):
      return dataclasses.replace(jax.tree.map(permute, x), layout='zigzag')
    return permute(x)

  return jax.tree.map(permute_mask, tree, is_leaf=lambda x: isinstance(x, AttentionMask))


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


# A hop kernel has forward(q, q_mask, fold_blocks) -> (out, lse, visited pairs), where fold_blocks(start, fold) runs
# fold(state, k, v, block_mask, me, src, j) over every visiting block in ring order, and backward(q, q_mask, do, out,
# lse) -> the step that adds one visiting block's share to (dq, dk_block, dv_block).
class JaxHops(NamedTuple):
  """The pure-JAX hop step: a kv block folded into the online softmax q block by q block, hidden pairs skipped."""
  q_block: int
  kv_block: int

  def forward(self, q_BKGSE, q_mask: AttentionMask, fold_blocks: Callable) -> tuple:
    q_summary = bw.summarize(q_mask, self.q_block)

    def fold(state, k_BKJE, v_BKJE, block_mask, me, src, j):
      return bw.forward_kv_block(*state, q_BKGSE, q_mask, q_summary, k_BKJE, v_BKJE, block_mask, self.q_block)

    softmax, visited = fold_blocks((bw.Softmax.start(q_BKGSE), jnp.int32(0)), fold)
    return *softmax.finish(), visited

  def backward(self, q_BKGSE, q_mask: AttentionMask, do_BKGSE, out_BKGSE, lse_BKGS) -> Callable:
    """The per-block gradient step: (dq_BKGSE, dk_BKJE, dv_BKJE) + this kv block's share."""
    delta_BKGS = bw.delta(do_BKGSE, out_BKGSE)
    q_summary = bw.summarize(q_mask, self.q_block)

    def block_grads(grads, k_BKJE, v_BKJE, block_mask, me, src, j):
      return bw.backward_kv_block(grads, q_BKGSE, do_BKGSE, lse_BKGS, delta_BKGS, q_mask, q_summary, k_BKJE, v_BKJE,
                                  block_mask, self.q_block)

    return block_grads


UNSEEN, CAUSAL, FULL = 0, 1, 2  # how a q half-chunk relates to a kv half-chunk: keys after, the same chunk, before


class SplashHops(NamedTuple):
  """The fused hop step (TPU splash): each kv block is a half-chunk, and each (q half-chunk, kv half-chunk) pair is
  one kernel call with a static mask chosen by where the two chunks sit in the sequence: keys all before the
  queries (full mask), the same chunk (causal), or all after (nothing to compute); segment ids separate documents.
  The pair's (out, lse) merge into the running softmax by log-sum-exp; the backward calls splash's own backward with
  the merged out and lse. Serves masks without bidirectional keys and all-bidirectional ones (`bidirectional`
  'none' or 'all'), in either layout, since within a chunk tokens are in natural order."""
  layout: str  # natural | zigzag: which global half-chunk a device's half holds
  bidirectional: str  # none | all
  kernel_blocks: tuple[int, int]  # splash's q and kv tile lengths
  interpret: bool
  half: int  # half-chunk length: the kv block the ring sends
  ring_size: int

  @property
  def kv_block(self) -> int:
    return self.half

  def _chunk(self, device: jax.Array, half: jax.Array | int) -> jax.Array:
    """Global index (of 2n) of a device's half-chunk."""
    n = self.ring_size
    if self.layout == 'zigzag':
      return jnp.where(half == 0, device, 2 * n - 1 - device)
    return 2 * device + half

  def _relations(self, me: jax.Array, src: jax.Array, j: jax.Array) -> list:
    """UNSEEN, CAUSAL or FULL for q half 0 and q half 1 against kv half-chunk j of device src's chunk."""
    if self.bidirectional == 'all':
      return [FULL, FULL]
    kv_chunk = self._chunk(src, j)
    return [jnp.sign(self._chunk(me, h) - kv_chunk) + 1 for h in (0, 1)]

  def _pairs(self, me: jax.Array, src: jax.Array, j: jax.Array, halves: list, compute: Callable,
             unseen: Callable) -> list:
    """Per q half: compute(half, causal_offset) under the static mask its relation to kv half-chunk j of device
    src's chunk calls for, or unseen(half) where every key follows every query."""
    results = []
    for half, relation in zip(halves, self._relations(me, src, j)):
      if isinstance(relation, int):
        results.append(compute(half, 0 if relation == CAUSAL else None))
      else:
        results.append(lax.switch(relation, [lambda half=half: unseen(half), lambda half=half: compute(half, 0),
                                             lambda half=half: compute(half, None)]))
    return results

  def _halves(self, x, axis: int) -> list:
    return [lax.slice_in_dim(x, h * self.half, (h + 1) * self.half, axis=axis) for h in (0, 1)]

  def forward(self, q_BKGSE, q_mask: AttentionMask, fold_blocks: Callable) -> tuple:
    K = q_BKGSE.shape[1]
    q_halves = list(zip(self._halves(q_BKGSE, 3), self._halves(q_mask.segment_ids, 1)))
    options = dict(blocks=self.kernel_blocks, interpret=self.interpret)

    def fold(state, k_BKJE, v_BKJE, block_mask, me, src, j):
      out_BKGSE, lse_BKGS, visited = state
      k_BJKE, v_BJKE = k_BKJE.transpose(0, 2, 1, 3), v_BKJE.transpose(0, 2, 1, 3)

      def compute(half, offset):
        q_BKGCE, q_segment_ids_BC = half
        out_BCHE, lse_BCH = pallas.splash_forward_with_lse(
            bw.from_internal(q_BKGCE), k_BJKE, v_BJKE, q_segment_ids_BC, block_mask.segment_ids,
            causal_offset=offset, **options)
        return _grouped(out_BCHE.astype(jnp.float32), K), _grouped(lse_BCH, K)

      def unseen(half):
        return jnp.zeros(half[0].shape, jnp.float32), jnp.full(half[0].shape[:-1], -jnp.inf)

      pairs = self._pairs(me, src, j, q_halves, compute, unseen)
      merged = [pallas.merge(out_h, lse_h, *pair) for out_h, lse_h, pair in
                zip(self._halves(out_BKGSE, 3), self._halves(lse_BKGS, 3), pairs)]
      visited = visited + sum(relation != UNSEEN for relation in self._relations(me, src, j))
      return tuple(jnp.concatenate(parts, axis=3) for parts in zip(*merged)) + (visited,)

    start = (jnp.zeros(q_BKGSE.shape, jnp.float32), jnp.full(q_BKGSE.shape[:-1], -jnp.inf), jnp.int32(0))
    return fold_blocks(start, fold)

  def backward(self, q_BKGSE, q_mask: AttentionMask, do_BKGSE, out_BKGSE, lse_BKGS) -> Callable:
    K = q_BKGSE.shape[1]
    halves = list(zip(*(self._halves(x, 3) for x in (q_BKGSE, do_BKGSE, out_BKGSE, lse_BKGS)),
                      self._halves(q_mask.segment_ids, 1)))
    options = dict(blocks=self.kernel_blocks, interpret=self.interpret)

    def block_grads(grads, k_BKJE, v_BKJE, block_mask, me, src, j):
      dq_BKGSE, dk_BKJE, dv_BKJE = grads
      k_BJKE, v_BJKE = k_BKJE.transpose(0, 2, 1, 3), v_BKJE.transpose(0, 2, 1, 3)

      def compute(half, offset):
        q_BKGCE, do_BKGCE, out_BKGCE, lse_BKGC, q_segment_ids_BC = half
        dq_BCHE, dk_BJKE, dv_BJKE = pallas.splash_backward_with_lse(
            bw.from_internal(q_BKGCE), k_BJKE, v_BJKE, q_segment_ids_BC, block_mask.segment_ids,
            bw.from_internal(out_BKGCE), _ungrouped(lse_BKGC), bw.from_internal(do_BKGCE), causal_offset=offset,
            **options)
        return (_grouped(dq_BCHE.astype(jnp.float32), K), dk_BJKE.transpose(0, 2, 1, 3).astype(jnp.float32),
                dv_BJKE.transpose(0, 2, 1, 3).astype(jnp.float32))

      def unseen(half):
        return (jnp.zeros(half[0].shape, jnp.float32), jnp.zeros(dk_BKJE.shape, jnp.float32),
                jnp.zeros(dv_BKJE.shape, jnp.float32))

      pairs = self._pairs(me, src, j, halves, compute, unseen)
      dq_BKGSE = jnp.concatenate([dq_h + pair[0] for dq_h, pair in zip(self._halves(dq_BKGSE, 3), pairs)], axis=3)
      return dq_BKGSE, dk_BKJE + sum(pair[1] for pair in pairs), dv_BKJE + sum(pair[2] for pair in pairs)

    return block_grads


def _grouped(x_BCH_, K: int) -> jax.Array:
  """[B, C, H, ...] -> [B, K, G, C, ...]: the internal layout of q-shaped outputs and statistics."""
  B, C, H = x_BCH_.shape[:3]
  x = x_BCH_.reshape(B, C, K, H // K, *x_BCH_.shape[3:])
  return jnp.moveaxis(x, 1, 3)


def _ungrouped(x_BKGC) -> jax.Array:
  """[B, K, G, C] -> [B, C, H]."""
  B, K, G, C = x_BKGC.shape
  return x_BKGC.transpose(0, 3, 1, 2).reshape(B, C, K * G)


def _visit_blocks(state, chunk: tuple, step: Callable, ring: Ring, kv_block: int):
  """The forward's messaging: step(state, k_BKJE, v_BKJE, block_mask, me, src, j) for every block j of every chunk.

  Hop t, block j: send block j of the visiting chunk on (it does not wait for this block's compute), fold it in,
  then store the block arriving from the previous device in its place. After the hop the buffer holds the next
  chunk; the only extra memory is one block in flight, not a second chunk.
  """
  me = lax.axis_index(ring.axis)
  blocks = chunk[0].shape[2] // kv_block

  def hop(t, carry, send: bool):
    src = (me - t) % ring.size  # whose chunk is visiting

    def block(j, carry):
      state, chunk = carry
      k_BKJE, v_BKJE, block_mask = _take_block(chunk, j, kv_block)
      arrived = _rotate((k_BKJE, v_BKJE, block_mask), ring) if send else None
      state = step(state, k_BKJE, v_BKJE, block_mask, me, src, j)
      return state, _put_block(chunk, arrived, j, kv_block) if send else chunk

    return lax.fori_loop(0, blocks, block, carry)

  carry = lax.fori_loop(0, ring.size - 1, lambda t, carry: hop(t, carry, send=True), (state, chunk))
  return hop(ring.size - 1, carry, send=False)[0]


def _forward(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring: Ring, hops) -> tuple:
  """Returns (out_BKGSE float32, lse_BKGS, visited block pairs) after every device's k/v chunk has visited.

  The visiting chunks carry kv_mask (the queries' own mask in self-attention, the encoder's in cross-attention).
  """
  fold_blocks = lambda start, fold: _visit_blocks(start, (k_BKSE, v_BKSE, kv_mask), fold, ring, hops.kv_block)
  return hops.forward(q_BKGSE, q_mask, fold_blocks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ring(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, hops):
  out_BKGSE, _, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, hops)
  return out_BKGSE.astype(q_BKGSE.dtype)


def _ring_fwd(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, hops):
  out_BKGSE, lse_BKGS, _ = _forward(q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, ring, hops)
  out_BKGSE = out_BKGSE.astype(q_BKGSE.dtype)
  return out_BKGSE, (q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, out_BKGSE, lse_BKGS)


def _ring_bwd(ring, hops, residuals, do_BKGSE):
  """The forward's ring again, block by block, with each block's dk/dv travelling behind its k/v.

  A block's dk/dv are final for this hop only after its compute, so they are sent one step later, overlapping the
  next block's compute, and land in the slot the block just left (hence at least two kv blocks per chunk). The
  n-th send brings each chunk's gradients home.
  """
  q_BKGSE, k_BKSE, v_BKSE, q_mask, kv_mask, out_BKGSE, lse_BKGS = residuals
  kv_block = hops.kv_block
  blocks = k_BKSE.shape[2] // kv_block
  block_grads = hops.backward(q_BKGSE, q_mask, do_BKGSE, out_BKGSE, lse_BKGS)

  def step(state, k_BKJE, v_BKJE, block_mask, me, src, j):
    dq_BKGSE, grads, done = state
    arrived_done = _rotate(done, ring)  # the previous block's finished dk/dv
    dq_BKGSE, dk_BKJE, dv_BKJE = block_grads((dq_BKGSE, *(bw.take(g, j, kv_block, axis=2) for g in grads)),
                                             k_BKJE, v_BKJE, block_mask, me, src, j)
    grads = _put_block(grads, arrived_done, (j - 1) % blocks, kv_block)
    return dq_BKGSE, grads, (dk_BKJE, dv_BKJE)

  zeros_BKSE = jnp.zeros(k_BKSE.shape, jnp.float32)
  zeros_BKJE = jnp.zeros(k_BKSE.shape[:2] + (kv_block,) + k_BKSE.shape[3:], jnp.float32)
  state = (jnp.zeros(q_BKGSE.shape, jnp.float32), (zeros_BKSE, zeros_BKSE), (zeros_BKJE, zeros_BKJE))
  dq_BKGSE, grads, done = _visit_blocks(state, (k_BKSE, v_BKSE, kv_mask), step, ring, kv_block)
  dk_BKSE, dv_BKSE = _put_block(grads, _rotate(done, ring), blocks - 1, kv_block)
  return dq_BKGSE.astype(q_BKGSE.dtype), dk_BKSE.astype(k_BKSE.dtype), dv_BKSE.astype(v_BKSE.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask: AttentionMask, q_block: int,
                   kv_block: int, kv_mask: AttentionMask | None = None, *, splash: bool = False,
                   interpret: bool = False) -> jax.Array:
  """Global arrays in, global array out, on the mesh set by jax.set_mesh; the axes come from the active rules.

  kv_mask describes the keys when they are another sequence than the queries (cross-attention over a sequence-
  sharded encoder output): its k/v chunks go round the ring like self-attention's. Both sequences must have the
  same length, split alike. splash=True runs each hop through splash attention (SplashHops; the dispatcher checks
  the mask kind and shapes first), interpret=True in Pallas' interpreter."""
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
  local = q_BSHE.shape[1] // ring.size
  if splash:
    half = local // 2
    hops = SplashHops(mask.layout, mask.kind, (bw.effective_block(q_block, half), bw.effective_block(kv_block, half)),
                      interpret, half, ring.size)
  else:
    hops = JaxHops(*block_sizes(local, q_block, kv_block))

  def local_attention(q_BSHE, k_BSKE, v_BSKE, q_mask, kv_mask):
    out_BKGSE = _ring(*bw.to_internal(q_BSHE, k_BSKE, v_BSKE), q_mask, kv_mask, ring, hops)
    return bw.from_internal(out_BKGSE)

  return rules.shard_map_by_names(local_attention, (q_BSHE, k_BSKE, v_BSKE, mask, mask if kv_mask is None else kv_mask),
                                  QKV_MASK_AXES + (('batch', 'length'),), Q_AXES)
