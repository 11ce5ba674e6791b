"""The model, optimizer and batches shared by the multi-host worker and the single-process reference."""

import jax
import numpy as np

from rlhf_jax.batches import LMBatch
from rlhf_jax.config import base_config, model_config
from rlhf_jax.model.transformer import Transformer, TransformerConfig
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps


def build(mesh):
  """(sharded train state, jitted step) for a tiny Llama-style model on `mesh`."""
  cfg = TransformerConfig.from_config(model_config(
      "llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=32))
  model = Transformer(cfg)
  tx, schedule = state_lib.make_optimizer(base_config().optim, total_steps=10)
  state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0))
  step = steps.jit_step(steps.make_lm_step(model, tx, schedule), shardings, global_batch(0), mesh)
  return state, step


def global_batch(i: int) -> LMBatch:
  rng = np.random.default_rng(100 + i)
  return LMBatch.from_sequences(rng.integers(0, 64, (8, 17)))
