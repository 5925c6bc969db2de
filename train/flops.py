"""Parameter and FLOP accounting of the ringlm transformer, from the config alone (no model is built).

Used by `--mode=estimate`, MFU in the trainer and the scaling-law study, so it must not import jax. The model is
a checked `ModelConfig` (its `vocab_size` is `data.vocab_size`).

Dims: S sequence, D d_model, H query heads, K kv heads, E head dim, F d_ff, V vocab, L layers.

Two counts of training FLOPs per token:
- `flops_per_token`: matmuls only, 6 FLOPs per weight per token (2 forward, 4 backward) plus the attention
  score/value matmuls over `keys` keys per query. With every query meeting all S keys (the default) this is the
  PaLM convention of *model* FLOPs, the same for every attention path, which `perf/mfu` uses, and the lecture's
  C = 6ND(1 + s/6d). With the keys an attention path actually computes (train/block_pairs.py: all S for vanilla,
  the block pairs it does not skip for blockwise and ring, measured on the run's batches) it is the *executed*
  count that compute budgets (compare, scaling) and `perf/mfu_executed` use.
- `chinchilla_flops_per_token`: the itemised count of Hoffmann et al. (2022), Appendix F, which also counts the
  embedding lookup as a matmul and the softmax.
"""

from configs.sections import ModelConfig


def _attention_matmul_params(m: ModelConfig) -> int:
  """Weights of one attention's matmuls: q, k, v, o projections."""
  D, H, K, E = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim
  return D * H * E + 2 * D * K * E + H * E * D


def _block_matmul_params(m: ModelConfig) -> int:
  """Weights of one block's matmuls: q, k, v, o projections and the three SwiGLU matrices."""
  return _attention_matmul_params(m) + 3 * m.d_model * m.d_ff


def _stacks(m: ModelConfig) -> tuple[int, int, int]:
  """(blocks' matmul weights, norm scales, attentions per token slot) of all blocks and final norms.

  The encoder-decoder's encoder and decoder rows are each as long as a training row (train/objectives/
  encoder_decoder.py), so every training token is one encoder slot and one decoder slot: both stacks count in
  full per token, with one attention in each encoder block and two (self and cross, over as many keys) in each
  decoder block.
  """
  if m.architecture == 'decoder':
    return m.num_layers * _block_matmul_params(m), (2 * m.num_layers + 1) * m.d_model, m.num_layers
  Le, Ld = m.num_encoder_layers, m.num_decoder_layers
  matmul = Le * _block_matmul_params(m) + Ld * (_block_matmul_params(m) + _attention_matmul_params(m))
  return matmul, (2 * Le + 1 + 3 * Ld + 1) * m.d_model, Le + 2 * Ld


def count_params(m: ModelConfig) -> dict[str, int]:
  """Parameter counts: `total`, `non_embedding` and `embedding` (= total - non_embedding).

  `non_embedding` excludes the token embedding (V x D) and, when `tie_embeddings` is off, the separate LM head
  (D x V): both are vocabulary tables whose size is set by the tokenizer, not by depth or width. This is the
  convention of Kaplan et al. (2020), under which loss follows cleaner power laws in N; the norm scales are kept in
  it. Chinchilla (Hoffmann et al. 2022) fits on total parameters instead, so `total` is reported too.
  """
  tables = 1 + (not m.tie_embeddings) + (m.architecture == 'encoder_decoder' and not m.share_embeddings)
  embedding = m.vocab_size * m.d_model * tables
  matmul, norms, _ = _stacks(m)
  non_embedding = matmul + norms  # 2 norms per block (3 in a decoder block of the encoder-decoder), 1 per stack
  return dict(total=embedding + non_embedding, non_embedding=non_embedding, embedding=embedding)


def flops_per_token(m: ModelConfig, seq_len: int, keys: float | None = None) -> float:
  """Training (forward + backward) FLOPs per token: 6 N + attention, counting multiply-adds as 2 FLOPs.

  N = L * (D*H*E + 2*D*K*E + H*E*D + 3*D*F) + D*V: every matmul weight, including the LM head (the head matmul runs
  whether or not it is tied to the embedding; the embedding lookup is a gather and costs nothing). Each weight costs
  2 FLOPs per token forward and 4 backward (gradients of the input and of the weight), hence 6 N.

  Attention, per layer and per query token, forward: q.k over `keys` keys (default S) for each of H heads is
  2*keys*H*E, and the probability-weighted sum of as many values is another 2*keys*H*E. GQA does not change it
  (every query head still meets every key). Backward is twice forward, so training adds 12*L*keys*H*E per token.
  keys = S is the PaLM convention for MFU and the seed's; a path that skips hidden blocks executes fewer.

  Relation to the lecture's C = 6ND(1 + s/6d): with H*E = d, K = H and F = 8d/3 (SwiGLU with the parameters of a
  4d GELU MLP) the blocks hold exactly N_b = 12*L*d^2 matmul weights, and 12*L*s*d = 6*N_b * s/(6d), so
  flops_per_token - 6*d*V = 6*N_b*(1 + s/6d) exactly: the seed's form with N = non-embedding N_b, plus the head.

  Encoder-decoder (`_stacks`): N = Le*block + Ld*(block + cross-attention q, k, v, o) + D*V and Le + 2*Ld
  attentions over S keys, per training token (one encoder and one decoder slot each). The decoder's self- and
  cross-attention both count S keys, like the decoder's attention.
  """
  blocks, _, attentions = _stacks(m)
  matmul_params = blocks + m.d_model * m.vocab_size
  attention = 3 * attentions * 4 * (seq_len if keys is None else keys) * m.num_heads * m.head_dim
  return float(6 * matmul_params + attention)


def chinchilla_flops_per_token(m: ModelConfig, seq_len: int, keys: float | None = None) -> float:
  """Training FLOPs per token itemised as in Chinchilla, Appendix F; backward = 2 x forward.

  Forward FLOPs per sequence of length S (Chinchilla's terms, adapted: k and v projections use K heads for GQA, and
  the dense block has SwiGLU's three D x F matrices where the paper's MLP had two):
    embeddings                  2*S*V*D                (the lookup counted as a one-hot matmul)
    per layer, attention:
      q, k, v projections       2*S*D*(H + 2K)*E
      k @ q logits              2*S*S*H*E
      softmax                   3*H*S*S
      softmax @ v reduction     2*S*S*H*E
      final linear              2*S*H*E*D
    per layer, dense block      2*S*3*D*F
    final logits                2*S*D*V
  The three S*S terms take S * keys with `keys` keys per query, as in `flops_per_token`. Unlike it, this counts the
  embedding and the softmax, so it is a few percent higher; the paper reports both counts agree closely with 6ND.
  """
  S, D, H, K, E, F, V, L = (seq_len, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.d_ff, m.vocab_size,
                             m.num_layers)
  T = S if keys is None else keys
  quadratic = 2 * S * T * H * E + 3 * H * S * T + 2 * S * T * H * E
  attention = 2 * S * D * (H + 2 * K) * E + quadratic + 2 * S * H * E * D
  dense = 2 * S * 3 * D * F
  forward = 2 * S * V * D + L * (attention + dense) + 2 * S * D * V
  return float(3 * forward / S)

