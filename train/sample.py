"""Sampling from a trained checkpoint: temperature / top-k decoding of a prompt, one document at a time.

Each new token re-runs the model on a fixed [num_samples, seq_len] buffer (one compiled program, no KV cache):
O(seq_len) forward passes, fine for the short contexts this repo trains on a CPU and simple enough to trust.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.errors import ConfigError
from models.attention import AttentionMask
from train import params as params_lib
from train.state import StateSetup


def make_decode_step(setup: StateSetup, temperature: float, top_k: int):
  """(params, tokens_BS, length, key) -> next token [B] sampled from the logits at position length - 1."""
  cfg = setup.model_cfg

  def step(params, tokens_BS, length, key):
    B, S = tokens_BS.shape
    mask = AttentionMask.causal(B, S)
    logits_BV = params_lib.apply(cfg, params)(tokens_BS, mask)[:, length - 1]
    if temperature == 0:
      return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if top_k:
      kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
      logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(key, logits_BV / temperature, axis=-1).astype(jnp.int32)

  return jax.jit(step)


def sample(setup: StateSetup, params, tokenizer, config: ml_collections.ConfigDict) -> list[str]:
  """Continue `sample.prompt` `sample.num_samples` times; each stops at end of document or the token budget."""
  g, seq_len = config.sample, config.data.seq_len
  prompt = np.concatenate([[tokenizer.bos_id], tokenizer.encode(g.prompt)]).astype(np.int32)
  if len(prompt) >= seq_len:
    raise ConfigError('sample.prompt', g.prompt, f'is {len(prompt)} tokens; keep it under data.seq_len={seq_len}')
  if g.temperature < 0 or g.top_k < 0 or g.num_samples <= 0 or g.max_new_tokens <= 0:
    raise ConfigError('sample', g.to_dict(), 'temperature and top_k must be >= 0, the counts positive')
  decode = make_decode_step(setup, float(g.temperature), int(min(g.top_k, tokenizer.vocab_size)))
  tokens_BS = np.full((g.num_samples, seq_len), tokenizer.pad_id, np.int32)
  tokens_BS[:, :len(prompt)] = prompt
  done_B = np.zeros(g.num_samples, bool)
  key = jax.random.PRNGKey(config.seed)
  end = min(seq_len, len(prompt) + g.max_new_tokens)
  for length in range(len(prompt), end):
    next_B = np.asarray(decode(params, tokens_BS, length, jax.random.fold_in(key, length)))
    tokens_BS[:, length] = np.where(done_B, tokenizer.pad_id, next_B)
    done_B |= next_B == tokenizer.eos_id
    if done_B.all():
      break
  return [tokenizer.decode(row[1:]) for row in tokens_BS]
