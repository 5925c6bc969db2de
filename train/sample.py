"""Sampling from a trained checkpoint: temperature / top-k decoding of a prompt, one document at a time.

A k/v cache per layer (`Transformer.decode`) makes each token one O(seq_len) step: the prompt is fed through it
token by token, then each sampled token. One compiled program serves every position.

The encoder-decoder reads the prompt as its encoder input (a document's input part, as in training) once, caching
each decoder layer's cross-attention k/v; its decoder starts from the start token (train/objectives/
encoder_decoder.py) and samples the continuation through the same loop.
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs.errors import ConfigError
from configs.sections import SampleConfig
from models.attention import AttentionMask
from train import params as params_lib
from train.runtime import Run
from train.state import StateSetup


def make_decode_step(setup: StateSetup, temperature: float, top_k: int):
  """(params, cache, tokens_B, position, key) -> (the token after tokens_B at `position`, sampled, [B]; cache)."""
  cfg = setup.model_cfg

  def step(params, cache, tokens_B, position, key):
    logits_BV, cache = params_lib.apply(cfg, params).decode(tokens_B[:, None], cache, position)
    if temperature == 0:
      return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32), cache
    if top_k:
      kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
      logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(key, logits_BV / temperature, axis=-1).astype(jnp.int32), cache

  return jax.jit(step, donate_argnums=1)


def sample(setup: StateSetup, params, tokenizer, g: SampleConfig, seq_len: int, seed: int) -> list[str]:
  """Continue `sample.prompt` `sample.num_samples` times; each stops at end of document or the token budget."""
  prompt = np.concatenate([[tokenizer.bos_id], tokenizer.encode(g.prompt)]).astype(np.int32)
  if len(prompt) >= seq_len:
    raise ConfigError('sample.prompt', g.prompt, f'is {len(prompt)} tokens; keep it under data.seq_len={seq_len}')
  decode = make_decode_step(setup, float(g.temperature), int(min(g.top_k, tokenizer.vocab_size)))
  encoder_input = setup.model_cfg.architecture == 'encoder_decoder'
  if encoder_input:
    cache = _encode(setup, params, prompt, g.num_samples, seq_len, tokenizer.pad_id)
    shown, prompt = prompt[1:], np.array([tokenizer.pad_id], np.int32)  # the decoder starts from the start token
  else:
    cache = params_lib.apply(setup.model_cfg, params).init_cache(g.num_samples, seq_len)
    shown = np.zeros(0, np.int32)
  tokens_BS = np.full((g.num_samples, seq_len), tokenizer.pad_id, np.int32)
  tokens_BS[:, :len(prompt)] = prompt
  done_B = np.zeros(g.num_samples, bool)
  key = jax.random.PRNGKey(seed)
  end = min(seq_len, len(prompt) + g.max_new_tokens)
  for position in range(end - 1):  # feeds the token at `position`, predicts the one after it
    next_B, cache = decode(params, cache, tokens_BS[:, position], np.int32(position),
                           jax.random.fold_in(key, position + 1))
    if position + 1 < len(prompt):
      continue  # still reading the prompt into the cache
    next_B = np.asarray(next_B)
    tokens_BS[:, position + 1] = np.where(done_B, tokenizer.pad_id, next_B)
    done_B |= next_B == tokenizer.eos_id
    if done_B.all():
      break
  return [tokenizer.decode(np.concatenate([shown, row[1:]])) for row in tokens_BS]


def _encode(setup: StateSetup, params, prompt: np.ndarray, batch: int, seq_len: int, pad_id: int) -> dict:
  """The encoder-decoder's decoding cache for `prompt` as every row's encoder input (one document, then pads)."""
  tokens_BT = np.full((batch, seq_len), pad_id, np.int32)
  tokens_BT[:, :len(prompt)] = prompt
  segments_BT = (np.arange(seq_len) < len(prompt)).astype(np.int32)[None].repeat(batch, 0)
  mask = AttentionMask(jnp.asarray(segments_BT), jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32),
                                                                   (batch, seq_len)), jnp.ones((batch, seq_len), bool))
  init = jax.jit(lambda p, t, m: params_lib.apply(setup.model_cfg, p).init_cache(t, m, seq_len))
  return init(params, jnp.asarray(tokens_BT), mask)


def sample_checkpoint(run: Run) -> list[str]:
  """`--mode=sample`: samples from the latest checkpoint in the run's workdir."""
  ckpt = run.checkpointer()
  try:
    if ckpt.latest_step() is None:
      raise ConfigError('--workdir', run.workdir, 'no checkpoint to sample from there; train first (--mode=train)')
    with run.runtime.active():
      params = ckpt.restore(run.setup)['params']
      return sample(run.setup, params, run.data.tokenizer, run.config.sample, run.config.data.seq_len,
                    run.config.seed)
  finally:
    ckpt.close()
