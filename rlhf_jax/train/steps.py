"""Step builders: `make_*_step(...)` returns `step(state, batch, rng) -> (state, metrics)`, a pure function;
`jit_step` compiles it once with shardings and donation (big_vision's and MaxText's shape of things).

The rng passed to a step is the run's root key; the step folds in its own step number, so a resumed run
draws exactly the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import losses
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import LMBatch
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.train.state import TrainState

# A loss maps (model outputs' logits, batch) to (sum, denominator, aux) — see losses.py.
LossFn = Callable[[jax.Array, Any], tuple[jax.Array, jax.Array, dict]]


def lm_batch_loss(logits_btv: jax.Array, batch: LMBatch):
  return losses.lm_loss(logits_btv, batch.targets, batch.loss_mask)


def lm_loss_and_grads(model: Transformer, params: Any, batch: LMBatch, rng: jax.Array,
                      loss_fn: LossFn = lm_batch_loss):
  """(loss sum, denominator, aux, gradient of the loss sum) for one (micro)batch."""
  def objective(p):
    out = model.apply({"params": p}, batch.tokens, batch.positions, batch.segment_ids, rngs={"dropout": rng})
    total, count, aux = loss_fn(out.logits, batch)
    return total, (count, aux)
  (total, (count, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
  return total, count, aux, grads


def make_lm_step(model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule,
                 grad_accum_steps: int = 1, loss_fn: LossFn = lm_batch_loss):
  """The pretraining / SFT step: masked next-token loss, optional gradient accumulation, AdamW.

  Gradients of the summed loss are added over microbatches and divided once by the total number of counted
  tokens, so the update equals the one on the whole batch whatever `grad_accum_steps` is.
  """
  train_model = model.clone(deterministic=model.config.dropout == 0.0)

  def step(state: TrainState, batch: LMBatch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum_steps == 1:
      total, count, aux, grads = lm_loss_and_grads(train_model, state.params, batch, rng, loss_fn)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]),
                           batch)

      def accumulate(carry, inputs):
        i, mb = inputs
        out = lm_loss_and_grads(train_model, state.params, mb, jax.random.fold_in(rng, i), loss_fn)
        return jax.tree.map(jnp.add, carry, out), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          lambda: lm_loss_and_grads(train_model, state.params, jax.tree.map(lambda x: x[0], micro), rng,
                                    loss_fn)))
      (total, count, aux, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": total / denom, "train/accuracy": aux["correct"] / denom, "train/tokens": count,
               "train/grad_norm": optax.tree.norm(grads), "train/lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def jit_step(step, state_shardings: Any, batch_example: Any, mesh: Mesh, rules=mesh_lib.RULES):
  """Compiles `step(state, batch, rng)` once: state in and out with its shardings (donated), batch rows over
  the data axes, metrics replicated. The returned function enters the mesh and rules while it traces."""
  batch_shardings = jax.tree.map(lambda x: mesh_lib.batch_sharding(mesh, x.ndim), batch_example)
  replicated = mesh_lib.replicated(mesh)
  compiled = jax.jit(step, in_shardings=(state_shardings, batch_shardings, replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  def run(state, batch, rng):
    with mesh_lib.activate(mesh, rules):
      return compiled(state, batch, rng)

  run.jitted = compiled
  return run
