"""Small heads on top of the trunk's hidden states.

Shapes: B batch, T length, D model width, V vocabulary.

- `LMHead`: untied output projection (D, V), no bias (Llama). Tied models use the embedding table instead.
- `ValueHead`: a scalar per position, zero-initialised so a fresh critic predicts 0 for every state and the
  first PPO updates are not thrown about by random values (lm-human-preferences does the same).
- `RewardHead`: a scalar per position, `gain * (h . w + extra) + bias`. The gain and bias are separate
  parameters so reward normalisation can set the scale and offset of the scores (mean 0, std 1 on SFT
  samples) after training without touching the projection (Ziegler et al. 2019, lm-human-preferences).
  `extra` is an optional per-position term inside the gain: the reward model's likelihood term (below).
- `response_log_likelihood`: the running mean log-likelihood of a response under the model's own LM head,
  the term a reward model with `reward_likelihood > 0` adds to its head (see Transformer).

All heads compute in float32: they are tiny, and their outputs feed losses directly.
"""

import flax.linen as nn
import jax.numpy as jnp

from rlhf_jax.losses import token_log_probs


class LMHead(nn.Module):
  vocab_size: int
  init_std: float = 0.02
  dtype: str = "float32"

  @nn.compact
  def __call__(self, hidden_btd):
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ("embed", "vocab")), (hidden_btd.shape[-1], self.vocab_size))
    # One 2-D matmul over flattened rows: XLA's CPU backend runs the 3-D contraction at about half the speed.
    lead, d = hidden_btd.shape[:-1], hidden_btd.shape[-1]
    logits = jnp.dot(hidden_btd.reshape(-1, d).astype(self.dtype), kernel.astype(self.dtype),
                     preferred_element_type=jnp.float32)
    if self.has_variable("params", "kernel_scale"):  # int8 weights (model/quant.py): one scale per token.
      logits = logits * self.get_variable("params", "kernel_scale")
    return logits.reshape(*lead, self.vocab_size)


class ValueHead(nn.Module):

  @nn.compact
  def __call__(self, hidden_btd):
    d = hidden_btd.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), ())
    return jnp.einsum("btd,d->bt", hidden_btd.astype(jnp.float32), kernel) + bias


class RewardHead(nn.Module):

  @nn.compact
  def __call__(self, hidden_btd, extra_bt=None):
    d = hidden_btd.shape[-1]
    # std 1/sqrt(D+1) keeps the initial scores O(1) for unit-scale hidden states (lm-human-preferences).
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / (d + 1) ** 0.5), ("embed",)), (d,))
    gain = self.param("gain", nn.with_logical_partitioning(nn.initializers.ones, ()), ())
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), ())
    score_bt = jnp.einsum("btd,d->bt", hidden_btd.astype(jnp.float32), kernel)
    if extra_bt is not None:
      score_bt = score_bt + extra_bt
    return gain * score_bt + bias


def response_log_likelihood(logits_btv, tokens_bt, start_b):
  """L (B, T): L[b, t] = mean over s in [start_b, t] of log p(tokens[b, s] | tokens[b, :s]), the logits at
  s - 1 predicting token s; 0 for t < start_b. Read at a response's last token (its end of turn), it is the
  mean log-likelihood of the response and its closing token given the prompt."""
  token_lp_bt = token_log_probs(logits_btv[:, :-1], tokens_bt[:, 1:])
  t = tokens_bt.shape[1]
  inside_bt = (jnp.arange(1, t)[None, :] >= start_b[:, None]).astype(jnp.float32)
  total_bt = jnp.cumsum(token_lp_bt * inside_bt, axis=1)
  count_bt = jnp.cumsum(inside_bt, axis=1)
  mean_bt = total_bt / jnp.maximum(count_bt, 1.0)
  return jnp.pad(mean_bt, ((0, 0), (1, 0)))
