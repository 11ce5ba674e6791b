"""Step builders: `make_*_step(...)` returns `step(state, batch, rng) -> (state, metrics)`, a pure function;
`jit_step` compiles it once with shardings and donation (big_vision's and MaxText's shape of things).

The rng passed to a step is the run's root key; the step folds in its own step number, so a resumed run
draws exactly the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import losses
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import LMBatch, RMBatch
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.train.state import TrainState

# A loss maps (model outputs' logits, batch) to (sum, denominator, aux) — see losses.py.
LossFn = Callable[[jax.Array, Any], tuple[jax.Array, jax.Array, dict]]


def lm_batch_loss(logits_btv: jax.Array, batch: LMBatch):
  return losses.lm_loss(logits_btv, batch.targets, batch.loss_mask)


# An objective maps (params, batch, rng) to (loss sum, denominator, aux sums): see losses.py.
Objective = Callable[[Any, Any, jax.Array], tuple[jax.Array, jax.Array, dict]]


def lm_objective(model: Transformer, loss_fn: LossFn = lm_batch_loss) -> Objective:
  """The next-token objective of pretraining and SFT on an LMBatch."""
  def objective(params, batch: LMBatch, rng: jax.Array):
    out = model.apply({"params": params}, batch.tokens, batch.positions, batch.segment_ids, rngs={"dropout": rng})
    return loss_fn(out.logits, batch)
  return objective


def lm_loss_and_grads(model: Transformer, params: Any, batch: LMBatch, rng: jax.Array,
                      loss_fn: LossFn = lm_batch_loss):
  """(loss sum, denominator, aux, gradient of the loss sum) for one (micro)batch."""
  return _sum_and_grads(lm_objective(model, loss_fn), params, batch, rng)


def _sum_and_grads(objective: Objective, params: Any, batch: Any, rng: jax.Array):
  def total(p):
    loss_sum, count, aux = objective(p, batch, rng)
    return loss_sum, (count, aux)
  (loss_sum, (count, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
  return loss_sum, count, aux, grads


def make_step(objective: Objective, tx: optax.GradientTransformation, schedule: optax.Schedule,
              grad_accum_steps: int = 1, count_name: str = "tokens"):
  """A training step for any objective: optional gradient accumulation, then the optimizer.

  Gradients of the summed loss are added over microbatches and divided once by the total denominator, so
  the update equals the one on the whole batch whatever `grad_accum_steps` is. Metrics: train/loss, every
  aux sum divided by the denominator as train/<name> (aux "correct" becomes train/accuracy), the
  denominator as train/<count_name>, the gradient norm and the learning rate.
  """
  def step(state: TrainState, batch: Any, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum_steps == 1:
      total, count, aux, grads = _sum_and_grads(objective, state.params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]),
                           batch)

      def accumulate(carry, inputs):
        i, mb = inputs
        out = _sum_and_grads(objective, state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, out), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          lambda: _sum_and_grads(objective, state.params, jax.tree.map(lambda x: x[0], micro), rng)))
      (total, count, aux, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": total / denom, f"train/{count_name}": count,
               **{f"train/{'accuracy' if k == 'correct' else k}": v / denom for k, v in aux.items()},
               "train/grad_norm": optax.tree.norm(grads), "train/lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_lm_step(model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule,
                 grad_accum_steps: int = 1, loss_fn: LossFn = lm_batch_loss):
  """The pretraining / SFT step: masked next-token loss, optional gradient accumulation, AdamW."""
  train_model = model.clone(deterministic=model.config.dropout == 0.0)
  return make_step(lm_objective(train_model, loss_fn), tx, schedule, grad_accum_steps)


def response_rewards(model: Transformer, params: Any, tokens_bkt: jax.Array, rng: Optional[jax.Array] = None):
  """The reward head at every position of every response, (B, K, T): the K responses of each prompt are
  rows of one (B*K, T) forward pass, so each response goes through the model exactly once."""
  b, k, t = tokens_bkt.shape
  rngs = None if rng is None else {"dropout": rng}
  out = model.apply({"params": params}, tokens_bkt.reshape(b * k, t), rngs=rngs)
  return out.rewards.reshape(b, k, t)


def rm_objective(model: Transformer, loss: str = "pairwise", margin: float = 1.0,
                 threshold: float = 1.0) -> Objective:
  """The reward model's objective on an RMBatch, for the `reward.loss` variants (see losses.py):
  pairwise and reward_token: InstructGPT's loss on the last token's score (the data decides whether that
  token is the end of turn or an appended reward token); margin: the same with a margin per rank gap;
  per_token: the aligned per-token loss of the Fudan seed article."""
  def objective(params, batch: RMBatch, rng: jax.Array):
    rewards_bkt = response_rewards(model, params, batch.tokens, rng)
    if loss == "per_token":
      return losses.per_token_ranking_loss(rewards_bkt, batch.start, batch.end, batch.ranks, threshold)
    scores_bk = jnp.take_along_axis(rewards_bkt, batch.end[..., None], axis=-1)[..., 0]
    return losses.ranking_loss(scores_bk, batch.ranks, margin if loss == "margin" else 0.0)
  return objective


def make_rm_step(model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule,
                 grad_accum_steps: int = 1, loss: str = "pairwise", margin: float = 1.0, threshold: float = 1.0):
  """The reward-model step: one forward per response, the loss averaged over each prompt's pairs."""
  train_model = model.clone(deterministic=model.config.dropout == 0.0)
  return make_step(rm_objective(train_model, loss, margin, threshold), tx, schedule, grad_accum_steps,
                   count_name="prompts")


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
