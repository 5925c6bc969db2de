"""Fused attention through JAX's Pallas kernels: splash attention on TPU, the Triton flash kernel `mha` on GPU.

Both kernels mask by token index (a static causal or full mask) and-ed with segment-id equality, so they serve
ringlm's mask rule only with tokens in natural order and positions counting up within each document: then "key
not after query" is "index j <= i". Which rule a batch follows is static (the objective says it), described by
MaskKind; the arrays stay data. Bidirectional keys map to:
  none    causal mask + segment ids (causal LM, packed or not).
  all     full mask + segment ids (masked LM).
  prefix  two kernel calls, each query row read from one: prefix queries from a full mask whose segment ids keep
          only prefix tokens (they see exactly their document's prefix), the others from the causal call (they see
          every earlier token of their document, the prefix included). Costs a full plus a causal pass.
Neither kernel can take a per-example mask any other way: splash's masks (CausalMask, NumpyMask, MultiHeadMask)
are static per head and shared by the batch, and the GPU kernel has only `causal` and segment ids.

Every query sees at least itself under the rule, so no row is fully masked. Padding (segment 0) only ever sees
padding; pad rows may differ from the rule when pads' positions do not count up (the pipeline gives them 0), which
nothing reads: no loss weight and no real query touches them.

The ring-hop entry points (splash only) return and take the log-sum-exp an online softmax merges with.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as triton_attention
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel

from models.attention.blockwise import effective_block
from models.attention.mask import AttentionMask

PLATFORMS = ('tpu', 'gpu')  # the kernel families; 'cpu' runs either only with interpret=True
BIDIRECTIONAL = ('none', 'prefix', 'all')
LANES = 128  # splash tiles the kv axis (and q, in the backward) in multiples of the TPU's 128 lanes
NOT_PREFIX = -1  # segment id no real or padding token has: keys nobody in the prefix call may see
UNSEEN = splash_kernel.DEFAULT_MASK_VALUE / 2  # splash's lse of a row that saw no key is near its mask value


@dataclasses.dataclass(frozen=True)
class MaskKind:
  """What the kernels must know about the mask at trace time; the mask's arrays stay data."""
  bidirectional: str = 'none'  # none: causal; prefix: a leading span of each document; all: every real token
  packed: bool = True  # segment ids vary within a row (several documents or padding); False skips comparing them
  natural_order: bool = True  # tokens in sequence order (not a zig-zag ring layout)


def unsupported_reason(platform: str, kind: MaskKind, seq_len: int, q_block: int, kv_block: int) -> str | None:
  """None when the platform's Pallas kernel serves this mask and these shapes; else a one-line reason."""
  if platform not in PLATFORMS:
    return (f'no Pallas attention kernel for platform {platform!r}: splash runs on TPU, the Triton mha on GPU '
            '(CPU runs them only in interpret mode, for tests)')
  if kind.bidirectional not in BIDIRECTIONAL:
    return f'unknown bidirectional kind {kind.bidirectional!r}; use one of {BIDIRECTIONAL}'
  if not kind.natural_order:
    return 'the Pallas kernels mask by token index, so tokens must be in natural order (not a zig-zag layout)'
  q_block, kv_block = effective_block(q_block, seq_len), effective_block(kv_block, seq_len)
  if seq_len % q_block or seq_len % kv_block:
    return f'q_block={q_block} and kv_block={kv_block} must divide the sequence length {seq_len}'
  if platform == 'tpu' and (q_block % LANES or kv_block % LANES):
    return f'splash attention needs q_block={q_block} and kv_block={kv_block} to be multiples of {LANES}'
  if platform == 'gpu' and any(b < 16 or b & (b - 1) for b in (q_block, kv_block)):
    return f'the Triton kernel needs q_block={q_block} and kv_block={kv_block} to be powers of two >= 16'
  return None


def pallas_attention(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask: AttentionMask, *,
                     kind: MaskKind = MaskKind(), platform: str, interpret: bool = False, q_block: int = 128,
                     kv_block: int = 128) -> jax.Array:
  """Scaled dot-product attention with GQA through the platform's kernel, output in q's dtype.

  Gradients are the kernels' own VJPs. interpret=True runs the kernel in Pallas' interpreter (any backend).
  """
  S = q_BSHE.shape[1]
  reason = unsupported_reason(platform, kind, S, q_block, kv_block)
  if reason:
    raise ValueError(reason)
  blocks = effective_block(q_block, S), effective_block(kv_block, S)
  call = functools.partial(_splash if platform == 'tpu' else _triton, q_BSHE, k_BSKE, v_BSKE, blocks=blocks,
                           interpret=interpret)
  segment_ids_BS = mask.segment_ids if kind.packed or kind.bidirectional == 'prefix' else None
  if kind.bidirectional == 'none':
    return call(segment_ids_BS, causal=True)
  if kind.bidirectional == 'all':
    return call(segment_ids_BS, causal=False)
  prefix_segments_BS = jnp.where(mask.bidirectional, segment_ids_BS, NOT_PREFIX)
  in_prefix_BS11 = mask.bidirectional[:, :, None, None]
  return jnp.where(in_prefix_BS11, call(prefix_segments_BS, causal=False), call(segment_ids_BS, causal=True))


def _block_sizes(q_block: int, kv_block: int) -> splash.BlockSizes:
  """One q and one kv block length for the forward and both backward kernels."""
  return splash.BlockSizes(block_q=q_block, block_kv=kv_block, block_kv_compute=kv_block, block_q_dkv=q_block,
                           block_kv_dkv=kv_block, block_kv_dkv_compute=kv_block, block_q_dq=q_block,
                           block_kv_dq=kv_block)


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_len: int, kv_len: int, causal_offset: int | None, blocks: tuple,
                   save_residuals: bool, interpret: bool) -> splash_kernel.SplashAttentionKernel:
  """A kernel for one static mask: causal (query i sees key j <= i + offset) or, for offset None, full.

  Built at compile-time-eval so the cached mask tables are constants, never tracers of the jit that asked first.
  """
  shape = (q_len, kv_len)
  head_mask = splash.FullMask(shape) if causal_offset is None else splash.CausalMask(shape, offset=causal_offset)
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha_single_device(splash.MultiHeadMask([head_mask] * heads),
                                                block_sizes=_block_sizes(*blocks), save_residuals=save_residuals,
                                                interpret=interpret)


def _splash_operands(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array) -> tuple:
  """[B, S, H, E] -> head-major [B, H, S, E]; q pre-scaled, since splash applies no softmax scale."""
  scale = q_BSHE.shape[-1]**-0.5
  q_BHSE = (q_BSHE.astype(jnp.float32) * scale).astype(q_BSHE.dtype).transpose(0, 2, 1, 3)
  return q_BHSE, k_BTKE.transpose(0, 2, 1, 3), v_BTKE.transpose(0, 2, 1, 3)


def _segments(q_segment_ids_BS: jax.Array | None, kv_segment_ids_BT: jax.Array | None):
  if q_segment_ids_BS is None:
    return None
  return splash.SegmentIds(q_segment_ids_BS, kv_segment_ids_BT)


def _splash(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, segment_ids_BS: jax.Array | None, *,
            causal: bool, blocks: tuple, interpret: bool) -> jax.Array:
  """Splash over the batch (vmap); GQA native: query head h reads kv head h // (H // K)."""
  B, S, H, E = q_BSHE.shape
  kernel = _splash_kernel(H, S, S, 0 if causal else None, blocks, False, interpret)
  out_BHSE = jax.vmap(kernel)(*_splash_operands(q_BSHE, k_BSKE, v_BSKE), _segments(segment_ids_BS, segment_ids_BS))
  return out_BHSE.transpose(0, 2, 1, 3)


def _triton(q_BSHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, segment_ids_BS: jax.Array | None, *,
            causal: bool, blocks: tuple, interpret: bool) -> jax.Array:
  """The Triton kernel wants as many kv heads as query heads: repeat them (their gradients sum back)."""
  G = q_BSHE.shape[2] // k_BSKE.shape[2]
  q_block, kv_block = blocks
  backward = min(blocks)  # the fused backward needs as many q blocks as kv blocks
  block_sizes = triton_attention.BlockSizes(block_q=q_block, block_k=kv_block, block_q_dkv=backward,
                                            block_kv_dkv=backward, block_q_dq=backward, block_kv_dq=backward)
  return triton_attention.mha(q_BSHE, jnp.repeat(k_BSKE, G, axis=2), jnp.repeat(v_BSKE, G, axis=2), segment_ids_BS,
                              sm_scale=q_BSHE.shape[-1]**-0.5, causal=causal, block_sizes=block_sizes,
                              interpret=interpret)


def splash_forward_with_lse(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array,
                            q_segment_ids_BS: jax.Array | None, kv_segment_ids_BT: jax.Array | None, *,
                            causal_offset: int | None, blocks: tuple, interpret: bool = False) -> tuple:
  """One ring hop's forward: (out_BSHE normalised in q's dtype, lse_BSH float32) of q against this k/v chunk.

  The static mask is causal with query i seeing key j <= i + causal_offset (chunk-local indices), or full for
  None; and-ed with segment-id equality. Rows that see no key of the chunk get out 0 and lse -inf (splash itself
  leaves NaN where it skipped every block of a row, and a mean of v near its mask value elsewhere).
  Not differentiable: a ring's own VJP calls splash_backward_with_lse with the merged out and lse.
  """
  S, T, H = q_BSHE.shape[1], k_BTKE.shape[1], q_BSHE.shape[2]
  kernel = _splash_kernel(H, S, T, causal_offset, blocks, True, interpret)
  out_BHSE, (lse_BHS,) = jax.vmap(kernel)(*_splash_operands(q_BSHE, k_BTKE, v_BTKE),
                                          _segments(q_segment_ids_BS, kv_segment_ids_BT))
  seen_BHS = lse_BHS > UNSEEN
  out_BHSE = jnp.where(seen_BHS[..., None], out_BHSE, 0).astype(q_BSHE.dtype)
  return out_BHSE.transpose(0, 2, 1, 3), jnp.where(seen_BHS, lse_BHS, -jnp.inf).transpose(0, 2, 1)


def splash_backward_with_lse(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array,
                             q_segment_ids_BS: jax.Array | None, kv_segment_ids_BT: jax.Array | None,
                             out_BSHE: jax.Array, lse_BSH: jax.Array, do_BSHE: jax.Array, *,
                             causal_offset: int | None, blocks: tuple, interpret: bool = False) -> tuple:
  """One ring hop's backward: (dq_BSHE, dk_BTKE, dv_BTKE) of this chunk's share, given the merged (all-hop) out
  and lse, so the hop's probabilities are the global softmax's. Summing dq over hops and sending dk/dv home gives
  the full gradient.

  Splash exposes no public backward that takes outside residuals: this calls its custom VJP's backward rule
  (splash_attention_kernel._splash_attention_bwd, private) with our out and lse in place of the hop's own.
  """
  S, T, H = q_BSHE.shape[1], k_BTKE.shape[1], q_BSHE.shape[2]
  kernel = _splash_kernel(H, S, T, causal_offset, blocks, False, interpret)
  options = kernel.kwargs

  def one_example(q_HSE, k_KTE, v_KTE, segment_ids, out_HSE, lse_HS, do_HSE):
    residuals = (q_HSE, k_KTE, v_KTE, segment_ids, None, out_HSE, lse_HS, kernel.dq_mask_info,
                 kernel.dkv_mask_info)
    grads = splash_kernel._splash_attention_bwd(  # pylint: disable=protected-access
        False, options['mask_value'], options['is_mqa'], options['block_sizes'], None, options['mask_function'],
        options['attn_logits_soft_cap'], interpret, residuals, do_HSE)
    return grads[3:6]

  head_major = lambda x: x.transpose(0, 2, 1, 3)
  dq_BHSE, dk_BKTE, dv_BKTE = jax.vmap(one_example)(
      *_splash_operands(q_BSHE, k_BTKE, v_BTKE), _segments(q_segment_ids_BS, kv_segment_ids_BT),
      head_major(out_BSHE), lse_BSH.transpose(0, 2, 1), head_major(do_BSHE))
  scale = q_BSHE.shape[-1]**-0.5  # the kernel saw q * scale
  dq_BSHE = (head_major(dq_BHSE).astype(jnp.float32) * scale).astype(q_BSHE.dtype)
  return dq_BSHE, head_major(dk_BKTE).astype(k_BTKE.dtype), head_major(dv_BKTE).astype(v_BTKE.dtype)


def merge(out_a_BSHE: jax.Array, lse_a_BSH: jax.Array, out_b_BSHE: jax.Array, lse_b_BSH: jax.Array) -> tuple:
  """Two partial softmaxes over disjoint key sets -> (out_BSHE float32, lse_BSH); -inf lse means no key seen."""
  lse_BSH = jnp.logaddexp(lse_a_BSH, lse_b_BSH)
  lse_safe_BSH = jnp.where(jnp.isfinite(lse_BSH), lse_BSH, 0.0)
  weight = lambda lse: jnp.exp(lse - lse_safe_BSH)[..., None]
  out_BSHE = weight(lse_a_BSH) * out_a_BSHE.astype(jnp.float32) + weight(lse_b_BSH) * out_b_BSHE.astype(jnp.float32)
  return out_BSHE, lse_BSH
