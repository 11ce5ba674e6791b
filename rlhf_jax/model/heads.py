"""Small heads on top of the trunk's hidden states.

Shapes: B batch, T length, D model width, V vocabulary.

- `LMHead`: untied output projection (D, V), no bias (Llama). Tied models use the embedding table instead.
- `ValueHead`: a scalar per position, zero-initialised so a fresh critic predicts 0 for every state and the
  first PPO updates are not thrown about by random values (lm-human-preferences does the same).
- `RewardHead`: a scalar per position, `gain * (h . w) + bias`. The gain and bias are separate parameters
  so reward normalisation can set the scale and offset of the scores (mean 0, std 1 on SFT samples) after
  training without touching the projection (Ziegler et al. 2019, lm-human-preferences).

All heads compute in float32: they are tiny, and their outputs feed losses directly.
"""

import flax.linen as nn
import jax.numpy as jnp


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
  def __call__(self, hidden_btd):
    d = hidden_btd.shape[-1]
    # std 1/sqrt(D+1) keeps the initial scores O(1) for unit-scale hidden states (lm-human-preferences).
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / (d + 1) ** 0.5), ("embed",)), (d,))
    gain = self.param("gain", nn.with_logical_partitioning(nn.initializers.ones, ()), ())
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), ())
    return gain * jnp.einsum("btd,d->bt", hidden_btd.astype(jnp.float32), kernel) + bias
