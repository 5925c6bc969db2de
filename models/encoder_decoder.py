"""The encoder-decoder LM: a bidirectional encoder and a causal decoder that cross-attends to the encoder's output.

Both stacks are the decoder's blocks (pre-norm RMSNorm, RoPE self-attention with GQA, SwiGLU); a decoder block adds
a cross-attention sublayer between its self-attention and its MLP (T5's layout). Cross-attention has no RoPE:
positions of two different sequences do not compare, and T5 gives cross-attention no position signal either.

Which keys a query sees is the one mask rule of models/attention for every attention: the encoder's mask marks its
real tokens bidirectional (each sees its whole document); the decoder's has no bidirectional keys (causal); cross-
attention takes the decoder's mask for queries and the encoder's for keys, so a decoder token sees every encoder
token of its own segment (document) and nothing of other packed documents. Every path (vanilla, blockwise, ring)
runs every attention.

Sampling encodes the prompt once (`init_cache`: the encoder's output projected to each layer's cross-attention
k/v), then `decode` adds one decoder token at a time against a self-attention k/v cache.
Shape letters as in configs/default.py; S is the decoder's length, T the encoder's.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from configs.sections import ModelConfig
from models.attention import AttentionMask, attend, vanilla_attention
from models.transformer import (MLP, Attention, Block, LanguageModelHead, RMSNorm, _param, decode_blocks,
                                embed_tokens, run_blocks, stack_blocks)
from sharding.rules import constrain


class CrossAttention(Attention):
  """Decoder queries over the encoder's keys and values: the same projections as self-attention, without RoPE."""

  def keys_values(self, enc_BTD: jax.Array) -> tuple:
    """(k_BTKE, v_BTKE) of the encoder's output: computed once per sequence (and once per sample when decoding)."""
    dt = enc_BTD.dtype
    k_BTKE = jnp.einsum('btd,dke->btke', enc_BTD, self.wk_DKE[...].astype(dt))
    v_BTKE = jnp.einsum('btd,dke->btke', enc_BTD, self.wv_DKE[...].astype(dt))
    return (constrain(k_BTKE, ('batch', 'length', 'kv_heads', None)),
            constrain(v_BTKE, ('batch', 'length', 'kv_heads', None)))

  def _query(self, x_BSD: jax.Array) -> jax.Array:
    q_BSHE = jnp.einsum('bsd,dhe->bshe', x_BSD, self.wq_DHE[...].astype(x_BSD.dtype))
    return constrain(q_BSHE, ('batch', 'length', 'heads', None))

  def __call__(self, x_BSD: jax.Array, mask: AttentionMask, enc_BTD: jax.Array,
               enc_mask: AttentionMask) -> jax.Array:
    cfg = self.cfg
    out_BSHE = attend(self._query(x_BSD), *self.keys_values(enc_BTD), mask, kind=cfg.attention, q_block=cfg.q_block,
                      kv_block=cfg.kv_block, kv_mask=enc_mask)
    return self._out(out_BSHE)

  def decode(self, x_B1D: jax.Array, kv: tuple, enc_mask: AttentionMask) -> jax.Array:
    """One decoder token of a single document (segment 1) against the cached encoder k/v."""
    B = x_B1D.shape[0]
    query = AttentionMask(jnp.ones((B, 1), jnp.int32), jnp.zeros((B, 1), jnp.int32), jnp.zeros((B, 1), bool))
    return self._out(vanilla_attention(self._query(x_B1D), *kv, query, enc_mask))


class DecoderBlock(nnx.Module):
  """Pre-norm residual block: causal self-attention, cross-attention to the encoder, SwiGLU."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.attn = Attention(cfg, rngs)
    self.cross_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.cross = CrossAttention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BSD: jax.Array, mask: AttentionMask, enc_BTD: jax.Array,
               enc_mask: AttentionMask) -> jax.Array:
    x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), mask)
    x_BSD = x_BSD + self.cross(self.cross_norm(x_BSD), mask, enc_BTD, enc_mask)
    return constrain(x_BSD + self.mlp(self.mlp_norm(x_BSD)), ('batch', 'length', None))

  def decode(self, x_B1D: jax.Array, layer_cache: tuple, position: jax.Array, enc_mask: AttentionMask) -> tuple:
    """layer_cache = (k, v, cross_k, cross_v): this layer's self-attention cache and its encoder k/v."""
    k, v, cross_k, cross_v = layer_cache
    out_B1D, (k, v) = self.attn.decode(self.attn_norm(x_B1D), (k, v), position)
    x_B1D = x_B1D + out_B1D
    x_B1D = x_B1D + self.cross.decode(self.cross_norm(x_B1D), (cross_k, cross_v), enc_mask)
    return x_B1D + self.mlp(self.mlp_norm(x_B1D)), (k, v, cross_k, cross_v)


class EncoderDecoder(LanguageModelHead):
  """Encoder-decoder LM: `hidden` gives the decoder's final-norm activations; the LM head is the decoder's.

  With `share_embeddings` the encoder reads the decoder's token embedding `embed_VD`, else its own
  `encoder_embed_VD`. `tie_embeddings` ties the head to `embed_VD` either way.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.embed_VD = _param(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, ('vocab', 'embed'))
    if not cfg.share_embeddings:
      self.encoder_embed_VD = _param(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, ('vocab', 'embed'))
    self.encoder_blocks = stack_blocks(cfg, cfg.num_encoder_layers, lambda r: Block(cfg, r), rngs)
    self.encoder_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.decoder_blocks = stack_blocks(cfg, cfg.num_decoder_layers, lambda r: DecoderBlock(cfg, r), rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    if not cfg.tie_embeddings:
      self.head_DV = _param(rngs, (cfg.d_model, cfg.vocab_size), cfg.init_std, ('embed', 'vocab'))
    self.cfg = cfg

  def encode(self, tokens_BT: jax.Array, mask: AttentionMask) -> jax.Array:
    """The encoder's final-norm output [B, T, D]."""
    table_VD = (self.embed_VD if self.cfg.share_embeddings else self.encoder_embed_VD)[...]
    x_BTD = embed_tokens(table_VD, tokens_BT, self.cfg.dtype)
    return self.encoder_norm(run_blocks(self.cfg, self.encoder_blocks, x_BTD, mask))

  def hidden(self, tokens_BS: jax.Array, mask: AttentionMask, encoder_tokens_BT: jax.Array,
             encoder_mask: AttentionMask) -> jax.Array:
    enc_BTD = self.encode(encoder_tokens_BT, encoder_mask)
    x_BSD = embed_tokens(self.embed_VD[...], tokens_BS, self.cfg.dtype)
    return self.final_norm(run_blocks(self.cfg, self.decoder_blocks, x_BSD, mask, enc_BTD, encoder_mask))

  def __call__(self, tokens_BS: jax.Array, mask: AttentionMask, encoder_tokens_BT: jax.Array,
               encoder_mask: AttentionMask) -> jax.Array:
    return self.logits(self.hidden(tokens_BS, mask, encoder_tokens_BT, encoder_mask))

  def init_cache(self, encoder_tokens_BT: jax.Array, encoder_mask: AttentionMask, length: int) -> dict:
    """Encode once: {'layers': (k, v, cross_k, cross_v), each [num_decoder_layers, B, ., K, E] (empty self-attention
    caches of `length`, the encoder's k/v per layer), 'encoder_mask': encoder_mask}."""
    cfg = self.cfg
    enc_BTD = self.encode(encoder_tokens_BT, encoder_mask)
    if cfg.scan_layers:
      cross = nnx.vmap(lambda block: block.cross.keys_values(enc_BTD), in_axes=0, out_axes=0)(self.decoder_blocks)
    else:
      kvs = [block.cross.keys_values(enc_BTD) for block in self.decoder_blocks]
      cross = tuple(jnp.stack(x) for x in zip(*kvs))
    shape = (cfg.num_decoder_layers, encoder_tokens_BT.shape[0], length, cfg.num_kv_heads, cfg.head_dim)
    empty = tuple(jnp.zeros(shape, jnp.dtype(cfg.dtype)) for _ in 'kv')
    return {'layers': (*empty, *cross), 'encoder_mask': encoder_mask}

  def decode(self, tokens_B1: jax.Array, cache: dict, position: jax.Array) -> tuple:
    """Logits [B, V] after one more decoder token per row at `position` of a single document."""
    x_B1D = jnp.take(self.embed_VD[...], tokens_B1, axis=0).astype(jnp.dtype(self.cfg.dtype))
    x_B1D, layers = decode_blocks(self.cfg, self.decoder_blocks, x_B1D, cache['layers'], position,
                                  cache['encoder_mask'])
    return self.logits(self.final_norm(x_B1D))[:, 0], {'layers': layers, 'encoder_mask': cache['encoder_mask']}
