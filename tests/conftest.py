"""Test set-up: 8 fake CPU devices for the sharding tests (must be set before jax is first imported), and
small model configs shared by the tests."""

import os

# RLHF_JAX_TEST_DEVICES=1 runs the full-size (slow) experiments on one device, as they are configured.
DEVICES = int(os.environ.get("RLHF_JAX_TEST_DEVICES", "8"))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from rlhf_jax.config import model_config  # noqa: E402
from rlhf_jax.model.transformer import TransformerConfig  # noqa: E402


def tiny_model(family: str = "gpt2", **overrides) -> TransformerConfig:
  """A 2-layer, 32-wide model of either family (Llama with grouped-query attention)."""
  defaults = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=48,
                  n_kv_heads=2 if family == "llama" else 4)
  defaults.update(overrides)
  return TransformerConfig.from_config(model_config(family, **defaults))


@pytest.fixture(params=["gpt2", "llama"])
def family(request):
  return request.param
