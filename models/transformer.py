"""The ringlm decoder: token embedding, pre-norm blocks (RMSNorm, RoPE attention with GQA, SwiGLU), final norm, head.

Pure model code: it knows nothing of training or data. Every parameter carries `logical_axes` metadata (one name
per dimension) that `sharding/` maps onto mesh axes, so the model never mentions a mesh. Params are float32; the
compute dtype comes from the config. Attention goes through `models.attention.attend`, which takes the same mask
description for every path (vanilla, blockwise, ring).

Shape letters as in configs/default.py: B batch, S sequence, T cache length, D d_model, H query heads, K kv heads,
E head dim, F d_ff, V vocab, L layers.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from configs.sections import ModelConfig
from models.attention import AttentionMask, attend, vanilla_attention
from models.mlp import swiglu_ffn
from sharding.rules import constrain


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, axes: tuple[str | None, ...]) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), logical_axes=axes)


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learned scale; statistics in float32 whatever the compute dtype."""

  def __init__(self, dim: int, eps: float):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=('norm',))
    self.eps = eps

  def __call__(self, x_BSD: jax.Array) -> jax.Array:
    x32 = x_BSD.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...]).astype(x_BSD.dtype)


def apply_rope(x: jax.Array, positions_BS: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding of x [B, S, heads, E] (q's H or k's K heads) on the two halves of the head dim, at
  per-document positions (packing restarts them)."""
  half = x.shape[-1] // 2
  inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [E / 2]
  angle = positions_BS.astype(jnp.float32)[..., None] * inv_freq  # [B, S, E / 2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]  # [B, S, 1, E / 2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head attention with grouped kv heads (GQA when num_kv_heads < num_heads)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    D, H, K, E = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    std = cfg.init_std
    self.wq_DHE = _param(rngs, (D, H, E), std, ('embed', 'heads', 'head_dim'))
    self.wk_DKE = _param(rngs, (D, K, E), std, ('embed', 'kv_heads', 'head_dim'))
    self.wv_DKE = _param(rngs, (D, K, E), std, ('embed', 'kv_heads', 'head_dim'))
    self.wo_HED = _param(rngs, (H, E, D), std, ('heads', 'head_dim', 'embed'))
    self.cfg = cfg

  def _project(self, x_BSD: jax.Array, positions_BS: jax.Array) -> tuple:
    """q, k, v with RoPE applied to q and k."""
    cfg, dt = self.cfg, x_BSD.dtype
    q_BSHE = jnp.einsum('bsd,dhe->bshe', x_BSD, self.wq_DHE[...].astype(dt))
    k_BSKE = jnp.einsum('bsd,dke->bske', x_BSD, self.wk_DKE[...].astype(dt))
    v_BSKE = jnp.einsum('bsd,dke->bske', x_BSD, self.wv_DKE[...].astype(dt))
    return (apply_rope(q_BSHE, positions_BS, cfg.rope_theta), apply_rope(k_BSKE, positions_BS, cfg.rope_theta),
            v_BSKE)

  def _out(self, out_BSHE: jax.Array) -> jax.Array:
    return jnp.einsum('bshe,hed->bsd', out_BSHE, self.wo_HED[...].astype(out_BSHE.dtype))

  def __call__(self, x_BSD: jax.Array, mask: AttentionMask) -> jax.Array:
    cfg = self.cfg
    q_BSHE, k_BSKE, v_BSKE = self._project(x_BSD, mask.positions)
    q_BSHE = constrain(q_BSHE, ('batch', 'length', 'heads', None))
    k_BSKE = constrain(k_BSKE, ('batch', 'length', 'kv_heads', None))
    v_BSKE = constrain(v_BSKE, ('batch', 'length', 'kv_heads', None))
    out_BSHE = attend(q_BSHE, k_BSKE, v_BSKE, mask, kind=cfg.attention, q_block=cfg.q_block, kv_block=cfg.kv_block,
                      kernel=cfg.attention_kernel)
    return self._out(out_BSHE)

  def decode(self, x_B1D: jax.Array, cache: tuple, position: jax.Array) -> tuple:
    """One new token at `position` of a single document: its k/v go into cache = (k_BTKE, v_BTKE) there, and it
    attends causally to the cache. Returns (out_B1D, cache)."""
    B, T = x_B1D.shape[0], cache[0].shape[1]
    query = AttentionMask(jnp.ones((B, 1), jnp.int32), jnp.full((B, 1), position, jnp.int32), jnp.zeros((B, 1), bool))
    q_B1HE, k_B1KE, v_B1KE = self._project(x_B1D, query.positions)
    cache = tuple(jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), position, axis=1)
                  for c, new in zip(cache, (k_B1KE, v_B1KE)))
    keys = AttentionMask.causal(B, T)  # key j is visible iff j <= position: the unwritten tail never is
    return self._out(vanilla_attention(q_B1HE, *cache, query, keys)), cache


class MLP(nnx.Module):
  """SwiGLU feed-forward; `ffn='blockwise'` applies it per sequence chunk (BPT) so [B, S, F] never exists whole."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    D, F, std = cfg.d_model, cfg.d_ff, cfg.init_std
    self.w_gate_DF = _param(rngs, (D, F), std, ('embed', 'mlp'))
    self.w_up_DF = _param(rngs, (D, F), std, ('embed', 'mlp'))
    self.w_down_FD = _param(rngs, (F, D), std, ('mlp', 'embed'))
    self.cfg = cfg

  def __call__(self, x_BSD: jax.Array) -> jax.Array:
    dt = x_BSD.dtype
    weights = (self.w_gate_DF[...].astype(dt), self.w_up_DF[...].astype(dt), self.w_down_FD[...].astype(dt))
    return swiglu_ffn(x_BSD, *weights, block=self.cfg.ffn_chunk)


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BSD: jax.Array, mask: AttentionMask) -> jax.Array:
    x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), mask)
    return constrain(x_BSD + self.mlp(self.mlp_norm(x_BSD)), ('batch', 'length', None))

  def decode(self, x_B1D: jax.Array, cache: tuple, position: jax.Array) -> tuple:
    out_B1D, cache = self.attn.decode(self.attn_norm(x_B1D), cache, position)
    x_B1D = x_B1D + out_B1D
    return x_B1D + self.mlp(self.mlp_norm(x_B1D)), cache


# Stacked layers: vmap/scan insert (and remove) a leading 'layers' name in each param's `logical_axes`, so sharding
# rules and the train step see one tuple per leaf whatever the layout.
_LAYERS_AXIS = {nnx.PARTITION_NAME: 'layers', 'logical_axes': 'layers'}


def stack_blocks(cfg: ModelConfig, num_layers: int, make: Callable[[nnx.Rngs], nnx.Module],
                 rngs: nnx.Rngs) -> nnx.Module:
  """num_layers blocks from `make`: a list, or with `scan_layers` one block whose params carry a leading
  [num_layers] axis (XLA compiles the block once instead of num_layers times)."""
  if not cfg.scan_layers:
    return nnx.List([make(rngs) for _ in range(num_layers)])

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=_LAYERS_AXIS)
  def stacked(layer_rngs: nnx.Rngs) -> nnx.Module:
    return make(layer_rngs)

  return stacked(rngs)


def _block(cfg: ModelConfig, x_BSD: jax.Array, block: nnx.Module, *args) -> jax.Array:
  """One block, rematerialised in the backward pass when `cfg.remat` (trades compute for activation memory)."""
  if cfg.remat:
    return nnx.remat(lambda b, x, *a: b(x, *a))(block, x_BSD, *args)
  return block(x_BSD, *args)


def run_blocks(cfg: ModelConfig, blocks: nnx.Module, x_BSD: jax.Array, *args) -> jax.Array:
  """x through every block of `stack_blocks`, each called as block(x, *args)."""
  if cfg.scan_layers:
    scan = nnx.scan(functools.partial(_block, cfg), in_axes=(nnx.Carry, 0) + (None,) * len(args),
                    out_axes=nnx.Carry, transform_metadata=_LAYERS_AXIS)
    return scan(x_BSD, blocks, *args)
  for block in blocks:
    x_BSD = _block(cfg, x_BSD, block, *args)
  return x_BSD


def decode_blocks(cfg: ModelConfig, blocks: nnx.Module, x_B1D: jax.Array, cache, *args) -> tuple:
  """One token through every block's `decode(x, layer_cache, *args)`; every leaf of `cache` has a leading
  [num_layers] axis. Returns (x_B1D, cache)."""
  if cfg.scan_layers:
    def layer(x_B1D, block, layer_cache):
      return block.decode(x_B1D, layer_cache, *args)

    scan = nnx.scan(layer, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0), transform_metadata=_LAYERS_AXIS)
    return scan(x_B1D, blocks, cache)
  for i, block in enumerate(blocks):
    x_B1D, layer_cache = block.decode(x_B1D, jax.tree.map(lambda c: c[i], cache), *args)
    cache = jax.tree.map(lambda c, new: c.at[i].set(new), cache, layer_cache)
  return x_B1D, cache


def embed_tokens(embed_VD: jax.Array, tokens_BS: jax.Array, dtype: str) -> jax.Array:
  """Token embeddings in the compute dtype; the table gathered over fsdp for the lookup, like any weight."""
  x_BSD = jnp.take(constrain(embed_VD, ('vocab', None)), tokens_BS, axis=0).astype(jnp.dtype(dtype))
  return constrain(x_BSD, ('batch', 'length', None))


class LanguageModelHead(nnx.Module):
  """The vocabulary projection shared by both architectures: `embed_VD` transposed when tied, else `head_DV`."""

  def head_weights_DV(self) -> jax.Array:
    """The LM head as [D, V] (the transposed embedding when tied)."""
    w = self.embed_VD[...].T if self.cfg.tie_embeddings else self.head_DV[...]
    return w.astype(jnp.dtype(self.cfg.dtype))

  def logits(self, h_BSD: jax.Array) -> jax.Array:
    return jnp.einsum('bsd,dv->bsv', h_BSD, self.head_weights_DV()).astype(jnp.float32)


class Transformer(LanguageModelHead):
  """Decoder-only LM. `hidden` gives final-norm activations; `logits` projects them onto the vocabulary.

  They are separate so the trainer can compute a blockwise loss without ever holding [B, S, V] logits.
  With `scan_layers`, `blocks` is one Block whose params carry a leading [num_layers] axis, run by a scan
  (`stack_blocks`).
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.embed_VD = _param(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, ('vocab', 'embed'))
    self.blocks = stack_blocks(cfg, cfg.num_layers, lambda r: Block(cfg, r), rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    if not cfg.tie_embeddings:
      self.head_DV = _param(rngs, (cfg.d_model, cfg.vocab_size), cfg.init_std, ('embed', 'vocab'))
    self.cfg = cfg

  def hidden(self, tokens_BS: jax.Array, mask: AttentionMask) -> jax.Array:
    x_BSD = embed_tokens(self.embed_VD[...], tokens_BS, self.cfg.dtype)
    return self.final_norm(run_blocks(self.cfg, self.blocks, x_BSD, mask))

  def __call__(self, tokens_BS: jax.Array, mask: AttentionMask) -> jax.Array:
    return self.logits(self.hidden(tokens_BS, mask))

  def init_cache(self, batch: int, length: int) -> tuple:
    """Empty k/v caches for `decode`: (k, v), each [num_layers, B, length, K, E] in the compute dtype."""
    shape = (self.cfg.num_layers, batch, length, self.cfg.num_kv_heads, self.cfg.head_dim)
    return tuple(jnp.zeros(shape, jnp.dtype(self.cfg.dtype)) for _ in 'kv')  # two buffers: decoding donates both

  def decode(self, tokens_B1: jax.Array, cache: tuple, position: jax.Array) -> tuple:
    """Logits [B, V] after one more token per row at `position` of a single document, reading the k/v cache of
    the tokens before it and writing this one's: O(length) work per token instead of a whole forward pass."""
    x_B1D = jnp.take(self.embed_VD[...], tokens_B1, axis=0).astype(jnp.dtype(self.cfg.dtype))
    x_B1D, cache = decode_blocks(self.cfg, self.blocks, x_B1D, cache, position)
    return self.logits(self.final_norm(x_B1D))[:, 0], cache
