"""The whole PPO iteration as one compiled program, K iterations a call, vmapped over seeds.

  iteration(state, batch, rng, frozen):            one PPO iteration, a pure function
    rng_i  = fold_in(rng, state.step)
    sample = generate(policy, prompts, fold_in(rng_i, 0))     the KV-cache decode; its early exit (every row
                                                              ended) is a while_loop inside the program
    rollout = collect(actor, critic, frozen ref, frozen RM)   policy, reference, critic and RM in one pass
    state, metrics = update(state, rollout, ptx, fold_in(rng_i, 1))   targets, GAE, epochs x minibatches
  call(state, batches, rng, frozen):               K iterations under one lax.scan over K stacked batches;
                                                   with N seeds, jax.vmap of it over the replicas

The keys are those of stages/ppo.py's Python iteration (`make_ppo_step`), so a compiled call gives its rollout
and parameters to float rounding: the two differ only in where XLA fuses. The host sends the K batches of
prompts (and PPO-ptx rows) in one transfer, read from the same grain pipeline as the Python iteration (a
pure function of the iteration number, so a resumed run sees the same prompts), and receives the K
iterations' metrics once, when the training loop logs. What needs the host stays in the Python iteration:
the gold scorer (reward="gold", the `ppo/gold` training metric), iterated reward-model rounds and the
per-phase timings.

Seeds (`train.seeds` N): every leaf of the state, the batches and the root key has a leading axis of N
(batches: after the K axis); the frozen reference and reward model are shared, not copied. Replica i is,
to float rounding, the single run with seed `config.seed + i` -- its prompts, its keys -- from the same SFT
model and reward model.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.rl.rollout import strip_value


def make_ppo_iteration(generate: Callable, collect: Callable, update: Callable, *, kl_in_loss: bool,
                       mesh=None, lora_actor: bool = False, critic_base: Callable | None = None) -> Callable:
  """`iteration(state, batch, rng, frozen) -> (state, metrics)`: one PPO iteration on the reward model's
  scores, pure and traceable. `generate`, `collect` and `update` are `build_ppo`'s (`update` the unjitted
  `steps.make_ppo_update`); `frozen` is {"ref": the reference's params, "rm": the reward model's}, passed as
  an argument so that they enter the program as buffers, not as constants; `kl_in_loss` (ppo.kl_loss_coef
  > 0) gives the update the reference's params. `batch`: "prompt" (B, P), "prompt_mask" (B, P) and, with
  PPO-ptx, "ptx" (an LMBatch); other keys are ignored. With `mesh`, the rollout's rows are laid out over its
  data axes for the update, as the Python iteration lays them out (`steps.jit_ppo_update`). `lora_actor`: the
  state holds the actor's adapters, whose frozen base is the reference (model/lora.py); the update then always
  gets the reference's params. `critic_base`: for a LoRA critic, `critic_base(rm params)` is its frozen trunk
  (the reward model's), on which the state's adapters and value head sit."""

  def iteration(state, batch, rng, frozen):
    rng = jax.random.fold_in(rng, state.step)
    actor_params = state.params["actor"]
    if lora_actor:
      actor_params = lora_lib.join(frozen["ref"], actor_params)
    sample = generate(strip_value(actor_params), batch["prompt"], batch["prompt_mask"], jax.random.fold_in(rng, 0))
    base = None if critic_base is None else critic_base(frozen["rm"])
    critic_params = state.params.get("critic")
    if base is not None:
      critic_params = lora_lib.join(base, critic_params)
    rollout = collect(actor_params, critic_params, frozen["ref"], frozen["rm"], batch["prompt"],
                      batch["prompt_mask"], sample)
    if mesh is not None:
      rollout = jax.lax.with_sharding_constraint(
          rollout, jax.tree.map(lambda x: mesh_lib.batch_sharding(mesh, x.ndim), rollout))
    state, metrics = update(state, rollout, batch.get("ptx"), jax.random.fold_in(rng, 1),
                            frozen["ref"] if kl_in_loss or lora_actor else None, base)
    return state, {**metrics, "ppo/decode_steps": sample.num_steps}

  return iteration


def scan_iterations(iteration: Callable) -> Callable:
  """`call(state, batches, rng, frozen) -> (state, metrics)`: `iteration` over K batches stacked on a
  leading axis, one after the other under `lax.scan`; each metric gets that leading axis of K."""

  def call(state, batches, rng, frozen):
    return jax.lax.scan(lambda state, batch: iteration(state, batch, rng, frozen), state, batches)

  return call


def jit_iterations(iteration: Callable, state_shardings: Any, frozen_shardings: Any, mesh, *, per_call: int,
                   seeds: int, rules=mesh_lib.RULES) -> Callable:
  """Compiles `iteration` into `run(state, batch, rng, frozen) -> (state, metrics)`: `per_call` K > 1
  iterations scanned on K stacked batches (metrics (K, ...)), or one; with `seeds` N > 1 vmapped over N
  replicas (the state's and key's leading axis; the batches' axis after K; metrics (K, N) or (N,)). The
  state goes in and out with `state_shardings` (the stacked ones with seeds) and is donated; the batch rows
  stay split over the data axes as `mesh.shard_batch` laid them out; the frozen params keep
  `frozen_shardings`; key and metrics are replicated. Compiled at the first call (the batch's structure,
  with PPO-ptx rows or without, is known then)."""
  fn = scan_iterations(iteration) if per_call > 1 else iteration
  if seeds > 1:
    fn = jax.vmap(fn, in_axes=(0, 1 if per_call > 1 else 0, 0, None), out_axes=(0, 1 if per_call > 1 else 0))
  replicated = mesh_lib.replicated(mesh)
  compiled = {}

  def run(state, batch, rng, frozen):
    key = jax.tree.structure(batch)
    if key not in compiled:
      shardings = jax.tree.map(lambda x: x.sharding, batch)
      compiled[key] = jax.jit(fn, in_shardings=(state_shardings, shardings, replicated, frozen_shardings),
                              out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    with mesh_lib.activate(mesh, rules):
      return compiled[key](state, batch, rng, frozen)

  run.compiled = compiled
  return run
