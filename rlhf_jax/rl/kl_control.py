"""The KL coefficient beta of the shaped reward r_t = -beta * KL_t (+ score at the last token): fixed, or
adapted towards a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
section 2.2), a proportional controller on log beta:

  e_t      = clip(KL_t / KL_target - 1, -0.2, 0.2)
  beta_t+1 = beta_t * (1 + K_beta * e_t),     K_beta = n / horizon

where KL_t is the rollout's mean KL per response (nats) and n the number of responses in the rollout. The
clip keeps one unusual batch from moving beta far; the horizon sets how many samples it takes to correct a
given error. A pure function, so it runs inside the jitted PPO update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def update_kl_coef(beta: jax.Array, kl: jax.Array, num_samples: int, *, adaptive: bool, target: float,
                   horizon: int) -> jax.Array:
  """The next iteration's beta: unchanged when not `adaptive`, else the proportional update above."""
  if not adaptive:
    return beta
  error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
  return beta * (1.0 + error * num_samples / horizon)
