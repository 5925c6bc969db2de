"""Attention entry point: `attend` picks the path named by `model.attention` and the kernel named by
`model.attention_kernel`; every path takes the same mask.

Shapes: q_BSHE, k_BSKE, v_BSKE (B batch, S length, H query heads, K kv heads, E head dim); query head h uses
kv head h // (H // K). The mask is never materialised as [S, S] outside the vanilla path.

Kernels. `jax` runs the path's own pure-JAX code. `pallas` runs blockwise attention through the platform's fused
kernel instead (splash on TPU, the Triton flash kernel on GPU; models/attention/pallas.py), one kernel call per
device shard (shard_map: the partitioner cannot split a custom call), and ring attention's hops through splash
(ring.SplashHops; TPU only, causal and all-bidirectional masks). `auto` takes the fused kernel wherever
`choose` finds it serves the path, the mask's static kind (AttentionMask.kind) and the shapes, and the pure-JAX
path elsewhere. The platform is the one the program is compiled for (the active mesh's devices), so a TPU program
compiled ahead of time on a CPU machine gets splash; `interpret_as` runs a platform's kernels in Pallas'
interpreter instead, so tests and `--interpret` benchmarks exercise them on CPU.
"""

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator

import jax

from models.attention import pallas
from models.attention.blockwise import blockwise_attention
from models.attention.mask import AttentionMask
from models.attention.ring import Q_AXES, QKV_MASK_AXES, ring_attention
from models.attention.vanilla import vanilla_attention
from sharding import rules

# Keyed by configs.sections.ATTENTION_KINDS (a test keeps them equal).
PATHS: dict[str, Callable[..., jax.Array]] = {
    'vanilla': lambda q, k, v, mask, q_block, kv_block, kv_mask=None: vanilla_attention(q, k, v, mask, kv_mask),
    'blockwise': blockwise_attention,
    'ring': ring_attention,
}
KERNELS = ('auto', 'jax', 'pallas')  # configs.sections.ATTENTION_KERNELS (a test keeps them equal)
_DEVICE_PLATFORMS = {'cuda': 'gpu', 'rocm': 'gpu'}  # device platform names -> the kernel family serving them
_INTERPRETED: contextvars.ContextVar[str | None] = contextvars.ContextVar('ringlm_interpreted', default=None)


@contextlib.contextmanager
def interpret_as(platform: str) -> Iterator[None]:
  """While tracing inside this block, use `platform`'s Pallas kernels ('tpu' or 'gpu') run by Pallas' interpreter
  on whatever devices there are: slow, for tests and `--interpret` benchmarks, never for training."""
  token = _INTERPRETED.set(platform)
  try:
    yield
  finally:
    _INTERPRETED.reset(token)


def target_platform() -> str:
  """The platform whose kernels a trace uses: `interpret_as`'s, else the active mesh's devices', else JAX's default."""
  interpreted = _INTERPRETED.get()
  if interpreted:
    return interpreted
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  platform = device.platform if device is not None else jax.default_backend()
  return _DEVICE_PLATFORMS.get(platform, platform)


def unserved(path: str, mask_kind: str | None, platform: str, seq_len: int, q_block: int, kv_block: int,
             ring_size: int = 1) -> str | None:
  """None when the fused kernel can replace `path` for masks of `mask_kind`; else a one-line reason. A ring of
  `ring_size` devices calls the kernel on half-chunks of seq_len / (2 ring_size) tokens."""
  if path == 'vanilla':
    return ('model.attention=vanilla is the [S, S] reference; the fused kernels replace blockwise and ring '
            'attention (set model.attention=blockwise)')
  if path == 'ring':
    if platform != 'tpu':
      return (f'ring attention\'s fused hops run splash (TPU); on {platform!r} the pure-JAX hops serve it (the GPU '
              f'Triton kernel reads query and key segment ids from one array, so a hop between two chunks could not '
              f'separate their documents)')
    if mask_kind not in ('none', 'all'):
      return (f'ring attention\'s fused hops serve causal and all-bidirectional masks (AttentionMask.kind none or '
              f'all), not {mask_kind}: a prefix needs two kernel calls per pair; the pure-JAX hops serve it')
    if seq_len % (2 * ring_size):
      return f'the sequence length {seq_len} must split into 2 x {ring_size} ring half-chunks'
    half = seq_len // (2 * ring_size)
    reason = pallas.unsupported_reason(platform, pallas.MaskKind(mask_kind), half, q_block, kv_block)
    return reason and f'ring half-chunks of data.seq_len / (2 x {ring_size}) = {half} tokens: {reason}'
  if mask_kind is None:
    return ('the mask promises no static bidirectional pattern (AttentionMask.kind none, prefix or all) that a '
            'fused kernel could serve')
  return pallas.unsupported_reason(platform, pallas.MaskKind(mask_kind), seq_len, q_block, kv_block)


def choose(setting: str, path: str, mask_kind: str | None, platform: str, seq_len: int, q_block: int,
           kv_block: int, ring_size: int = 1) -> tuple[str, str]:
  """('pallas' or 'jax', why) for one attention call: auto takes Pallas where it can; pallas insists (ValueError
  with the one-line reason where it cannot)."""
  if setting not in KERNELS:
    raise ValueError(f'unknown attention kernel {setting!r}; use one of {", ".join(KERNELS)}')
  if setting == 'jax':
    return 'jax', 'model.attention_kernel=jax'
  reason = unserved(path, mask_kind, platform, seq_len, q_block, kv_block, ring_size)
  if reason is None:
    return 'pallas', f'the {platform} Pallas kernel serves {path} attention with {mask_kind} bidirectional keys'
  if setting == 'pallas':
    raise ValueError(reason)
  return 'jax', reason


def attend(q_BSHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array, mask: AttentionMask, *, kind: str = 'vanilla',
           q_block: int = 128, kv_block: int = 128, kv_mask: AttentionMask | None = None,
           kernel: str = 'jax') -> jax.Array:
  """Scaled dot-product attention with GQA; softmax statistics in float32, output in q's dtype.

  Self-attention by default; with kv_mask the keys are another sequence described by it (cross-attention: query i
  sees key j under the same rule, e.g. every key of its segment when kv_mask marks them all bidirectional; always the
  pure-JAX kernels). A query that sees no key gets output 0 on every path."""
  H, K = q_BSHE.shape[2], k_BTKE.shape[2]
  if H % K:
    raise ValueError(f'num_heads={H} must be a multiple of num_kv_heads={K}')
  if kind not in PATHS:
    raise ValueError(f'unknown attention kind {kind!r}; use one of {tuple(PATHS)}')
  platform = target_platform()
  mesh = jax.sharding.get_abstract_mesh()
  sizes = {} if kind != 'ring' or mesh.empty else dict(mesh.shape)  # a ring without its axis: ring_attention says so
  ring_size = math.prod(sizes.get(a, 1) for a in rules.mesh_axes('length'))
  chosen = choose(kernel, kind, mask.kind, platform, q_BSHE.shape[1], q_block, kv_block, ring_size)[0]
  if kv_mask is not None or chosen == 'jax':
    return PATHS[kind](q_BSHE, k_BTKE, v_BTKE, mask, q_block, kv_block, kv_mask)
  if kind == 'ring':
    return ring_attention(q_BSHE, k_BTKE, v_BTKE, mask, q_block, kv_block, splash=True,
                          interpret=_INTERPRETED.get() is not None)

  def fused(q_BSHE, k_BSKE, v_BSKE, mask):
    return pallas.pallas_attention(q_BSHE, k_BSKE, v_BSKE, mask, kind=pallas.MaskKind(mask.kind), platform=platform,
                                   interpret=_INTERPRETED.get() is not None, q_block=q_block, kv_block=kv_block)

  if mesh.empty or 'sequence' not in mesh.axis_names:  # not a ringlm mesh: the arrays are whole
    return fused(q_BSHE, k_BTKE, v_BTKE, mask)
  return rules.shard_map_by_names(fused, (q_BSHE, k_BTKE, v_BTKE, mask), QKV_MASK_AXES, Q_AXES)
