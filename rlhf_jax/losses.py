"""Pure loss functions. Each returns (sum, denominator, aux) so that averages stay exact when a batch is
split into microbatches or over hosts: add the sums, add the denominators, divide once at the end.

Shapes: B batch, T length, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """log p(target) at every position, (B, T) float32, via a float32 log-softmax."""
  logits_btv = logits_btv.astype(jnp.float32)
  picked_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  return picked_bt - jax.nn.logsumexp(logits_btv, axis=-1)


def lm_loss(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array):
  """Masked next-token cross-entropy. Returns (sum of -log p over counted tokens, number counted, aux).

  aux holds `correct`, the number of counted tokens whose arg-max prediction is the target.
  """
  mask_bt = mask_bt.astype(jnp.float32)
  nll_bt = -token_log_probs(logits_btv, targets_bt)
  correct = jnp.sum((jnp.argmax(logits_btv, axis=-1) == targets_bt) * mask_bt)
  return jnp.sum(nll_bt * mask_bt), jnp.sum(mask_bt), {"correct": correct}
