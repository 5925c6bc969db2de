"""AdamW with linear warmup + cosine decay, global-norm clipping, and weight decay masked by parameter kind."""

import jax
import optax

from configs.sections import TrainConfig


def learning_rate_schedule(t: TrainConfig) -> optax.Schedule:
  """Warmup is capped at the run length, so a short run (--config.train.steps=20) still decays."""
  warmup = min(t.warmup_steps, t.steps - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=warmup, decay_steps=t.steps,
      end_value=t.learning_rate * t.end_lr_fraction)


def decay_mask(logical_axes_tree, decay_embeddings_and_norms: bool):
  """True where weight decay applies: matrices, not norm scales or the token embedding (unless asked)."""
  def decays(axes: tuple) -> bool:
    axes = axes[1:] if axes[:1] == ('layers',) else axes  # scanned layers stack params on a leading axis
    is_norm = axes == ('norm',)
    is_embedding = axes == ('vocab', 'embed')
    return decay_embeddings_and_norms or not (is_norm or is_embedding)

  return jax.tree.map(decays, logical_axes_tree, is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(t: TrainConfig, logical_axes_tree) -> optax.GradientTransformation:
  adamw = optax.adamw(
      learning_rate=learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
      mask=decay_mask(logical_axes_tree, t.decay_embeddings_and_norms))
  if t.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw)
  return adamw
