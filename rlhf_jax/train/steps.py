"""Step builders: `make_*_step(...)` returns `step(state, batch, rng) -> (state, metrics)`, a pure function;
`jit_step` compiles it once with shardings and donation (big_vision's and MaxText's shape of things).

The rng passed to a step is the run's root key; the step folds in its own step number, so a resumed run
draws exactly the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import losses
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import LMBatch, PreferenceBatch, RMBatch
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.rl import advantages as advantages_lib
from rlhf_jax.rl import kl_control
from rlhf_jax.rl import rollout as rollout_lib
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

  Parameters that carry LoRA adapters (model/lora.py) train only the adapters and the heads a stage adds: the
  objective is differentiated with respect to `lora.split`'s trainable part alone (no gradient of a frozen
  weight is computed) and the optimizer state is that part's (`train/state.py` builds it so).
  """
  def step(state: TrainState, batch: Any, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    frozen, trained = {}, state.params
    objective_of = objective
    if lora_lib.has_adapters(state.params):
      frozen, trained = lora_lib.split(state.params)
      objective_of = lambda p, b, r: objective(lora_lib.join(frozen, p), b, r)
    if grad_accum_steps == 1:
      total, count, aux, grads = _sum_and_grads(objective_of, trained, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]),
                           batch)

      def accumulate(carry, inputs):
        i, mb = inputs
        out = _sum_and_grads(objective_of, trained, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, out), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          lambda: _sum_and_grads(objective_of, trained, jax.tree.map(lambda x: x[0], micro), rng)))
      (total, count, aux, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    params = optax.apply_updates(trained, updates)
    if frozen:
      params = lora_lib.join(frozen, params)
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


def response_rewards(model: Transformer, params: Any, tokens_bkt: jax.Array, rng: Optional[jax.Array] = None,
                     start_bk: Optional[jax.Array] = None):
  """The reward head at every position of every response, (B, K, T): the K responses of each prompt are
  rows of one (B*K, T) forward pass, so each response goes through the model exactly once. `start_bk` (each
  response's first position) is needed by a reward model with a likelihood term."""
  b, k, t = tokens_bkt.shape
  rngs = None if rng is None else {"dropout": rng}
  start = None if start_bk is None else start_bk.reshape(b * k)
  out = model.apply({"params": params}, tokens_bkt.reshape(b * k, t), rngs=rngs, response_start_b=start)
  return out.rewards.reshape(b, k, t)


def rm_objective(model: Transformer, loss: str = "pairwise", margin: float = 1.0,
                 threshold: float = 1.0) -> Objective:
  """The reward model's objective on an RMBatch, for the `reward.loss` variant `loss`: a name of
  `losses.REWARD_LOSSES` (pairwise, margin, per_token, reward_token; their docstrings say what each does)."""
  if loss not in losses.REWARD_LOSSES:
    raise ValueError(f"unknown reward loss {loss!r}; expected one of {', '.join(losses.REWARD_LOSSES)}")
  loss_fn = losses.REWARD_LOSSES[loss]

  def objective(params, batch: RMBatch, rng: jax.Array):
    rewards_bkt = response_rewards(model, params, batch.tokens, rng, batch.start)
    return loss_fn(rewards_bkt, batch.start, batch.end, batch.ranks, margin, threshold)
  return objective


def make_rm_step(model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule,
                 grad_accum_steps: int = 1, loss: str = "pairwise", margin: float = 1.0, threshold: float = 1.0):
  """The reward-model step: one forward per response, the loss averaged over each prompt's pairs."""
  train_model = model.clone(deterministic=model.config.dropout == 0.0)
  return make_step(rm_objective(train_model, loss, margin, threshold), tx, schedule, grad_accum_steps,
                   count_name="prompts")


def response_log_probs(model: Transformer, params: Any, tokens_nt: jax.Array, start_n: jax.Array,
                       end_n: jax.Array) -> jax.Array:
  """(N,) log p(response | prompt) of each row: the LM head's log-probabilities of the tokens at positions
  start..end (a response and its end-of-turn token, as `pipelines.scored_sequence` lays a row out), summed.
  A padding row (start = end = 0) sums nothing and gives 0."""
  logits_ntv = model.apply({"params": params}, tokens_nt).logits
  logp_nt = losses.token_log_probs(logits_ntv[:, :-1], tokens_nt[:, 1:])  # [n, i]: the token at position i + 1.
  position_t = jnp.arange(1, tokens_nt.shape[1])
  in_response_nt = (position_t >= start_n[:, None]) & (position_t <= end_n[:, None])
  return jnp.sum(jnp.where(in_response_nt, logp_nt, 0.0), axis=-1)


def preference_objective(model: Transformer, loss: str = "dpo", beta: float = 0.1) -> Objective:
  """The offline preference objective (`dpo.loss`: a name of `losses.PREFERENCE_LOSSES`) on a
  PreferenceBatch: the K responses of each prompt as rows of one (B*K, T) forward pass, their log-ratio to
  the reference (whose log-probabilities the batch carries) into the loss."""
  if loss not in losses.PREFERENCE_LOSSES:
    raise ValueError(f"unknown preference loss {loss!r}; expected one of {', '.join(losses.PREFERENCE_LOSSES)}")
  loss_fn = losses.PREFERENCE_LOSSES[loss]

  def objective(params, batch: PreferenceBatch, rng: jax.Array):
    del rng  # The policy is evaluated deterministically (dropout off), as the reference was.
    b, k, t = batch.tokens.shape
    log_probs_bk = response_log_probs(model, params, batch.tokens.reshape(b * k, t), batch.start.reshape(b * k),
                                      batch.end.reshape(b * k)).reshape(b, k)
    return loss_fn(log_probs_bk - batch.ref_log_probs, batch.ranks, beta)
  return objective


def jit_step(step, state_shardings: Any, batch_example: Any, mesh: Mesh, rules=mesh_lib.RULES,
             seed_axis: bool = False):
  """Compiles `step(state, batch, rng)` once: state in and out with its shardings (donated), batch rows over
  the data axes, metrics replicated. The returned function enters the mesh and rules while it traces.

  With `seed_axis` (`train.seeds` > 1) it compiles `jax.vmap(step)`: N independent replicas in one program,
  state, batch, root key and metrics each with a leading axis of N. `state_shardings` are then the stacked
  ones (`state.create_seed_states`); `batch_example` is still one replica's batch.
  """
  batch_shardings = jax.tree.map(lambda x: mesh_lib.batch_sharding(mesh, x.ndim), batch_example)
  if seed_axis:
    step, batch_shardings = jax.vmap(step), jax.tree.map(mesh_lib.stacked, batch_shardings)
  replicated = mesh_lib.replicated(mesh)
  compiled = jax.jit(step, in_shardings=(state_shardings, batch_shardings, replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  def run(state, batch, rng):
    with mesh_lib.activate(mesh, rules):
      return compiled(state, batch, rng)

  run.jitted = compiled
  return run


def jit_ppo_update(update, state_shardings: Any, ref_shardings: Any, mesh: Mesh, rules=mesh_lib.RULES):
  """Compiles `update(state, rollout, ptx, rng, ref_params, critic_base=None)` (`make_ppo_update`) as `jit_step`
  compiles a step:
  the state in and out with its shardings (donated), the rollout's and the PPO-ptx batch's rows over the data
  axes, the reference's params (or None, without the exact KL in the loss) with `ref_shardings`, the key and
  the metrics replicated. A state laid out as the last call left it is the state the program expects, so
  every iteration runs the one compiled program. Compiles at the first call: the batches' structure (ptx or
  none) is known then."""
  replicated = mesh_lib.replicated(mesh)
  rows = lambda tree: jax.tree.map(lambda x: mesh_lib.batch_sharding(mesh, x.ndim), tree)
  compiled = {}

  def run(state, rollout, ptx, rng, ref_params, critic_base=None):
    key = (jax.tree.structure(rollout), jax.tree.structure(ptx), ref_params is None, critic_base is None)
    if key not in compiled:
      base_shardings = None if critic_base is None else jax.tree.map(lambda x: x.sharding, critic_base)
      compiled[key] = jax.jit(update, in_shardings=(state_shardings, rows(rollout), rows(ptx), replicated,
                                                     None if ref_params is None else ref_shardings, base_shardings),
                              out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    # Rows the sampler left replicated (generation's outputs) are split over the data axes here: a local slice.
    rollout, ptx = jax.device_put(rollout, rows(rollout)), jax.device_put(ptx, rows(ptx))
    with mesh_lib.activate(mesh, rules):
      return compiled[key](state, rollout, ptx, rng, ref_params, critic_base)

  return run


# ---------------------------------------------------------------------------------------------------------
# PPO (Schulman et al. 2017) with InstructGPT's PPO-ptx (Ouyang et al. 2022, eq. 2).


@flax.struct.dataclass
class PPOBatch:
  """A rollout with its PPO targets. prompt (B, P), prompt_mask (B, P); tokens, mask, old_log_probs,
  ref_log_probs (the reference's, for a sampled KL estimate in the loss), old_values, advantages, returns
  (B, N); tool_mask (B, N) or None: the tool's tokens, which the models read but no loss counts
  (`rollout.Rollout`)."""
  prompt: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  mask: jax.Array
  old_log_probs: jax.Array
  ref_log_probs: jax.Array
  old_values: jax.Array
  advantages: jax.Array
  returns: jax.Array
  tool_mask: Optional[jax.Array] = None

  @property
  def seen(self) -> jax.Array:
    """The response tokens the models read (the policy's and the tool's)."""
    return rollout_lib.seen_mask(self.mask, self.tool_mask)


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """The numbers `make_ppo_update` closes over, from the config's `ppo` section. The fields have no defaults of
  their own: `config.base_config().ppo` is the one place a default is written, and `from_config` takes keyword
  overrides (tests: `PPOSettings.from_config(base_config().ppo, epochs=1)`)."""
  temperature: float
  epochs: int
  minibatches: int
  microbatches: int
  clip_eps: float
  value_clip_eps: float
  gamma: float
  lam: float
  vf_coef: float
  ent_coef: float
  kl_estimator: str
  adaptive_kl: bool
  kl_target: float
  kl_horizon: int
  reward_clip: float
  whiten_advantages: bool
  samples_per_prompt: int
  group_baseline: bool
  group_std: bool
  ptx_coef: float
  ema_decay: float
  critic_free: bool
  critic_warmup: int
  reward_norm: bool
  kl_loss_coef: float
  kl_loss: str
  loss_aggregation: str

  @property
  def kl_needs_reference(self) -> bool:
    """Whether the update reads the reference's params: the exact KL in the loss needs its logits (the k3
    estimate reads the rollout's reference log-probabilities instead)."""
    return self.kl_loss_coef > 0 and self.kl_loss == "exact"

  @classmethod
  def from_config(cls, ppo, **overrides) -> "PPOSettings":
    """The settings of a `ppo` section (ConfigDict or dict), with single fields replaced by `overrides`."""
    return dataclasses.replace(cls(**{f.name: ppo[f.name] for f in dataclasses.fields(cls)}), **overrides)


# How the actor's per-token terms (surrogate, entropy, KL in the loss, a shared critic's value loss) become
# the minibatch's loss (`ppo.loss_aggregation`), for B rows with |o_b| response tokens and width N:
#   token_mean     sum over all tokens / number of tokens (DAPO, Yu et al. 2025: every token counts the same)
#   sequence_mean  mean over rows of each row's token mean, 1/B sum_b 1/|o_b| sum_t (GRPO, Shao et al. 2024,
#                  eq. 3: a short answer's tokens weigh more)
#   constant       1/B sum_b 1/N sum_t, N fixed (Dr. GRPO, Liu et al. 2025: no length normalisation, whose
#                  bias towards long wrong answers they measured)
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "constant")
GROUP_STD_EPS = 1e-4  # Added to a group's score std (ppo.group_std); GRPO implementations add 1e-4 to 1e-6.


def ppo_targets(rollout, kl_coef: jax.Array, settings: PPOSettings,
                moments: Optional[advantages_lib.RunningMoments] = None):
  """Rollout -> (PPOBatch, statistics of the rollout): the score -- normalised by the running `moments` of the
  scores with `settings.reward_norm` (they must already include this rollout's), then clipped to
  [-reward_clip, reward_clip] when reward_clip > 0, then less the mean of the other answers to its prompt with
  a group baseline -- in KL-shaped rewards, GAE, optional whitening."""
  mask_bn = rollout.mask
  kl_bn = advantages_lib.kl_estimate(rollout.log_probs, rollout.ref_log_probs, mask_bn, settings.kl_estimator)
  scores_b = rollout.scores
  if settings.reward_norm:
    if moments is None:
      raise ValueError("reward_norm: pass the running moments of the scores (PPOState.score_moments)")
    scores_b = advantages_lib.normalize_scores(scores_b, moments)
  scores_b = advantages_lib.clip_scores(scores_b, settings.reward_clip)
  if settings.group_baseline:  # Rows come in groups of samples_per_prompt answers to one prompt.
    if settings.group_std:  # GRPO exactly: (r - the group's mean, r included) / (the group's std + eps).
      g = settings.samples_per_prompt
      centred_b = (g - 1) / g * advantages_lib.leave_one_out(scores_b, g)
      scores_b = centred_b / (advantages_lib.group_std(scores_b, g) + GROUP_STD_EPS)
    else:
      scores_b = advantages_lib.leave_one_out(scores_b, settings.samples_per_prompt)
  rewards_bn = advantages_lib.shaped_rewards(scores_b, kl_bn, mask_bn, kl_coef)
  values_bn, lam = rollout.values, settings.lam
  if settings.critic_free:  # No value estimates: lambda < 1 would only discount the score for early tokens.
    values_bn, lam = jnp.zeros_like(rollout.values), 1.0
  adv_bn, returns_bn = advantages_lib.gae(rewards_bn, values_bn, mask_bn, settings.gamma, lam,
                                          skip_bn=rollout.tool_mask)
  if settings.whiten_advantages:
    adv_bn = advantages_lib.masked_whiten(adv_bn, mask_bn)
  mean = lambda x_bn: advantages_lib.masked_mean(x_bn, mask_bn)
  residual_var = mean(jnp.square((returns_bn - values_bn) - mean(returns_bn - values_bn)))
  returns_var = mean(jnp.square(returns_bn - mean(returns_bn)))
  kl_b = kl_bn.sum(-1)
  stats = {
      "ppo/score": jnp.mean(rollout.rm_scores),
      "ppo/score_total": jnp.mean(rollout.scores),
      "ppo/kl": jnp.mean(kl_b),
      "ppo/non_score_reward": -kl_coef * jnp.mean(kl_b),
      "ppo/return": jnp.mean(rewards_bn.sum(-1)),
      "ppo/kl_coef": kl_coef,
      "ppo/response_length": jnp.mean(mask_bn.sum(-1)),
      "ppo/end_of_turn_rate": jnp.mean(rollout.ended.astype(jnp.float32)),
      "ppo/value_mean": mean(values_bn),
      # 1 - Var[R - V] / Var[R] over response tokens: how much of the returns the critic predicted.
      "ppo/value_explained_variance": 1.0 - residual_var / jnp.maximum(returns_var, 1e-8),
  }
  if settings.reward_norm:
    stats.update({"ppo/score_mean_running": moments.mean, "ppo/score_std_running": moments.std})
  batch = PPOBatch(prompt=rollout.prompt, prompt_mask=rollout.prompt_mask, tokens=rollout.tokens, mask=mask_bn,
                   old_log_probs=rollout.log_probs, ref_log_probs=rollout.ref_log_probs, old_values=values_bn, advantages=adv_bn,
                   returns=returns_bn, tool_mask=rollout.tool_mask)
  return batch, stats


def make_ppo_update(actor: Transformer, critic: Optional[Transformer], txs: dict, settings: PPOSettings,
                    reference: Optional[Transformer] = None):
  """`update(state, rollout, ptx, rng, ref_params=None) -> (state, metrics)`: PPO on one rollout, as one
  compiled program.

    targets: per-token reward -beta*KL (+ score at the last token), GAE, whitened advantages
    for each of `epochs` epochs (lax.scan), rows shuffled, for each of `minibatches` minibatches (lax.scan):
      actor:  clipped surrogate - ent_coef * entropy (+ vf_coef * clipped value loss with a shared critic)
              + ptx_coef * the pretraining LM loss on that minibatch's ptx rows
              + kl_loss_coef * the exact KL to `reference` (`ref_params`) over the vocabulary, averaged over
                the minibatch's response tokens (losses.exact_kl); its own optimizer
      critic: clipped value loss; its own optimizer
    beta <- the KL controller (fixed or adaptive); EMA of the actor's weights when asked.

  `settings.reward_norm`: the scores' running moments in `state.score_moments` take in this rollout's scores
  before its targets are made (rl/advantages.py). `settings.critic_warmup` N > 0: critic pre-training (PPO-max
  of Zheng et al. 2023 and AI2's EasyLM PPO train the critic with the policy frozen first, so that the first
  policy updates see advantages from a critic fitted to this policy's returns rather than to the RM's scores):
  while `state.step` < N the actor's minibatch updates are skipped by a `lax.cond` -- its params, its
  optimizer state (Adam moments, and the step count its learning-rate schedule reads, so the schedule starts
  with the actor's first real update), its EMA and beta stay exactly as they were -- and only the critic
  learns; the actor's loss diagnostics (ppo/policy_loss, ppo/entropy, train/loss, ...) then read 0, and
  ppo/critic_warmup reads 1.

  An actor with LoRA adapters (`actor.lora`): `state.params["actor"]` holds only its trainable part
  (`lora.split`: adapters, and the value head of a shared critic), and its frozen base is the reference itself,
  so `ref_params` is always passed; the gradient and the optimizer state are the adapters', and the EMA
  averages the adapters. A critic with LoRA adapters (`critic.lora`) likewise holds its adapters and value
  head, on the frozen `critic_base` (the reward model's trunk) passed to the update.

  `critic` None means the actor has a value head (shared trunk), or, with `settings.critic_free`, that there
  is no critic: the rollout's values are 0 and nothing learns them. `ptx` is an LMBatch whose rows split into
  epochs x minibatches equal parts, or None when ptx_coef is 0. `txs` maps "actor" (and "critic") to
  optimizers. Metrics are means over all minibatch updates (ppo/...) and the rollout's statistics.
  """
  s = settings
  if s.critic_free and critic is not None:
    raise ValueError("critic_free: pass critic=None (there is no critic to train)")
  shared = critic is None and not s.critic_free
  if shared and "value" not in actor.heads:
    raise ValueError("a shared critic needs the actor to have a value head")
  if s.loss_aggregation not in LOSS_AGGREGATIONS:
    raise ValueError(f"unknown loss aggregation {s.loss_aggregation!r}; expected one of {', '.join(LOSS_AGGREGATIONS)}")
  if s.kl_loss_coef > 0 and s.kl_loss == "exact" and reference is None:
    raise ValueError("kl_loss_coef: pass the reference model (the KL in the loss needs its logits)")
  if s.critic_warmup > 0 and critic is None:
    raise ValueError("critic_warmup: needs a separate critic (a shared trunk cannot learn values with the actor "
                     "frozen, and critic_free has none)")

  def actor_loss(trained, mb: PPOBatch, weights_bn, ptx: Optional[LMBatch], ref_params, ptx_denom):
    """The minibatch's loss and metrics on `mb` (the minibatch or one of its microbatches): per-token terms
    summed with `weights_bn` (`token_weights` of the whole minibatch: each term is then its mean as
    ppo.loss_aggregation defines it) and the ptx loss over the whole minibatch's `ptx_denom` target tokens,
    so microbatches add up."""
    params = actor_params(trained, ref_params)
    log_probs_bn, scaled_bnv, values_bn = rollout_lib.policy_outputs(
        actor, params, mb.prompt, mb.prompt_mask, mb.tokens, mb.seen, s.temperature)
    pg, _, aux = losses.ppo_policy_loss(log_probs_bn, mb.old_log_probs, mb.advantages, weights_bn, s.clip_eps)
    # Without a bonus the entropy is only a diagnostic: its gradient (through a softmax over the vocabulary at
    # every response token, then times 0) is kept out of the backward pass.
    ent, _ = losses.entropy(scaled_bnv if s.ent_coef else jax.lax.stop_gradient(scaled_bnv), weights_bn)
    loss = pg - s.ent_coef * ent
    metrics = {"ppo/policy_loss": pg, "ppo/entropy": ent, "ppo/clip_fraction": aux["clip_fraction"],
               "ppo/approx_kl": aux["approx_kl"]}
    if shared:
      v, _, v_aux = losses.ppo_value_loss(values_bn, mb.old_values, mb.returns, weights_bn, s.value_clip_eps)
      loss = loss + s.vf_coef * v
      metrics.update({"ppo/value_loss": v, "ppo/value_clip_fraction": v_aux["value_clip_fraction"]})
    if ptx is not None:
      out = actor.apply({"params": params}, ptx.tokens, ptx.positions, ptx.segment_ids)
      lm_sum, _, _ = losses.lm_loss(out.logits, ptx.targets, ptx.loss_mask)
      ptx_loss = lm_sum / ptx_denom
      loss = loss + s.ptx_coef * ptx_loss
      metrics["ppo/ptx_loss"] = ptx_loss
    if s.kl_loss_coef > 0 and s.kl_loss == "exact":
      _, ref_scaled_bnv, _ = rollout_lib.policy_outputs(reference, jax.lax.stop_gradient(ref_params), mb.prompt,
                                                        mb.prompt_mask, mb.tokens, mb.seen, s.temperature)
      kl, _ = losses.exact_kl(scaled_bnv, ref_scaled_bnv, weights_bn)
    elif s.kl_loss_coef > 0:  # GRPO's k3 estimate at the sampled tokens, differentiated through log pi.
      kl = jnp.sum(advantages_lib.k3_estimate(log_probs_bn - mb.ref_log_probs) * weights_bn)
    if s.kl_loss_coef > 0:
      loss = loss + s.kl_loss_coef * kl
      metrics["ppo/kl_loss"] = kl
    return loss, metrics

  def actor_params(trained, ref_params):
    """The actor's whole parameters: with LoRA its adapters on the reference's (frozen) weights."""
    return trained if actor.lora is None else lora_lib.join(jax.lax.stop_gradient(ref_params), trained)

  def critic_params(trained, critic_base):
    """The critic's whole parameters: with LoRA its adapters and value head on the reward model's trunk."""
    return trained if critic.lora is None else lora_lib.join(jax.lax.stop_gradient(critic_base), trained)

  def critic_loss(trained, mb: PPOBatch, denom, critic_base):
    values_bn = rollout_lib.critic_values(critic, critic_params(trained, critic_base), mb.prompt, mb.prompt_mask,
                                          mb.tokens, mb.seen)
    v_sum, _, aux = losses.ppo_value_loss(values_bn, mb.old_values, mb.returns, mb.mask, s.value_clip_eps)
    return v_sum / denom, {"ppo/value_loss": v_sum / denom,
                           "ppo/value_clip_fraction": aux["value_clip_fraction"] / denom}

  def apply(name, grads, state):
    updates, opt_state = txs[name].update(grads, state.opt_state[name], state.params[name])
    params = optax.apply_updates(state.params[name], updates)
    return state.replace(params={**state.params, name: params}, opt_state={**state.opt_state, name: opt_state})

  def token_counts(mb: PPOBatch, ptx: Optional[LMBatch]):
    """The minibatch's response tokens and ptx target tokens (at least 1 each): the losses' denominators."""
    count = lambda mask: jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    return count(mb.mask), None if ptx is None else count(ptx.loss_mask)

  def token_weights(mb: PPOBatch):
    """(B, N) the weight of each response token of the minibatch in the actor's loss (LOSS_AGGREGATIONS)."""
    mask_bn = mb.mask.astype(jnp.float32)
    rows = mask_bn.shape[0]
    if s.loss_aggregation == "token_mean":
      return mask_bn / token_counts(mb, None)[0]
    if s.loss_aggregation == "sequence_mean":
      return mask_bn / (jnp.maximum(mask_bn.sum(-1, keepdims=True), 1.0) * rows)
    return mask_bn / (mask_bn.shape[1] * rows)  # "constant": Dr. GRPO's fixed normaliser, the response width.

  def accumulate(loss_fn, params, batches, *args):
    """(loss, metrics), grads of `loss_fn(params, batch, *args)` summed over `batches` split into
    `s.microbatches` equal microbatches along the rows (one at a time, under lax.scan), or of the whole batch."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if s.microbatches == 1:
      return grad_fn(params, batches, *args)
    split = lambda x: x.reshape(s.microbatches, x.shape[0] // s.microbatches, *x.shape[1:])

    def add(total, micro):
      out = grad_fn(params, micro, *args)
      return jax.tree.map(jnp.add, total, out), None

    first = jax.tree.map(lambda x: x[0], jax.tree.map(split, batches))
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first, *args))
    return jax.lax.scan(add, zeros, jax.tree.map(split, batches))[0]

  def actor_step(state, mb: PPOBatch, ptx: Optional[LMBatch], ref_params):
    ptx_denom = token_counts(mb, ptx)[1]
    loss_fn = lambda params, batches, ref: actor_loss(params, *batches, ref, ptx_denom)
    (loss, metrics), grads = accumulate(loss_fn, state.params["actor"], (mb, token_weights(mb), ptx), ref_params)
    metrics.update({"train/loss": loss, "ppo/actor_grad_norm": optax.tree.norm(grads)})
    return apply("actor", grads, state), metrics

  def actor_frozen(state, mb: PPOBatch, ptx: Optional[LMBatch], ref_params):
    """Critic warm-up: the state as it is, and zeros for the actor's diagnostics (nothing is computed)."""
    shapes = jax.eval_shape(actor_step, state, mb, ptx, ref_params)[1]
    return state, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  def minibatch_step(state, inputs, ref_params, critic_base):
    mb, ptx = inputs
    if s.critic_warmup > 0:  # One program for both phases: the iteration count picks the branch.
      state, metrics = jax.lax.cond(state.step < s.critic_warmup, actor_frozen, actor_step, state, mb, ptx,
                                    ref_params)
    else:
      state, metrics = actor_step(state, mb, ptx, ref_params)
    if critic is not None:
      (_, c_metrics), c_grads = accumulate(critic_loss, state.params["critic"], mb, token_counts(mb, None)[0],
                                           critic_base)
      metrics.update({**c_metrics, "ppo/critic_grad_norm": optax.tree.norm(c_grads)})
      state = apply("critic", c_grads, state)
    return state, metrics

  def update(state, rollout, ptx: Optional[LMBatch], rng: jax.Array, ref_params=None, critic_base=None):
    if s.kl_needs_reference and ref_params is None:
      raise ValueError("kl_loss_coef: pass ref_params (the reference's params) to the update")
    if actor.lora is not None and ref_params is None:
      raise ValueError("a LoRA actor: pass ref_params (its frozen base) to the update")
    if critic is not None and critic.lora is not None and critic_base is None:
      raise ValueError("a LoRA critic: pass critic_base (its frozen trunk) to the update")
    moments = state.score_moments
    if s.reward_norm:
      if moments is None:
        raise ValueError("reward_norm: the state carries no running moments (create_ppo_state(..., "
                         "reward_norm=True))")
      moments = advantages_lib.update_running_moments(moments, rollout.scores)
    batch, stats = ppo_targets(rollout, state.kl_coef, s, moments)
    rows = batch.tokens.shape[0]
    split = lambda x: x.reshape(s.epochs, s.minibatches, x.shape[0] // (s.epochs * s.minibatches), *x.shape[1:])
    ptx_em = None if ptx is None else jax.tree.map(split, ptx)

    def epoch(state, inputs):
      e, ptx_m = inputs
      order = jax.random.permutation(jax.random.fold_in(rng, e), rows)
      shuffled = jax.tree.map(lambda x: x[order].reshape(s.minibatches, rows // s.minibatches, *x.shape[1:]),
                              batch)
      return jax.lax.scan(functools.partial(minibatch_step, ref_params=ref_params, critic_base=critic_base), state,
                          (shuffled, ptx_m))

    warming_up = state.step < s.critic_warmup
    state, metrics = jax.lax.scan(epoch, state, (jnp.arange(s.epochs), ptx_em))
    metrics = jax.tree.map(jnp.mean, metrics)
    kl_coef = kl_control.update_kl_coef(state.kl_coef, stats["ppo/kl"], rows, adaptive=s.adaptive_kl,
                                        target=s.kl_target, horizon=s.kl_horizon)
    ema = state.ema
    if ema is not None:
      ema = jax.tree.map(lambda e, p: s.ema_decay * e + (1.0 - s.ema_decay) * p, ema, state.params["actor"])
    if s.critic_warmup > 0:  # The policy has not moved: beta and the EMA wait for it.
      kl_coef = jnp.where(warming_up, state.kl_coef, kl_coef)
      ema = jax.tree.map(lambda new, old: jnp.where(warming_up, old, new), ema, state.ema)
      metrics["ppo/critic_warmup"] = warming_up.astype(jnp.float32)
    state = state.replace(step=state.step + 1, kl_coef=kl_coef, ema=ema, score_moments=moments)
    return state, {**metrics, **stats}

  return update
