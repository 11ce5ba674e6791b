"""From a rollout to PPO's targets: KL-shaped per-token rewards, GAE, masked whitening. Pure functions.

Shapes: B responses, N response tokens (columns of the sampler's output). `mask_bn` is 1 for the tokens a
response really has (up to and including its end-of-turn token) and 0 after; every output is 0 where the
mask is 0.

The per-token reward of InstructGPT / Ziegler et al. 2019 (and the Fudan seed article's derivation):

  r_t = -beta * KL_t                       at every response token t,
  r_T += score                             at the response's last token T (the reward model's score),

with KL_t an estimate of KL(pi || pi_ref) at token t from the sampled token's log-probabilities
(Schulman, "Approximating KL divergence", 2020): with log-ratio d = log pi(y_t) - log pi_ref(y_t),

  k1 = d                  unbiased, can be negative per token;
  k3 = (e^-d - 1) + d     unbiased, never negative, lower variance when the policies are close.

GAE(gamma, lambda) (Schulman et al. 2016) with the episode ending after the last token:

  delta_t = r_t + gamma * V_{t+1} - V_t,   V_{T+1} = 0
  A_t     = delta_t + gamma * lambda * A_{t+1},   A_{T+1} = 0
  returns = A + V   (the value targets)

computed by one reverse `lax.scan` over the columns.

Score normalisation by running statistics (`ppo.reward_norm`: the score reparameterisation -- normalise,
then clip -- of PPO-max, Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO"; OpenRLHF
normalises rewards by running moments too): the count, mean and sum of squared deviations M2 of every score
seen so far, merged batch by batch with the parallel update of Chan, Golub and LeVeque (1979, "Updating
formulae and a pairwise algorithm for computing sample variances"), for a batch b of n_b scores with mean
m_b and M2_b = sum (x - m_b)^2:

  n = n_a + n_b,   d = m_b - m_a,   m = m_a + d * n_b / n,   M2 = M2_a + M2_b + d^2 * n_a * n_b / n,

which, unlike summing x and x^2, loses no precision when the mean is far from 0. var = M2 / n, the
population variance (np.var).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


def k1_estimate(d_bn: jax.Array) -> jax.Array:
  """k1 = d, from the log-ratio d (module docstring)."""
  return d_bn


def k3_estimate(d_bn: jax.Array) -> jax.Array:
  """k3 = (e^-d - 1) + d, from the log-ratio d (module docstring)."""
  return jnp.expm1(-d_bn) + d_bn


# The `ppo.kl_estimator` variants: a variant is one entry here (config.py accepts exactly these names).
KL_ESTIMATORS = {"k1": k1_estimate, "k3": k3_estimate}


def kl_estimate(log_probs_bn: jax.Array, ref_log_probs_bn: jax.Array, mask_bn: jax.Array,
                kind: str = "k1") -> jax.Array:
  """Per-token estimate of KL(pi || pi_ref) at the sampled tokens, (B, N), 0 where masked."""
  if kind not in KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")
  return KL_ESTIMATORS[kind]((log_probs_bn - ref_log_probs_bn).astype(jnp.float32)) * mask_bn


def last_token_index(mask_bn: jax.Array) -> jax.Array:
  """(B,) the column of each response's last token (0 for an empty response)."""
  n = mask_bn.shape[-1]
  return jnp.maximum(jnp.max(jnp.where(mask_bn > 0, jnp.arange(n), -1), axis=-1), 0)


def shaped_rewards(scores_b: jax.Array, kl_bn: jax.Array, mask_bn: jax.Array,
                   beta: float | jax.Array) -> jax.Array:
  """(B, N) per-token rewards: -beta * KL at every token, plus the score at each response's last token."""
  last_bn = jax.nn.one_hot(last_token_index(mask_bn), mask_bn.shape[-1], dtype=jnp.float32)
  return (-beta * kl_bn + scores_b[:, None].astype(jnp.float32) * last_bn) * mask_bn


def clip_scores(scores_b: jax.Array, clip: float) -> jax.Array:
  """(B,) the scores clipped to [-clip, clip]; unchanged when clip is 0 (`ppo.reward_clip`)."""
  return jnp.clip(scores_b, -clip, clip) if clip > 0 else scores_b


@flax.struct.dataclass
class RunningMoments:
  """Running statistics of a stream of scalars: count () (float, so that n_a * n_b cannot overflow), mean (),
  m2 () the sum of squared deviations from the mean. Scalars of one float dtype (float32 in the PPO state;
  float64 works where x64 is enabled)."""
  count: jax.Array
  mean: jax.Array
  m2: jax.Array

  @property
  def var(self) -> jax.Array:
    """The population variance of everything seen (0 before anything has been)."""
    return self.m2 / jnp.maximum(self.count, 1.0)

  @property
  def std(self) -> jax.Array:
    return jnp.sqrt(self.var)


def init_running_moments(dtype=jnp.float32) -> RunningMoments:
  zero = jnp.zeros((), dtype)
  return RunningMoments(count=zero, mean=zero, m2=zero)


def update_running_moments(moments: RunningMoments, x_b: jax.Array) -> RunningMoments:
  """`moments` with the batch x_b (B,) merged in, by Chan et al.'s parallel update (module docstring)."""
  dtype = moments.mean.dtype
  x_b = x_b.astype(dtype)
  n_b = jnp.asarray(x_b.size, dtype)
  mean_b = jnp.mean(x_b)
  m2_b = jnp.sum(jnp.square(x_b - mean_b))
  n = moments.count + n_b
  delta = mean_b - moments.mean
  return RunningMoments(count=n, mean=moments.mean + delta * n_b / n,
                        m2=moments.m2 + m2_b + jnp.square(delta) * moments.count * n_b / n)


def normalize_scores(scores_b: jax.Array, moments: RunningMoments, eps: float = 1e-8) -> jax.Array:
  """(B,) (s - mean) / sqrt(var + eps) by the running statistics (which should include these scores)."""
  return (scores_b.astype(jnp.float32) - moments.mean) * jax.lax.rsqrt(moments.var + eps)


def leave_one_out(scores_b: jax.Array, group_size: int) -> jax.Array:
  """(B,) each score minus the mean of the other scores of its group: rows k*g .. k*g + g - 1 (g =
  `group_size`) answer the same prompt. A baseline per prompt (the RLOO estimator of Kool et al. 2019): what
  is left says how much better this answer is than the policy's other answers to the same prompt, so the
  prompts' differing difficulty no longer reaches the advantages."""
  if group_size < 2:
    raise ValueError(f"a leave-one-out baseline needs groups of at least 2 responses, got {group_size}")
  groups = scores_b.astype(jnp.float32).reshape(-1, group_size)
  others = (jnp.sum(groups, axis=1, keepdims=True) - groups) / (group_size - 1)
  return (groups - others).reshape(scores_b.shape)


def group_std(scores_b: jax.Array, group_size: int) -> jax.Array:
  """(B,) the standard deviation (ddof 1) of the scores of each row's group of `group_size` answers to one
  prompt (rows as for `leave_one_out`). GRPO (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2) divides each
  answer's advantage by it, so that every prompt whose answers differ at all pushes the policy equally hard,
  however small the differences between its answers are (`ppo.group_std`)."""
  if group_size < 2:
    raise ValueError(f"a group's standard deviation needs groups of at least 2 responses, got {group_size}")
  groups = scores_b.astype(jnp.float32).reshape(-1, group_size)
  std = jnp.std(groups, axis=1, keepdims=True, ddof=1)
  return jnp.broadcast_to(std, groups.shape).reshape(scores_b.shape)


def gae(rewards_bn: jax.Array, values_bn: jax.Array, mask_bn: jax.Array, gamma: float = 1.0,
        lam: float = 0.95, skip_bn: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(advantages, returns), each (B, N), by a reverse scan; masked tokens are outside the episode.

  `skip_bn` (B, N): columns that are no step of the policy -- a tool's tokens inside a response (`tools`): the
  environment wrote them, so the token before them is followed by the token after them, and they pass the
  next value and advantage back unchanged (their own advantage and return are 0). Skipped columns must be
  masked."""
  mask_bn = mask_bn.astype(jnp.float32)
  skip_bn = jnp.zeros_like(mask_bn) if skip_bn is None else skip_bn.astype(jnp.float32)
  rewards_nb, values_nb, mask_nb, skip_nb = (x.astype(jnp.float32).T
                                             for x in (rewards_bn, values_bn * mask_bn, mask_bn, skip_bn))

  def step(carry, inputs):
    next_value_b, next_advantage_b = carry
    reward_b, value_b, m_b, skip_b = inputs
    delta_b = reward_b + gamma * next_value_b - value_b
    advantage_b = (delta_b + gamma * lam * next_advantage_b) * m_b
    # A masked column passes nothing back: the episode ended before it. A skipped one passes its carry on.
    keep = lambda new_b, old_b: jnp.where(skip_b > 0, old_b, new_b)
    return (keep(value_b * m_b, next_value_b), keep(advantage_b, next_advantage_b)), advantage_b

  zeros_b = jnp.zeros(rewards_nb.shape[1], jnp.float32)
  _, advantages_nb = jax.lax.scan(step, (zeros_b, zeros_b), (rewards_nb, values_nb, mask_nb, skip_nb),
                                  reverse=True)
  advantages_bn = advantages_nb.T
  return advantages_bn, (advantages_bn + values_bn) * mask_bn


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries (the mean is added back when `shift_mean` is False); 0 where
  masked. The variance is the population variance of the masked entries."""
  mask = mask.astype(jnp.float32)
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * mask
