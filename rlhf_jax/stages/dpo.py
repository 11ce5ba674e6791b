"""Offline preference optimisation (`stage=dpo`): DPO or IPO on the comparisons the reward stage learns from,
with no reward model and no sampling in training (Rafailov et al. 2023; Azar et al. 2023; losses.py).

  policy, params, tokenizer <- init_from (an SFT workdir); the reference pi_ref is the same SFT model, frozen
  comparisons <- data.path: a comparisons directory (the comparisons stage's workdir, or a reward run's
                 comparisons/) or records {"prompt", "responses", "ranking"} as the reward stage reads them
  reference log-probabilities: log pi_ref(y | x) of every response, once, before training (one forward pass
                 each, `reference_log_probs`); the batches carry them (batches.PreferenceBatch)
  batch element = one prompt with its K ranked responses, one forward pass for the K; the loss (dpo.loss,
                 beta dpo.beta) averages over the prompt's pairs, every pair of a ranking (ties make none);
                 dpo.epochs passes over the comparisons (train.steps when 0)
  train in the one loop (checkpoints, exact resume); evaluate
    the implicit reward beta (log pi - log pi_ref) as a reward model on the held-out comparisons (eval/rm.py:
    accuracy against the labels, and for toyworld against gold and Spearman: eval/implicit/...), and
    the policy (toyworld) as PPO evaluates its own (stages/ppo.py:make_evaluators): held-out gold by the one
    evaluator, KL to SFT, win rates against SFT and SFT at T 0.5 on the same prompts and keys; the reward
    model of dpo.reward_from only scores these evaluations (the RM-score column), it never trains anything.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts import models
from rlhf_jax.artifacts.reward_model import check_shared_tokenizer, load_reward_model
from rlhf_jax.batches import PreferenceBatch
from rlhf_jax.data import pipelines, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.eval.gold import gold_evaluation
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.stages import common
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.loop import LoopConfig, read_summary, train_loop


def to_preference_batch(rows: dict) -> PreferenceBatch:
  return PreferenceBatch(tokens=np.asarray(rows["tokens"], np.int32), start=np.asarray(rows["start"], np.int32),
                         end=np.asarray(rows["end"], np.int32), ranks=np.asarray(rows["ranks"], np.int32),
                         ref_log_probs=np.asarray(rows["ref_log_probs"], np.float32))


def make_log_prob_scorer(model: Transformer, mesh, chunk: int) -> Callable:
  """`score(params, tokens (N, T), start (N,), end (N,)) -> (N,) numpy`: log p(response | prompt) of each row
  (`steps.response_log_probs`), `chunk` rows a call."""
  lm = model.clone(deterministic=True)
  return rm_eval.chunked_scorer(lambda *args: steps.response_log_probs(lm, *args), mesh, chunk)


def reference_log_probs(score: Callable, ref_params, examples: list[dict]) -> list[dict]:
  """The examples (`pipelines.comparison_example`) with "ref_log_probs" (K,): the reference's log-probability
  of each response, 0 for padding slots."""
  if not examples:
    return []
  k = examples[0]["tokens"].shape[0]
  flat = score(ref_params, *(np.concatenate([ex[key] for ex in examples]) for key in ("tokens", "start", "end")))
  return [{**ex, "ref_log_probs": np.where(ex["ranks"] >= 0, flat[i * k:(i + 1) * k], 0.0).astype(np.float32)}
          for i, ex in enumerate(examples)]


def implicit_reward_metrics(score: Callable, params, ref_log_probs: list[np.ndarray], beta: float,
                            examples: list[dict], records: list[dict]) -> dict:
  """The implicit reward beta (log pi - log pi_ref) of the held-out comparisons' responses, measured as the
  reward stage measures a reward model (eval/rm.py: eval/implicit/label_accuracy, gold accuracy, Spearman)."""
  policy = rm_eval.score_examples(score, params, examples)
  implicit = [beta * (p - r) for p, r in zip(policy, ref_log_probs)]
  metrics, _ = rm_eval.comparison_metrics(implicit, records, prefix="eval/implicit")
  return metrics


@dataclasses.dataclass(frozen=True)
class DPOSetup:
  """Everything one DPO run is made of, built by `build_dpo` and not yet trained.

    policy          the SFT model as a language model; `state` its initial TrainState (from the SFT params),
                    laid out by `shardings`; `ref_params` the frozen reference (the same SFT params)
    train_examples  the training comparisons, encoded (`pipelines.comparison_example`) with the reference's
                    log-probabilities (`reference_log_probs`); `val_examples`, `val_records` the held-out ones
    step            the compiled step (`steps.preference_objective` under `steps.make_step`)
    evaluate        `(state) -> metrics`: the implicit reward on the held-out comparisons, and for toyworld
                    the policy's held-out evaluation (with dpo.reward_from: PPO's; else gold alone)
    baseline        filled by the first evaluation with PPO's evaluators: the SFT model's samples
  """
  config: Any
  mesh: Any
  tokenizer: Any
  policy: Transformer
  ref_params: dict
  state: Any
  shardings: Any
  train_examples: list[dict]
  val_examples: list[dict]
  val_records: list[dict]
  step: Callable
  evaluate: Callable
  evaluator: Any
  baseline: dict
  loop: LoopConfig


def read_comparisons(config) -> tuple[list[dict], list[dict]]:
  """(training records, held-out records) of data.path, as the reward stage reads them."""
  if not config.data.path:
    raise UserError("config key 'data.path': DPO learns from comparisons; name a comparisons directory (the "
                    "comparisons stage's workdir, or a reward run's comparisons/) or comparison JSONL")
  train, heldout, _ = common.read_path_comparisons(config)
  if not heldout:
    raise UserError(f"config key 'data.path': {config.data.path} has no held-out comparisons to evaluate on")
  return train, heldout


def policy_evaluation(config, *, policy: Transformer, ref_params, tokenizer, mesh) -> tuple[Callable, Any, dict]:
  """(evaluate(params) -> metrics, PPO's evaluator or None, its baseline dict) of the policy on toyworld's
  held-out prompts: PPO's evaluation with dpo.reward_from, else the one gold evaluator; for data without a
  gold scorer, nothing."""
  if config.data.source != "toyworld":
    return (lambda params: {}), None, {}
  world = toyworld.make_world(config.toyworld.seed)
  if not config.dpo.reward_from:
    heldout = toyworld.eval_instances(world, config.toyworld.num_eval_prompts)

    def gold_only(params):
      gold, _ = gold_evaluation(policy, params, tokenizer, world, heldout, config.sampling, mesh=mesh)
      return {f"eval/{k}": v for k, v in gold.items()}
    return gold_only, None, {}
  rm_model, rm_params, rm_tokenizer, spec = load_reward_model(config.dpo.reward_from, mesh, config.model)
  check_shared_tokenizer(config.dpo.reward_from, rm_tokenizer, config.init_from, tokenizer)
  _, eval_prompts = common.load_prompts(config, tokenizer, world)
  evaluator, cold = common.make_evaluators(
      config, actor=policy, ref_params=ref_params, rm_model=rm_model, rm_params=rm_params, tokenizer=tokenizer,
      mesh=mesh, world=world, eval_prompts=eval_prompts, reward_token=spec.reward_token)
  baseline: dict = {}
  evaluate = common.make_evaluate(evaluator, cold, None, ref_params, baseline)
  return (lambda params: evaluate(types.SimpleNamespace(ema=None, params={"actor": params}))), evaluator, baseline


def build_dpo(config, workdir: str, mesh=None) -> DPOSetup:
  """Builds everything a DPO run needs (see `DPOSetup`) from a finalised config, writing nothing."""
  if not config.init_from:
    raise UserError("config key 'init_from': DPO starts from an SFT model (also its reference); name its workdir")
  train_records, val_records = read_comparisons(config)  # First: bad data stops the run before any model loads.
  mesh = common.make_mesh(config) if mesh is None else mesh
  policy, params, tokenizer = models.load_pretrained(config.init_from, mesh, config.model)
  common.record_model(config, workdir, policy.config)
  # With lora.rank > 0 adapters train; the adapted model on the parameters without them is the reference.
  policy = common.adapted(config, policy)
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer, save=False)
  models.check_vocab(tokenizer, policy.config, config.init_from)
  if policy.config.position == "learned" and config.train.seq_len > policy.config.max_len:
    raise UserError(f"config key 'train.seq_len': {config.train.seq_len} is longer than the model's "
                    f"{policy.config.max_len} learned positions ({config.init_from})")
  # The reward stage's encoding (K = the most responses any prompt has, at most reward.max_responses).
  k_max, train_examples, val_examples = common.encode_comparisons(config, tokenizer, train_records,
                                                                        val_records)
  train, dcfg = config.train, config.dpo
  score = make_log_prob_scorer(policy, mesh, chunk=train.batch_size * k_max)
  ref_params = jax.tree.map(jnp.copy, params)  # The policy's params are donated by the first step.
  train_examples = reference_log_probs(score, ref_params, train_examples)
  val_examples = reference_log_probs(score, ref_params, val_examples)
  val_ref = [ex["ref_log_probs"][ex["ranks"] >= 0] for ex in val_examples]

  num_steps = common.epoch_steps(dcfg.epochs, len(train_examples), train)
  tx, schedule = state_lib.make_optimizer(config.optim, num_steps)
  state, shardings = state_lib.create_train_state(policy, tx, mesh, jax.random.PRNGKey(config.seed), params=params)
  objective = steps.preference_objective(policy.clone(deterministic=True), dcfg.loss, dcfg.beta)
  example = to_preference_batch({k: np.stack([v] * train.batch_size) for k, v in train_examples[0].items()})
  step = steps.jit_step(steps.make_step(objective, tx, schedule, config.optim.grad_accum_steps,
                                        count_name="prompts"), shardings, example, mesh)
  policy_eval, evaluator, baseline = policy_evaluation(config, policy=policy, ref_params=ref_params,
                                                       tokenizer=tokenizer, mesh=mesh)

  def evaluate(state) -> dict:
    return {**implicit_reward_metrics(score, state.params, val_ref, dcfg.beta, val_examples, val_records),
            **policy_eval(state.params)}

  loop = LoopConfig(total_steps=num_steps, log_every=train.log_every, eval_every=train.eval_every,
                    checkpoint_every=train.checkpoint_every, tokens_per_step=train.batch_size * k_max * train.seq_len,
                    keep_checkpoints=train.keep_checkpoints, desc="dpo")
  return DPOSetup(config=config, mesh=mesh, tokenizer=tokenizer, policy=policy, ref_params=ref_params, state=state,
                  shardings=shardings, train_examples=train_examples, val_examples=val_examples,
                  val_records=val_records, step=step, evaluate=evaluate, evaluator=evaluator, baseline=baseline,
                  loop=loop)


def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"dpo: already finished in {workdir}; nothing to do")
    return summary
  setup = build_dpo(config, workdir)
  models.save_tokenizer(workdir, setup.tokenizer)
  data = pipelines.comparison_pipeline(setup.train_examples, config.train.batch_size, config.seed)
  _, summary = train_loop(
      setup.loop, workdir=workdir, state=setup.state, shardings=setup.shardings, step_fn=setup.step,
      rng=jax.random.PRNGKey(config.seed + 1), data=iter(data),
      make_batch=lambda rows: mesh_lib.shard_batch(to_preference_batch(rows), setup.mesh), evaluate=setup.evaluate,
      extra_summary={**state_lib.param_counts(setup.state.params),
                     "comparisons/train_prompts": len(setup.train_examples),
                     "comparisons/heldout_prompts": len(setup.val_examples),
                     "dpo/loss": config.dpo.loss, "dpo/beta": config.dpo.beta},
      config=config)
  summary = common.finish_summary(setup.evaluator, setup.baseline, workdir, summary)
  print(common.result_line("dpo", summary, ["train/loss", "eval/implicit/label_accuracy", "eval/kl",
                                            "eval/gold/all", "sft/gold/all", "eval/win_rate_gold"]))
  return summary
