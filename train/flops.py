"""Parameter and FLOP accounting of the ringlm transformer, from the config alone (no model is built).

Used by `--mode=estimate`, MFU in the train loop and the scaling-law study, so it must not import jax.
`model_cfg` is `config.model` (or anything with the same attributes, such as `models.transformer.ModelConfig`).

Dims: S sequence, D d_model, H query heads, K kv heads, E head dim, F d_ff, V vocab, L layers.

Two counts of training FLOPs per token:
- `flops_per_token`: matmuls only, 6 FLOPs per weight per token (2 forward, 4 backward) plus the attention
  score/value matmuls. This is the PaLM/MFU convention and the lecture's C = 6ND(1 + s/6d).
- `chinchilla_flops_per_token`: the itemised count of Hoffmann et al. (2022), Appendix F, which also counts the
  embedding lookup as a matmul and the softmax.
"""

import dataclasses

import ml_collections

from configs.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Dims:
  L: int
  D: int
  H: int
  K: int
  E: int
  F: int
  V: int
  tied: bool


def _dims(model_cfg: ml_collections.ConfigDict, vocab_size: int, seq_len: int = 1) -> _Dims:
  """Reads and checks the shape keys, so a bad config fails here with its key instead of as a negative count."""
  if not isinstance(seq_len, int) or seq_len < 1:
    raise ConfigError('data.seq_len', seq_len, 'set a positive integer')
  for key in ('num_layers', 'd_model', 'num_heads', 'num_kv_heads', 'd_ff'):
    value = getattr(model_cfg, key)
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f'model.{key}', value, 'set a positive integer')
  if not isinstance(vocab_size, int) or vocab_size < 1:
    raise ConfigError('data.vocab_size', vocab_size, 'set a positive integer')
  H, K = model_cfg.num_heads, model_cfg.num_kv_heads
  if H % K:
    raise ConfigError('model.num_kv_heads', K, f'must divide model.num_heads={H}')
  head_dim = model_cfg.head_dim
  if not isinstance(head_dim, int) or head_dim < 0:
    raise ConfigError('model.head_dim', head_dim, 'set a positive integer, or 0 for d_model // num_heads')
  E = head_dim or model_cfg.d_model // H
  if E < 1:
    raise ConfigError('model.head_dim', head_dim, 'd_model // num_heads is 0; set head_dim or num_heads <= d_model')
  return _Dims(L=model_cfg.num_layers, D=model_cfg.d_model, H=H, K=K, E=E, F=model_cfg.d_ff, V=vocab_size,
               tied=bool(model_cfg.tie_embeddings))


def _block_matmul_params(d: _Dims) -> int:
  """Weights of one block's matmuls: q, k, v, o projections and the three SwiGLU matrices."""
  return d.D * d.H * d.E + 2 * d.D * d.K * d.E + d.H * d.E * d.D + 3 * d.D * d.F


def count_params(model_cfg: ml_collections.ConfigDict, vocab_size: int) -> dict[str, int]:
  """Parameter counts: `total`, `non_embedding` and `embedding` (= total - non_embedding).

  `non_embedding` excludes the token embedding (V x D) and, when `tie_embeddings` is off, the separate LM head
  (D x V): both are vocabulary tables whose size is set by the tokenizer, not by depth or width. This is the
  convention of Kaplan et al. (2020), under which loss follows cleaner power laws in N; the norm scales are kept in
  it. Chinchilla (Hoffmann et al. 2022) fits on total parameters instead, so `total` is reported too.
  """
  d = _dims(model_cfg, vocab_size)
  embedding = d.V * d.D * (1 if d.tied else 2)
  non_embedding = d.L * (_block_matmul_params(d) + 2 * d.D) + d.D  # two norms per block, one final norm
  return dict(total=embedding + non_embedding, non_embedding=non_embedding, embedding=embedding)


def flops_per_token(model_cfg: ml_collections.ConfigDict, seq_len: int, vocab_size: int,
                    causal_skip: bool = False) -> float:
  """Training (forward + backward) FLOPs per token: 6 N + attention, counting multiply-adds as 2 FLOPs.

  N = L * (D*H*E + 2*D*K*E + H*E*D + 3*D*F) + D*V: every matmul weight, including the LM head (the head matmul runs
  whether or not it is tied to the embedding; the embedding lookup is a gather and costs nothing). Each weight costs
  2 FLOPs per token forward and 4 backward (gradients of the input and of the weight), hence 6 N.

  Attention, per layer and per query token, forward: q.k over S keys for each of H heads is 2*S*H*E, and the
  probability-weighted sum of S values is another 2*S*H*E, so 4*S*H*E. GQA does not change it (every query head
  still meets S keys). Backward is twice forward, so training adds 12*L*S*H*E per token. With `causal_skip`, blocks
  entirely above the diagonal are skipped and a query meets S/2 keys on average, halving it to 6*L*S*H*E (the
  diagonal blocks' extra work is ignored). The default (no skip) is the PaLM convention for MFU and the seed's.

  Relation to the lecture's C = 6ND(1 + s/6d): with H*E = d, K = H and F = 8d/3 (SwiGLU with the parameters of a
  4d GELU MLP) the blocks hold exactly N_b = 12*L*d^2 matmul weights, and 12*L*s*d = 6*N_b * s/(6d), so
  flops_per_token - 6*d*V = 6*N_b*(1 + s/6d) exactly: the seed's form with N = non-embedding N_b, plus the head.
  With `causal_skip` it becomes 6*N_b*(1 + s/12d).
  """
  d = _dims(model_cfg, vocab_size, seq_len)
  matmul_params = d.L * _block_matmul_params(d) + d.D * d.V
  attention = 3 * d.L * 4 * seq_len * d.H * d.E
  return float(6 * matmul_params + (attention / 2 if causal_skip else attention))


def chinchilla_flops_per_token(model_cfg: ml_collections.ConfigDict, seq_len: int, vocab_size: int,
                               causal_skip: bool = False) -> float:
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
  `causal_skip` halves the three S*S terms, as in `flops_per_token`. Unlike it, this counts the embedding and the
  softmax, so it is a few percent higher; the paper reports both counts agree closely with 6ND.
  """
  d = _dims(model_cfg, vocab_size, seq_len)
  S = seq_len
  quadratic = 2 * S * S * d.H * d.E + 3 * d.H * S * S + 2 * S * S * d.H * d.E
  if causal_skip:
    quadratic /= 2
  attention = 2 * S * d.D * (d.H + 2 * d.K) * d.E + quadratic + 2 * S * d.H * d.E * d.D
  dense = 2 * S * 3 * d.D * d.F
  forward = 2 * S * d.V * d.D + d.L * (attention + dense) + 2 * S * d.D * d.V
  return float(3 * forward / S)
