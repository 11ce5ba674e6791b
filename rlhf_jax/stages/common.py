"""What every stage does the same way: the mesh, the model the config describes, config.json, the result line,
and the LM stages' training; what two stages share (stages never import one another): the comparisons of
data.path (reward and DPO) and the held-out evaluation of a policy against SFT (PPO and DPO, and `python -m
rlhf_jax.evaluate`). What one stage writes and another reads (models, tokenizers, reward models,
comparisons, documents) is in rlhf_jax/artifacts/, below the stages."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.errors import UserError
from rlhf_jax.artifacts import comparisons
from rlhf_jax.data import pipelines, sources, toyworld
from rlhf_jax.eval import gold as eval_gold
from rlhf_jax.eval.policy import PolicyEvaluator, PolicySamples
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.rl.rollout import strip_value
from rlhf_jax.model.transformer import Transformer, TransformerConfig
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.loop import LoopConfig, combine_seeds, train_loop, write_summary
from rlhf_jax.train.metrics import read_metrics


def make_mesh(config):
  """The run's mesh; the global batch must split evenly over its data-parallel axes."""
  mesh = mesh_lib.make_mesh(config.mesh)
  shards = mesh_lib.num_batch_shards(mesh)
  if config.train.batch_size % shards:
    raise UserError(f"config key 'train.batch_size': {config.train.batch_size} rows do not split over the "
                    f"{shards} data-parallel devices of mesh {dict(mesh.shape)}; change the batch or mesh.*")
  return mesh


def model_for(config, workdir: str, tokenizer: Tokenizer) -> Transformer:
  """The model the config describes, with `model.vocab_size` 0 resolved to the tokenizer's size and every
  derived value (head_dim) written back to the config (and so to config.json, when the run starts)."""
  if config.model.vocab_size == 0:
    config.model.vocab_size = tokenizer.vocab_size
  elif config.model.vocab_size < tokenizer.vocab_size:
    raise UserError(f"config key 'model.vocab_size': {config.model.vocab_size} is smaller than the tokenizer's "
                    f"{tokenizer.vocab_size} tokens (set it to 0 to follow the tokenizer)")
  model_config = TransformerConfig.from_config(config.model)
  record_model(config, workdir, model_config)
  return Transformer(model_config)


def adapted(config, model: Transformer) -> Transformer:
  """`model` with the LoRA adapters of the config's `lora` section (model/lora.py), or as it is at rank 0. The
  adapted model applied to parameters without adapters is the base model: one model serves both."""
  spec = lora_lib.LoraSpec.from_config(config.lora)
  return model if spec is None else model.clone(lora=spec)


def epoch_steps(epochs: float, num_examples: int, train) -> int:
  """Training steps for `epochs` passes over `num_examples` examples in batches of train.batch_size (the last
  step may wrap around into the next pass); train.steps when `epochs` <= 0."""
  return train.steps if epochs <= 0 else max(1, math.ceil(epochs * num_examples / train.batch_size))


def result_line(stage: str, summary: dict, keys: Iterable[str]) -> str:
  """The stage's last line: its headline figures, each +- its spread over seeds when `train.seeds` > 1."""
  spread = lambda k: f" +- {summary[k + '/seed_std']:.4f}" if summary.get(k + "/seed_std") is not None else ""
  parts = [f"{k} {summary[k]:.4f}{spread(k)}" for k in keys if summary.get(k) is not None]
  return f"{stage} done in {summary.get('wall_time_s', 0.0):.0f} s: " + ", ".join(parts)


def record_model(config, workdir: str, model_config: TransformerConfig) -> None:
  """Makes `config.model` say which model the run really uses. config.json is written from it only when the
  run is known to start (`train_loop`'s `config`, or `write_run_config`), never by a run that is refused."""
  for key, value in model_config.to_dict().items():
    config.model[key] = value


def write_run_config(config, workdir: str) -> None:
  """Writes config.json for a stage without a training loop, once its inputs have been checked."""
  if jax.process_index() == 0:
    config_lib.write_config(config, workdir)


def train_lm(config, workdir: str, *, model: Transformer, mesh, make_data: Callable[[int], Iterable[dict]],
             eval_batches: Callable[[], Iterable[dict]], evaluate: Callable[[Any, int], dict], desc: str,
             params=None, extra_summary: Optional[dict] = None) -> dict:
  """What the LM stages share: the optimizer, the sharded state (from `params` when a stage starts from a
  pretrained model), the jitted step, and the one loop. `make_data(seed)` is the pipeline of host batches of
  rows that a run with this seed reads; `evaluate(state, seed)` evaluates one model (the seed for any
  sampling it does).

  With `train.seeds` = N > 1, N independent runs train as one compiled program (`jax.vmap` of the step):
  replica i is, to float rounding, the run with seed `config.seed + i` -- its initialisation (unless
  `params` are given: then all start from them), data order, dropout and evaluation. Every state leaf has a
  leading axis of N; the loop logs means over the replicas and `train/loss/seed_std`, and the evaluations
  give each figure's mean, `/seed_std` and `/seeds` (the N values).
  """
  train = config.train
  tx, schedule = state_lib.make_optimizer(config.optim, train.steps)
  lm_step = steps.make_lm_step(model, tx, schedule, config.optim.grad_accum_steps)
  example = pipelines.to_lm_batch(next(iter(eval_batches())))  # Shapes and structure only.
  seeds = [config.seed + i for i in range(train.seeds)]
  if train.seeds == 1:
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(config.seed), params=params)
    counts = state_lib.param_counts(state.params)
    rng, data = jax.random.PRNGKey(config.seed + 1), iter(make_data(config.seed))
    run_evaluation = lambda state: evaluate(state, config.seed)
  else:
    keys = lambda offset: jnp.stack([jax.random.PRNGKey(seed + offset) for seed in seeds])
    state, shardings = state_lib.create_seed_states(model, tx, mesh, keys(0), params=params)
    counts = state_lib.param_counts(state.params, train.seeds)
    rng, data = keys(1), pipelines.SeedIterators([iter(make_data(seed)) for seed in seeds])
    take = state_lib.unstack_seed(shardings)
    run_evaluation = lambda state: combine_seeds([evaluate(take(state, i), seed) for i, seed in enumerate(seeds)])
  step = steps.jit_step(lm_step, shardings, example, mesh, seed_axis=train.seeds > 1)
  loop = LoopConfig(total_steps=train.steps, log_every=train.log_every, eval_every=train.eval_every,
                    checkpoint_every=train.checkpoint_every,
                    tokens_per_step=train.seeds * train.batch_size * train.seq_len,  # Of all the replicas.
                    keep_checkpoints=train.keep_checkpoints, desc=desc)
  extra = {**counts, **(extra_summary or {})}
  _, summary = train_loop(
      loop, workdir=workdir, state=state, shardings=shardings, step_fn=step, rng=rng, data=data,
      make_batch=lambda rows: mesh_lib.shard_batch(pipelines.to_lm_batch(rows), mesh, seed_axis=train.seeds > 1),
      evaluate=run_evaluation, extra_summary=extra, config=config)
  return summary


# ---------------------------------------------------------------------------------------------------------
# Comparisons from data.path: what the reward and DPO stages read.


def read_path_comparisons(config) -> tuple[list[dict], list[dict], dict] | None:
  """data.path's (training records, held-out records, account of the invalid records left out under
  data.max_bad_records, each also a warning line); None for toyworld without a path (`generate_comparisons`)."""
  if not config.data.path:
    if config.data.source != "toyworld":
      raise UserError("config key 'data.path': the reward stage needs comparisons (a JSONL file, or a "
                      "directory with train.jsonl and heldout.jsonl); or set data.source='toyworld'")
    return None
  bad = sources.BadRecords(config.data.max_bad_records)
  train, heldout = comparisons.read_comparisons(config.data.path, config.data.val_fraction, bad)
  for line in bad.warnings():
    print(line, file=sys.stderr)
  return train, heldout, bad.summary()


def encode_comparisons(config, tokenizer, train_records: list[dict], val_records: list[dict]
                       ) -> tuple[int, list[dict], list[dict]]:
  """(K, training examples, held-out examples): each comparison as `pipelines.comparison_example`, its
  responses padded to K, the most any prompt has (at most reward.max_responses)."""
  rcfg = config.reward
  k_max = max(len(r["responses"]) for r in train_records + val_records)
  if k_max > rcfg.max_responses:
    raise UserError(f"config key 'reward.max_responses': the comparisons have up to {k_max} responses per "
                    f"prompt, more than {rcfg.max_responses}")
  reward_token = rcfg.loss == "reward_token"
  encode = lambda records: [pipelines.comparison_example(tokenizer, r, config.train.seq_len, k_max, reward_token)
                            for r in records]
  return k_max, encode(train_records), encode(val_records)


# ---------------------------------------------------------------------------------------------------------
# Policies on held-out prompts: what the PPO and DPO stages (and `python -m rlhf_jax.evaluate`) evaluate with.


@dataclasses.dataclass
class Prompts:
  """Prompts as the policy sees them in rollouts (left-padded ids), as conversations (what the evaluations
  sample from: `eval.gold.sample_answers`), and the toyworld instances behind them (or None)."""
  tokens: np.ndarray
  mask: np.ndarray
  conversations: list
  instances: list | None = None


def load_prompts(config, tokenizer, world) -> tuple[Prompts, Prompts]:
  """(training prompts, evaluation prompts). toyworld: training instances, and the same held-out instances
  the SFT stage is evaluated on (so the figures compare); JSONL: the last data.val_fraction is held out."""
  ppo, tw = config.ppo, config.toyworld
  encode = lambda conversations: (*pipelines.left_pad_prompts(
      [pipelines.prompt_ids(tokenizer, c) for c in conversations], ppo.prompt_len, tokenizer.pad_id),
      conversations)
  as_messages = lambda text: [{"role": "user", "content": text}]
  if ppo.prompts_path:
    source = sources.open_source(ppo.prompts_path, "prompts")
    conversations = [source[i]["messages"] for i in range(len(source))]
    cut = max(1, int(round(len(conversations) * (1.0 - config.data.val_fraction))))
    train, heldout = conversations[:cut], conversations[cut:] or conversations[-1:]
    return Prompts(*encode(train)), Prompts(*encode(heldout))
  if config.data.source != "toyworld":
    raise UserError("config key 'ppo.prompts_path': PPO needs prompts (JSONL with {\"prompt\"} or "
                    "{\"messages\"} per line), or set data.source='toyworld'")
  train = toyworld.sample_instances(world, ppo.num_prompts, tw.seed + 6, split="train")
  heldout = toyworld.eval_instances(world, tw.num_eval_prompts)
  return (Prompts(*encode([as_messages(i.prompt) for i in train]), train),
          Prompts(*encode([as_messages(i.prompt) for i in heldout]), heldout))


SFT_COLD_TEMPERATURE = 0.5


def make_evaluators(config, *, actor: Transformer, ref_params, rm_model: Transformer, rm_params, tokenizer, mesh,
                    world, eval_prompts: Prompts, reward_token: bool) -> tuple[PolicyEvaluator, PolicyEvaluator]:
  """PPO's held-out evaluators, both on `eval_prompts` with the evaluations' keys (`sampling.eval_seed`):
  one samples at `sampling.temperature` (the policy, and the SFT model it is compared with), the other at
  SFT_COLD_TEMPERATURE -- the free baseline PPO must beat (the December 2026 PPO audit: the SFT model
  sampled at T 0.5, not 0.7, gave +0.06 gold at a KL of 0.26), its KL taken against the reference at the
  evaluation's own temperature. `python -m rlhf_jax.evaluate` builds the same two."""
  shared = dict(actor=actor, reference=actor.clone(heads=("lm",)), reward_model=rm_model, ref_params=ref_params,
                rm_params=rm_params, tokenizer=tokenizer, mesh=mesh, prompts=eval_prompts.conversations,
                seed=eval_gold.eval_seed(config.sampling), reward_token=reward_token, world=world,
                instances=eval_prompts.instances)
  cold_sampling = types.SimpleNamespace(**dict(config.sampling.items(), temperature=SFT_COLD_TEMPERATURE))
  return (PolicyEvaluator(sampling=config.sampling, **shared),
          PolicyEvaluator(sampling=cold_sampling, ref_temperature=config.sampling.temperature, **shared))


def baseline_metrics(evaluator: PolicyEvaluator, sft: PolicySamples, sft_cold: PolicySamples) -> dict:
  """The summary's figures of the SFT model (`sft/...`) and of SFT sampled colder against it (`sft_t0.5/...`)."""
  return {**evaluator.metrics(sft, prefix="sft"),
          **evaluator.metrics(sft_cold, sft, prefix=f"sft_t{SFT_COLD_TEMPERATURE}")}


def eval_history(rows: list[dict]) -> dict:
  """The best evaluation of the RM score and of gold, and the step it came at: over-optimisation shows as a
  gold peak before the end while the RM score keeps rising."""
  out = {}
  for key in ("eval/rm_score", "eval/gold/all"):
    evals = [(r[key], r["step"]) for r in rows if key in r]
    if evals:
      best, step = max(evals)
      out.update({f"{key}/max": best, f"{key}/max_step": step, f"{key}/first": evals[0][0]})
  return out


def make_evaluate(evaluator: PolicyEvaluator, cold: PolicyEvaluator, pretrain_eval: Callable | None, ref_params,
                  baseline: dict, policy_params: Callable = lambda params: params) -> Callable:
  """`evaluate(state) -> metrics`: the policy (its EMA when kept) on the held-out prompts against the SFT
  model, whose samples on the same prompts and keys the first call draws into `baseline` (with those of SFT
  sampled colder, and its pretraining loss), and the held-out pretraining loss. `policy_params` makes the
  actor's whole parameters of what the state holds (a LoRA actor's adapters on the reference)."""

  def evaluate(state) -> dict:
    if "sft" not in baseline:  # The SFT model on the same prompts and keys: what PPO is compared with.
      baseline["sft"] = evaluator.sample(ref_params)
      baseline["sft_cold"] = cold.sample(ref_params)
      if pretrain_eval is not None:
        baseline["sft/pretrain"] = pretrain_eval(types.SimpleNamespace(params=ref_params))
    params = policy_params(state.ema if state.ema is not None else state.params["actor"])
    metrics = evaluator.metrics(evaluator.sample(params), baseline["sft"])
    if pretrain_eval is not None:
      metrics.update(pretrain_eval(types.SimpleNamespace(params=strip_value(params))))
    return metrics

  return evaluate


def finish_summary(evaluator: Optional[PolicyEvaluator], baseline: dict, workdir: str, summary: dict) -> dict:
  """A policy stage's loop summary, completed and written: the SFT baselines its evaluations drew into
  `baseline` (`make_evaluate`; nothing when there was no such evaluation), the evaluation history."""
  if "sft" in baseline:
    summary.update(baseline_metrics(evaluator, baseline["sft"], baseline["sft_cold"]))
    summary.update({k.replace("eval/", "sft/"): v for k, v in baseline.get("sft/pretrain", {}).items()})
  summary.update(eval_history(read_metrics(workdir)))
  summary["complete"] = True
  write_summary(workdir, summary)
  return summary
