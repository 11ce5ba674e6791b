"""Stage 4, RLHF with PPO (InstructGPT section 3.5, "PPO-ptx"; Ziegler et al. 2019; the Fudan seed article).

  actor, reference <- init_from (the SFT model);   reward model, critic <- ppo.reward_from (the RM)
                    (ppo.shared_critic: the value head on the actor's trunk; ppo.critic_free: no critic)
                    the critic's bias takes in the mean of the RM's likelihood term on SFT samples
  each of the first ppo.critic_warmup iterations updates the critic alone (critic pre-training)
  prompts <- ppo.prompts_path (JSONL {"prompt"} / {"messages"}) or toyworld training prompts
  ptx     <- ppo.ptx_path, or the toyworld pretraining corpus (only when ppo.ptx_coef > 0)
  each iteration (one step of the one training loop, so it resumes, checkpoints and stops like the others):
    rollout:  sample train.batch_size prompts at ppo.temperature (KV cache, early exit)
              -> policy and reference log-probs, values and the RM score in one jitted pass
    update:   scores normalised by their running moments (ppo.reward_norm) and clipped (ppo.reward_clip);
              KL-shaped rewards, GAE, whitening; epochs x minibatches of clipped PPO (+ ptx);
              adaptive or fixed beta; one jitted program (train/steps.py make_ppo_update)
    rounds:   every ppo.round_every iterations (if set), label the policy's samples with the simulated
              annotator and train the reward model further on all comparisons so far
  evaluate: held-out prompts, sampled like SFT was evaluated: RM score, KL to SFT, gold per task (toyworld),
            win rate against the SFT model's answers by gold and by the RM (eval/policy.py)
  `build_ppo` builds all of it (a `PPOSetup`) without running or writing anything; `run` hands it to the loop.
  ppo.iterations_per_call K >= 1: rollout and update as one compiled program, K iterations a call (lax.scan),
  and train.seeds N > 1 replicas of it vmapped (`compile_iterations`, rl/iteration.py); the Python iteration
  above stays for the gold reward, the judge's reward, iterated rounds, ppo/gold and the per-phase timings.
  ppo.reward=judge: the judge (judge.model, rlhf_jax/judge.py) scores the decoded answers on the host, its
  log-odds of "yes" normalised on SFT samples (`JudgeReward`); the reward model still starts the critic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts import comparisons, models
from rlhf_jax.artifacts.documents import load_documents
from rlhf_jax.artifacts.reward_model import (RewardModelSpec, check_shared_tokenizer, load_reward_model,
                                             normalize_params)
from rlhf_jax.data import pipelines, sources, toyworld
from rlhf_jax.data.pipelines import encode_responses
from rlhf_jax.errors import UserError
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.eval.gold import sample_responses, sampling_tool
from rlhf_jax.eval.lm import heldout_lm_evaluator
from rlhf_jax.eval.policy import PolicyEvaluator, to_host
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.rl import iteration as iteration_lib
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.rl.rollout import make_collect, strip_value
from rlhf_jax.sampling import make_generate, response_token_ids
from rlhf_jax.stages import common
# The evaluation PPO shares with DPO (and `python -m rlhf_jax.evaluate`), in stages/common.py.
from rlhf_jax.stages.common import Prompts, finish_summary, load_prompts, make_evaluate, make_evaluators
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.loop import LoopConfig, combine_seeds, read_summary, train_loop


def ptx_documents(config) -> tuple[list[str], list[str]] | None:
  """(training, validation) pretraining documents for PPO-ptx and for measuring how much PPO regresses the
  pretraining loss: `ppo.ptx_path` (its last data.val_fraction of documents held out), or the toyworld corpus
  and its validation documents (those of the pretraining stage). None when there is no pretraining text."""
  if config.ppo.ptx_path:
    source = sources.open_source(config.ppo.ptx_path, "pretrain")
    texts = [source[i]["text"] for i in range(len(source))]
    cut = max(1, int(round(len(texts) * (1.0 - config.data.val_fraction))))
    return texts[:cut], texts[cut:] or texts[-1:]
  if config.data.source == "toyworld":
    return load_documents(config)
  return None


def critic_params_from_reward(rm_params: dict, likelihood_mean: float = 0.0) -> dict:
  """The critic starts as the reward model: its trunk, and a value head that reads the (normalised) reward
  head, so the first values are the RM's score of each prefix (InstructGPT: "the value function is
  initialized from the RM").

  A reward model with a likelihood term scores gain * (h . v + w * L) + bias, L the response's mean
  log-likelihood under its own LM head. A value head has no L: it is gain * (h . v) + bias + likelihood_mean,
  with likelihood_mean = gain * w * E[L], the term's mean on SFT samples (`make_likelihood_mean`). The bias
  was fitted so that SFT samples score mean 0, and with w L far below 0 (log-probabilities) it is large:
  without the term's mean the critic would start at -gain * w * E[L] on every token (+2.2 on toyworld's RM)
  where the returns have mean about 0. With it, the critic's values of SFT samples at their scored tokens
  average exactly what the samples score (0 on the samples the RM was normalised on). A reward model without
  the term needs nothing (likelihood_mean 0)."""
  head = rm_params["reward_head"]
  value_head = {"kernel": head["gain"] * head["kernel"], "bias": head["bias"] + np.float32(likelihood_mean)}
  return {**critic_trunk(rm_params), "value_head": value_head}


def critic_trunk(rm_params: dict) -> dict:
  """The reward model's trunk (the same arrays): where the critic starts, and a LoRA critic's frozen base."""
  return {k: v for k, v in rm_params.items() if k not in ("reward_head", "lm_head")}


def make_likelihood_mean(reward_model: Transformer, *, end_of_turn_id: int, reward_id: int | None, pad_id: int):
  """`likelihood_mean(rm_params, prompt (B, P), prompt_mask (B, P), sample) -> ()`, jitted: the mean over the
  sampled responses of the likelihood term's part of their score, gain * w * L -- the score less the head's
  other part gain * (h . v) + bias at the same (scored) token -- with each response read as the rollout reads
  it (`rollout.reward_inputs`). 0 for a reward model without the term."""

  @jax.jit
  def likelihood_mean(rm_params, prompt_bp, prompt_mask_bp, sample):
    seq_bs, positions_bs, segments_bs, end_b = rollout_lib.reward_inputs(
        prompt_bp, prompt_mask_bp, sample.tokens, sample.mask.astype(jnp.float32), sample.ended,
        end_of_turn_id=end_of_turn_id, reward_id=reward_id, pad_id=pad_id)
    start_b = jnp.full(seq_bs.shape[:1], prompt_bp.shape[1], jnp.int32)  # The response follows the prompt.
    out = reward_model.apply({"params": rm_params}, seq_bs, positions_bs, segments_bs, response_start_b=start_b)
    scores_b = jnp.take_along_axis(out.rewards, end_b[:, None], axis=1)[:, 0]
    hidden_bd = jnp.take_along_axis(out.hidden, end_b[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    head = rm_params["reward_head"]
    head_b = head["gain"] * (hidden_bd @ head["kernel"]) + head["bias"]
    return jnp.mean(scores_b - head_b)

  return likelihood_mean


def initial_comparisons(reward_from: str, val_fraction: float) -> list[dict]:
  """The comparisons the reward model in `reward_from` was trained on: its `data.path` (config.json) when it
  was given one -- a comparisons stage's directory, say -- else the ones it sampled into its workdir; [] when
  neither can be found (a reward model from elsewhere). The invalid records its data.max_bad_records let it
  leave out are left out again."""
  path = os.path.join(reward_from, "comparisons")
  config_path = os.path.join(reward_from, "config.json")
  limit = 0
  if os.path.exists(config_path):
    with open(config_path) as f:
      data = json.load(f).get("data", {})
    path, limit = data.get("path") or path, data.get("max_bad_records", 0)
  if not os.path.exists(path) or (os.path.isdir(path) and
                                  not os.path.exists(os.path.join(path, comparisons.FILES["train"]))):
    return []
  return comparisons.read_comparisons(path, val_fraction, sources.BadRecords(limit))[0]


class RewardRounds:
  """Iterated rounds (the seeds: "repeat stages 3 and 4"): every `ppo.round_every` iterations the current
  policy answers `ppo.round_prompts` fresh toyworld training prompts K times, the simulated annotator ranks
  the answers (WORKDIR/rounds/round_R.jsonl, ordinary comparison JSONL), and the reward model is trained for
  `ppo.round_steps` steps on every comparison so far (the reward stage's, then each round's), then its gain
  and bias are refitted so that this round's policy samples score mean 0, std 1 -- the scale PPO's KL
  coefficient was chosen for. The reward model's params and optimizer state live in the PPO state, so
  checkpoints and resumption cover them. Each round's training is a run of the one training loop in
  WORKDIR/rounds/round_R/ (its metrics.jsonl, the NaN check, checkpoints: a round interrupted midway resumes
  from its own checkpoint) with the reward step jitted as every step is (`steps.jit_step`: shardings,
  donation), on batches drawn by the comparison pipeline; a resumed PPO run that repeats a finished round
  re-reads its comparisons and its final checkpoint."""

  def __init__(self, config, workdir, rm_model, tokenizer, spec, lm, mesh):
    self.config, self.workdir, self.tokenizer, self.lm, self.mesh = config, workdir, tokenizer, lm, mesh
    ppo = config.ppo
    if config.data.source != "toyworld":
      raise UserError("config key 'ppo.round_every': iterated rounds label samples with toyworld's simulated "
                      "annotator; they need data.source='toyworld'")
    self.seq_len, self.reward_token = spec.seq_len, spec.reward_token
    self.k_max = config.reward.max_responses
    self.initial = initial_comparisons(ppo.reward_from, config.data.val_fraction)
    optim = config.optim.copy_and_resolve_references()
    optim.lr, optim.schedule, optim.warmup_steps, optim.weight_decay = ppo.round_lr, "constant", 0, 0.0
    self.tx, schedule = state_lib.make_optimizer(optim, 1)
    # The variant the reward model was trained with; jitted with the state's shardings at the first round.
    self.rm_step = steps.make_rm_step(rm_model, self.tx, schedule, 1, spec.loss, config.reward.margin,
                                      config.reward.threshold)
    self.step = None
    self.scorer = rm_eval.make_scorer(rm_model, mesh, chunk=ppo.round_batch * self.k_max)

  def due(self, iteration: int) -> bool:
    every = self.config.ppo.round_every
    return every > 0 and iteration > 0 and iteration % every == 0

  def run(self, iteration: int, actor_params, reward_state: dict) -> tuple[dict, dict]:
    """One round before iteration `iteration`. Returns (new reward state, metrics)."""
    config, ppo = self.config, self.config.ppo
    r = iteration // ppo.round_every
    world = toyworld.make_world(config.toyworld.seed)
    path = os.path.join(self.workdir, "rounds", f"round_{r}.jsonl")
    if not os.path.exists(path):
      instances = toyworld.sample_instances(world, ppo.round_prompts, config.toyworld.seed + 100 + r, split="train")
      records, _ = comparisons.toyworld_comparisons(self.lm, actor_params, self.tokenizer, config, instances,
                                                    config.seed + 100 + r)
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        comparisons.write_jsonl(path, records)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"round {r} comparisons written")
    # Every comparison so far, in a fixed order, read back from the files in their validated, normal form.
    every_round = []
    for i in range(1, r + 1):
      round_path = os.path.join(self.workdir, "rounds", f"round_{i}.jsonl")
      source = sources.open_source(round_path, "comparisons") if os.path.getsize(round_path) else []
      every_round.append([source[j] for j in range(len(source))])
    records, everything = every_round[-1], self.initial + [rec for rnd in every_round for rec in rnd]
    if not records:  # Every prompt's answers tied: nothing new to learn from this round.
      return reward_state, {"round/index": float(r), "round/comparisons": float(len(everything))}
    examples = [pipelines.comparison_example(self.tokenizer, rec, self.seq_len, self.k_max, self.reward_token)
                for rec in everything]
    state, summary = self.train(r, reward_state, examples)
    # Refit the gain and bias on this round's policy samples (one per prompt).
    pairs = [(rec["prompt"], rec["responses"][0]) for rec in records]
    tokens, start, end = encode_responses(self.tokenizer, pairs, self.seq_len, self.reward_token)
    head = jax.device_get(state.params["reward_head"])
    fit = rm_eval.fit_normalization(self.scorer(state.params, tokens, start, end), float(head["gain"]),
                                    float(head["bias"]))
    params = normalize_params(state.params, fit)
    params = jax.device_put(params, jax.tree.map(lambda x: x.sharding, reward_state["params"]))
    gold = [g for rec in records for g in rec["gold"]]
    metrics = {"round/index": float(r), "round/comparisons": float(len(everything)),
               "round/rm_loss": summary["train/loss"], "round/sample_gold": float(np.mean(gold)),
               "round/raw_mean": fit["raw_mean"], "round/raw_std": fit["raw_std"]}
    return {"params": params, "opt_state": state.opt_state}, metrics

  def train(self, r: int, reward_state: dict, examples: list[dict]) -> tuple[state_lib.TrainState, dict]:
    """Round `r`'s `ppo.round_steps` steps from `reward_state` on `examples`, a run of the one training loop in
    WORKDIR/rounds/round_R/. Returns (final state, the loop's summary)."""
    config, ppo = self.config, self.config.ppo
    replicated = mesh_lib.replicated(self.mesh)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=reward_state["params"],
                                 opt_state=reward_state["opt_state"], rng=jax.random.PRNGKey(config.seed + r))
    shardings = state_lib.TrainState(step=replicated, rng=replicated,
                                     **{k: jax.tree.map(lambda x: x.sharding, v) for k, v in reward_state.items()})
    if self.step is None:  # One compilation for every round: the shapes do not change.
      example = pipelines.to_rm_batch({k: np.stack([v] * ppo.round_batch) for k, v in examples[0].items()})
      self.step = steps.jit_step(self.rm_step, shardings, example, self.mesh)
    loop = LoopConfig(total_steps=ppo.round_steps, log_every=ppo.round_steps, eval_every=ppo.round_steps,
                      checkpoint_every=ppo.round_steps, tokens_per_step=ppo.round_batch * self.k_max * self.seq_len,
                      keep_checkpoints=1, desc=f"reward round {r}")
    data = pipelines.comparison_pipeline(examples, ppo.round_batch, config.seed + 1000 + r)
    return train_loop(loop, workdir=os.path.join(self.workdir, "rounds", f"round_{r}"), state=state,
                      shardings=shardings, step_fn=self.step, rng=jax.random.PRNGKey(config.seed + 1000 + r),
                      data=iter(data), make_batch=lambda rows: mesh_lib.shard_batch(pipelines.to_rm_batch(rows),
                                                                                    self.mesh))


@dataclasses.dataclass(frozen=True)
class PPOSetup:
  """Everything one PPO run is made of, built by `build_ppo` and not yet run: `run` hands it to the training
  loop, benchmarks/ppo_iteration.py times its `generate`, `collect` and `update`, a test runs its `step_fn`.

    actor          the policy: LM head, and the value head too with ppo.shared_critic; `state.params["actor"]`
    reference      the frozen SFT model (LM head) and its `ref_params`, for the KL and the baselines
    critic         the separate critic (the reward model's trunk with a value head), `state.params["critic"]`;
                   None with ppo.shared_critic or ppo.critic_free
    reward_model   the scorer and its `rm_params` (`reward_spec`: its reward.json); with iterated rounds
                   (`rounds`) the trained copy in `state.reward` scores the rollouts instead
    state          the initial PPOState, laid out by `shardings` (`train_loop` restores a checkpoint into it;
                   the first `update` donates it)
    data           `data()` -> a fresh endless iterator over this host's rows of each iteration (prompts
                   (B, P), their mask and index, and "ptx" rows with PPO-ptx); `make_batch` shards them
    generate       `(policy params, prompt_bp, prompt_mask_bp, rng) -> SampleOutput`, at ppo.temperature
    collect        `(actor, critic, ref, rm params, prompt_bp, prompt_mask_bp, sample) -> Rollout`
    update         `(state, rollout, ptx, rng, ref_params or None) -> (state, metrics)`, state donated
    step_fn        one iteration, `(state, batch, rng) -> (state, metrics)`: rollout, then update; with
                   ppo.iterations_per_call K >= 1 the compiled program of K iterations (`compile_iterations`)
    iteration      the same iteration as a pure function `(state, batch, rng, frozen) -> (state, metrics)`,
                   `frozen` = {"ref": ref_params, "rm": rm_params} (rl/iteration.py), for reward-model
                   rewards: what the compiled program scans and vmaps, for a notebook or a benchmark to jit
    evaluate       `(state) -> metrics` on `eval_prompts`; the first call fills `baseline` with the SFT
                   model's samples (and its pretraining loss), which the summary reports
  and the finalised config, the mesh, the tokenizer, toyworld's `world` (or None), the optimizers `txs`, the
  update's `settings`, the evaluators behind `evaluate` (`make_evaluators`; `pretrain_eval`, the held-out
  pretraining loss, or None), the training loop's settings `loop` and its root key `rng`.
  """
  config: Any
  mesh: Any
  tokenizer: Tokenizer
  world: toyworld.World | None
  actor: Transformer
  reference: Transformer
  critic: Transformer | None
  reward_model: Transformer
  ref_params: dict
  rm_params: dict
  reward_spec: RewardModelSpec
  txs: dict
  settings: steps.PPOSettings
  rounds: RewardRounds | None
  state: Any
  shardings: Any
  train_prompts: Prompts
  eval_prompts: Prompts
  data: Callable[[], Iterator[dict]]
  make_batch: Callable[[dict], dict]
  generate: Callable
  collect: Callable
  update: Callable
  step_fn: Callable
  iteration: Callable
  evaluator: PolicyEvaluator
  cold: PolicyEvaluator
  pretrain_eval: Callable | None
  evaluate: Callable
  baseline: dict
  loop: LoopConfig
  rng: jax.Array
  judge_reward: JudgeReward | None = None  # ppo.reward=judge's scorer, with its normalisation (`fitted`).


def load_models(config, workdir: str, mesh) -> tuple[Transformer, dict, Tokenizer, Transformer, dict, dict]:
  """(actor, SFT params, tokenizer, reward model, its params, its reward.json spec): the SFT model from
  `init_from` (with a fresh value head under ppo.shared_critic) and the reward model from `ppo.reward_from`,
  checked against each other and against the positions a rollout needs. The tokenizer is the workdir's (a
  resumed run) or init_from's; nothing is written (`run` saves it when the run starts)."""
  ppo = config.ppo
  actor_heads = ("lm", "value") if ppo.shared_critic else ("lm",)
  actor, sft_params, tokenizer = models.load_pretrained(config.init_from, mesh, config.model, heads=actor_heads)
  common.record_model(config, workdir, actor.config)
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer, save=False)
  models.check_vocab(tokenizer, actor.config, config.init_from)
  rm_model, rm_params, rm_tokenizer, spec = load_reward_model(ppo.reward_from, mesh, config.model)
  check_shared_tokenizer(ppo.reward_from, rm_tokenizer, config.init_from, tokenizer)
  width = ppo.prompt_len + ppo.max_new_tokens + 2
  for name, model in (("init_from", actor), ("ppo.reward_from", rm_model)):
    if model.config.position == "learned" and width > model.config.max_len:
      raise UserError(f"config keys 'ppo.prompt_len' + 'ppo.max_new_tokens': prompt, response and closing "
                      f"tokens need {width} positions, more than the {model.config.max_len} learned positions "
                      f"of the {name} model")
  return actor, sft_params, tokenizer, rm_model, rm_params, spec


def training_data(config, tokenizer, train_prompts: Prompts, docs) -> Callable[[int], Iterable[dict]]:
  """`make_data(seed)`: the endless PPO inputs of a run with that seed (`pipelines.ppo_pipeline`):
  train.batch_size rows of `train_prompts` an iteration and, with PPO-ptx, epochs x minibatches x
  ppo.ptx_batch windows of the training documents `docs[0]`."""
  ppo = config.ppo
  ptx_rows = ppo.ptx_batch * ppo.epochs * ppo.minibatches if ppo.ptx_coef > 0 else 0
  if ptx_rows and docs is None:
    raise UserError("config key 'ppo.ptx_path': ppo.ptx_coef > 0 needs pretraining text for PPO-ptx")
  # PPO-ptx reads the training documents as one token stream (BOS + text + EOS each, concatenated).
  ptx_stream = (np.concatenate([pipelines.document_ids(tokenizer, text) for text in docs[0]]) if ptx_rows
                else None)
  return lambda seed: pipelines.ppo_pipeline(train_prompts.tokens, train_prompts.mask, config.train.batch_size,
                                             seed, ptx_stream, ptx_rows, ppo.ptx_seq_len, ppo.samples_per_prompt)


def batch_maker(mesh, leading: int = 0, seed_axis: bool = False) -> Callable[[dict], dict]:
  """`make_batch(rows) -> batch`: this host's rows sharded over the mesh, the ptx rows as an LM batch; the
  rows after `leading` stacked axes (K iterations a compiled call) and a seed axis (`mesh.shard_batch`)."""
  shard = lambda tree: mesh_lib.shard_batch(tree, mesh, seed_axis=seed_axis, leading=leading)

  def make_batch(rows):
    batch = shard({k: v for k, v in rows.items() if k != "ptx"})
    if "ptx" in rows:
      batch["ptx"] = shard(pipelines.to_lm_batch({"tokens": rows["ptx"]}))
    return batch

  return make_batch


def make_critic(config, rm_model: Transformer, rm_params: dict, *, tokenizer, reward_id: int | None,
                first_batch: Callable[[], dict], generate, ref_params, mesh) -> tuple[Transformer | None, dict | None]:
  """(the separate critic, its initial params: `critic_params_from_reward`), or (None, None) when the actor
  carries the value head (ppo.shared_critic) or there is no critic (ppo.critic_free). A reward model with a
  likelihood term has the term's mean measured on the SFT policy's answers to `first_batch()`. With
  lora.rank > 0 the critic is adapted too: its params are its value head and fresh adapters, on the frozen
  `critic_trunk(rm_params)`."""
  ppo = config.ppo
  if ppo.critic_free and ppo.shared_critic:
    raise UserError("config keys 'ppo.critic_free' and 'ppo.shared_critic': choose one (no critic, or a value "
                    "head on the actor's trunk)")
  if ppo.shared_critic or ppo.critic_free:
    return None, None
  critic = rm_model.clone(heads=("value",), reward_likelihood=0.0)
  likelihood_mean = 0.0
  if rm_model.reward_likelihood > 0:  # Measured on the SFT policy's answers to the first training batch.
    first = first_batch()
    sample = generate(ref_params, first["prompt"], first["prompt_mask"], jax.random.PRNGKey(config.seed + 12))
    measure = make_likelihood_mean(rm_model, end_of_turn_id=tokenizer.end_of_turn_id, reward_id=reward_id,
                                   pad_id=tokenizer.pad_id)
    likelihood_mean = float(measure(rm_params, first["prompt"], first["prompt_mask"], sample))
    if jax.process_index() == 0:
      print(f"ppo: the critic's bias takes in the reward model's likelihood term, {likelihood_mean:+.3f} on "
            f"average over {config.train.batch_size} SFT samples")
  params = critic_params_from_reward(rm_params, likelihood_mean)
  spec = lora_lib.LoraSpec.from_config(config.lora)
  if spec is not None:
    critic = critic.clone(lora=spec)
    adapters = state_lib.init_trainable(critic, jax.random.PRNGKey(config.seed + 14), mesh)
    params = lora_lib.join(lora_lib.split(params)[1], adapters)
  return critic, params


def make_optimizers(config, with_critic: bool) -> dict:
  """{"actor": optimizer[, "critic": optimizer]}: the actor's is `optim`, its schedule counting its own
  updates (none during the critic's warm-up); the critic's the same with ppo.critic_lr over every update."""
  ppo, train = config.ppo, config.train
  txs = {"actor": state_lib.make_optimizer(
      config.optim, (train.steps - ppo.critic_warmup) * ppo.epochs * ppo.minibatches)[0]}
  if with_critic:
    critic_optim = config.optim.copy_and_resolve_references()
    critic_optim.lr = ppo.critic_lr
    txs["critic"], _ = state_lib.make_optimizer(critic_optim, train.steps * ppo.epochs * ppo.minibatches)
  return txs


def rollout_gold(world, instances: list, index_b: np.ndarray, texts: list[str]) -> np.ndarray:
  """(B,) float32: toyworld's gold score of each sampled answer `texts[b]`, answering `instances[index_b[b]]`."""
  return np.array([toyworld.gold_score(world, instances[i], text) for i, text in zip(index_b, texts)], np.float32)


class JudgeReward:
  """ppo.reward=judge: a rollout's score is the judge's log-odds of "yes" to "is the answer good?"
  (`Judge.verdicts`, a generative reward model), normalised as the reward stage normalises a reward model's
  score: to mean 0 and std 1 on reward.norm_samples answers of the SFT model to training prompts, sampled at
  ppo.temperature (`fit`, recorded in the summary as judge/raw_mean and judge/raw_std)."""

  def __init__(self, config, mesh):
    self.judge = models.load_judge(config, mesh)
    self.mean, self.std = 0.0, 1.0

  def fit(self, config, lm: Transformer, sft_params, tokenizer, train_prompts: Prompts) -> dict:
    n = config.reward.norm_samples
    conversations = [train_prompts.conversations[i % len(train_prompts.conversations)] for i in range(n)]
    texts, _ = sample_responses(lm, sft_params, tokenizer, conversations, config.sampling, config.seed + 17,
                                temperature=config.ppo.temperature)
    fit = rm_eval.fit_normalization(self.judge.verdicts(conversations, texts), 1.0, 0.0)
    self.mean, self.std = fit["raw_mean"], 1.0 / fit["gain"]  # gain = 1 / std (1 for constant scores).
    self.fitted = {"judge/raw_mean": fit["raw_mean"], "judge/raw_std": fit["raw_std"], "judge/norm_samples": n}
    return self.fitted

  def __call__(self, conversations: list, texts: list[str]) -> np.ndarray:
    return ((self.judge.verdicts(conversations, texts) - self.mean) / self.std).astype(np.float32)


def make_ppo_step(config, *, generate, collect, update, ref_params, rm_params, rounds: RewardRounds | None,
                  tokenizer, world, train_prompts: Prompts, lora_actor: bool = False,
                  critic_base: dict | None = None, judge_reward: JudgeReward | None = None) -> Callable:
  """`ppo_step(state, batch, rng) -> (state, metrics)`: one PPO iteration, a reward-model round first when one
  is due; Python, as generation's early exit and the phase timings need the host. `lora_actor`: the state
  holds the actor's adapters, on the reference's weights; `critic_base`: a LoRA critic's frozen trunk;
  `judge_reward`: ppo.reward=judge's scorer."""
  ppo = config.ppo
  needs_ref = steps.PPOSettings.from_config(ppo).kl_needs_reference or lora_actor
  loss_ref = ref_params if needs_ref else None

  def ppo_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    round_metrics = {}
    actor_params = state.params["actor"]
    if lora_actor:  # The whole actor: its adapters on the reference's weights.
      actor_params = lora_lib.join(ref_params, actor_params)
    if rounds is not None and rounds.due(int(state.step)):
      reward_state, round_metrics = rounds.run(int(state.step), strip_value(actor_params), state.reward)
      state = state.replace(reward=reward_state)
    started = time.time()
    sample = generate(strip_value(actor_params), batch["prompt"], batch["prompt_mask"], jax.random.fold_in(rng, 0))
    scorer_params = state.reward["params"] if rounds is not None else rm_params
    critic_params = state.params.get("critic")
    if critic_base is not None:
      critic_params = lora_lib.join(critic_base, critic_params)
    rollout = collect(actor_params, critic_params, ref_params, scorer_params, batch["prompt"],
                      batch["prompt_mask"], sample)
    rollout = jax.block_until_ready(rollout)
    rollout_s = time.time() - started  # Without the host's decoding and gold scoring below.
    host_sample = jax.tree.map(to_host, sample)
    index_b = to_host(batch["index"])
    texts = None  # The answers as text, decoded once for the host's scorers (gold, the judge).
    if train_prompts.instances is not None or ppo.reward == "judge":
      texts = [tokenizer.decode(t) for t in response_token_ids(host_sample)]
    gold = None
    if train_prompts.instances is not None:
      gold = rollout_gold(world, train_prompts.instances, index_b, texts)
    scores = None
    if ppo.reward == "gold":  # The oracle: the gold scorer replaces the reward model's score.
      scores = ppo.gold_scale * gold - ppo.unfinished_penalty * (~host_sample.ended).astype(np.float32)
    elif ppo.reward == "judge":  # A generative reward model: the judge's normalised log-odds of "yes".
      asked = [train_prompts.conversations[i] for i in index_b]
      scores = judge_reward(asked, texts) - ppo.unfinished_penalty * (~host_sample.ended).astype(np.float32)
    if scores is not None:
      rollout = rollout.replace(scores=jax.make_array_from_callback(
          scores.shape, rollout.scores.sharding, lambda idx: scores[idx]))
    new_tokens = float(host_sample.lengths.sum())
    started = time.time()
    state, metrics = update(state, rollout, batch.get("ptx"), jax.random.fold_in(rng, 1), loss_ref, critic_base)
    metrics = jax.block_until_ready(metrics)
    update_s = time.time() - started
    metrics = {**metrics, **round_metrics, "perf/rollout_s": rollout_s, "perf/update_s": update_s,
               "perf/rollout_tokens_per_s": new_tokens / rollout_s,
               "perf/update_tokens_per_s": ppo.epochs * new_tokens / update_s}
    if gold is not None:
      metrics["ppo/gold"] = float(gold.mean())
    return state, metrics

  return ppo_step


def loop_config(config) -> LoopConfig:
  """The training loop's settings: train.steps iterations, each counted as its batch's new-token budget."""
  train = config.train
  return LoopConfig(total_steps=train.steps, log_every=train.log_every, eval_every=train.eval_every,
                    checkpoint_every=train.checkpoint_every,
                    tokens_per_step=train.batch_size * config.ppo.max_new_tokens,
                    keep_checkpoints=train.keep_checkpoints, desc="ppo")


def build_ppo(config, workdir: str, mesh=None) -> PPOSetup:
  """Builds everything a PPO run needs (see `PPOSetup`) from a finalised config, without running it or
  writing anything: `workdir` is read only for a resumed run's tokenizer, and kept by iterated rounds, which
  write their comparisons there when they run. `mesh`: the run's mesh (default: from `config.mesh`)."""
  ppo = config.ppo
  if not config.init_from:
    raise UserError("config key 'init_from': PPO starts from an SFT model; name its workdir")
  if not ppo.reward_from:
    raise UserError("config key 'ppo.reward_from': PPO needs a trained reward model; name the reward workdir")
  mesh = common.make_mesh(config) if mesh is None else mesh
  actor, sft_params, tokenizer, rm_model, rm_params, spec = load_models(config, workdir, mesh)
  reference, lm = actor.clone(heads=("lm",)), actor.clone(heads=("lm",))
  ref_params = strip_value(sft_params)
  lora_spec = lora_lib.LoraSpec.from_config(config.lora)
  policy_params = lambda params: params
  if lora_spec is not None:  # The actor trains adapters; its frozen base is the reference: one copy of the weights.
    actor, lm = actor.clone(lora=lora_spec), lm.clone(lora=lora_spec)
    adapters = state_lib.init_trainable(actor, jax.random.PRNGKey(config.seed + 13), mesh)
    sft_params = lora_lib.join(lora_lib.split(sft_params)[1], adapters)  # With a shared critic's value head.
    policy_params = lambda params: lora_lib.join(ref_params, params)
  world = toyworld.make_world(config.toyworld.seed) if config.data.source == "toyworld" else None
  train_prompts, eval_prompts = load_prompts(config, tokenizer, world)
  docs = ptx_documents(config)
  make_data, make_batch = training_data(config, tokenizer, train_prompts, docs), batch_maker(mesh)
  dataset = make_data(config.seed)
  reward_id = tokenizer.reward_id if spec.reward_token else None
  generate = make_generate(lm, max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature,
                           stop_ids=(tokenizer.end_of_turn_id, tokenizer.eos_id), pad_id=tokenizer.pad_id,
                           tool=sampling_tool(config.sampling, tokenizer))
  critic, critic_params = make_critic(config, rm_model, rm_params, tokenizer=tokenizer, reward_id=reward_id,
                                      first_batch=lambda: make_batch(next(iter(dataset))), generate=generate,
                                      ref_params=ref_params, mesh=mesh)
  critic_base = critic_trunk(rm_params) if critic is not None and critic.lora is not None else None
  txs = make_optimizers(config, critic is not None)
  rounds = RewardRounds(config, workdir, rm_model, tokenizer, spec, lm, mesh) if ppo.round_every > 0 else None
  models, params = {"actor": actor}, {"actor": sft_params}
  if critic is not None:
    models["critic"], params["critic"] = critic, critic_params
  state, shardings = state_lib.create_ppo_state(models, txs, params, mesh, jax.random.PRNGKey(config.seed),
                                                ppo.kl_coef, ema=ppo.ema_decay > 0,
                                                reward=rm_params if rounds else None,
                                                reward_tx=rounds.tx if rounds else None,
                                                reward_norm=ppo.reward_norm)
  collect = make_collect(actor, reference, critic, rm_model, temperature=ppo.temperature,
                         end_of_turn_id=tokenizer.end_of_turn_id, reward_id=reward_id, pad_id=tokenizer.pad_id,
                         unfinished_penalty=ppo.unfinished_penalty)
  settings = steps.PPOSettings.from_config(ppo)
  update_fn = steps.make_ppo_update(actor, critic, txs, settings, reference)
  update = steps.jit_ppo_update(update_fn, shardings, jax.tree.map(lambda x: x.sharding, ref_params), mesh)
  iteration = iteration_lib.make_ppo_iteration(generate, collect, update_fn, kl_in_loss=settings.kl_needs_reference,
                                               mesh=mesh, lora_actor=lora_spec is not None,
                                               critic_base=None if critic_base is None else critic_trunk)
  judge_reward = None
  if ppo.reward == "judge":
    judge_reward = JudgeReward(config, mesh)
    judge_reward.fit(config, lm, strip_value(ref_params), tokenizer, train_prompts)
  step_fn = make_ppo_step(config, generate=generate, collect=collect, update=update, ref_params=ref_params,
                          rm_params=rm_params, rounds=rounds, tokenizer=tokenizer, world=world,
                          train_prompts=train_prompts, lora_actor=lora_spec is not None, critic_base=critic_base,
                          judge_reward=judge_reward)
  evaluator, cold = make_evaluators(config, actor=actor, ref_params=ref_params, rm_model=rm_model,
                                    rm_params=rm_params, tokenizer=tokenizer, mesh=mesh, world=world,
                                    eval_prompts=eval_prompts, reward_token=reward_id is not None)
  pretrain_eval = None if docs is None else heldout_lm_evaluator(  # As the pretraining stage measures it.
      lm, mesh, tokenizer, docs[1], config.train.seq_len, config.train.batch_size, config.seed, prefix="eval/pretrain")
  baseline = {}
  setup = PPOSetup(
      config=config, mesh=mesh, tokenizer=tokenizer, world=world, actor=actor, reference=reference, critic=critic,
      reward_model=rm_model, ref_params=ref_params, rm_params=rm_params, reward_spec=spec, txs=txs,
      settings=settings, rounds=rounds, state=state, shardings=shardings, train_prompts=train_prompts,
      eval_prompts=eval_prompts, data=lambda: iter(dataset), make_batch=make_batch, generate=generate,
      collect=collect, update=update, step_fn=step_fn, iteration=iteration, evaluator=evaluator, cold=cold,
      pretrain_eval=pretrain_eval, evaluate=make_evaluate(evaluator, cold, pretrain_eval, ref_params, baseline,
                                                          policy_params),
      baseline=baseline, loop=loop_config(config), rng=jax.random.PRNGKey(config.seed + 1),
      judge_reward=judge_reward)
  return compile_iterations(setup, make_data) if ppo.iterations_per_call else setup


def replica_critic(setup: PPOSetup, make_data: Callable[[int], Iterable[dict]], seed: int) -> dict:
  """The initial critic params of the run with this seed (`make_critic` on its first batch and keys)."""
  config = setup.config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  reward_id = setup.tokenizer.reward_id if setup.reward_spec.reward_token else None
  return make_critic(config, setup.reward_model, setup.rm_params, tokenizer=setup.tokenizer, reward_id=reward_id,
                     first_batch=lambda: setup.make_batch(next(iter(make_data(seed)))), generate=setup.generate,
                     ref_params=setup.ref_params, mesh=setup.mesh)[1]


def compile_iterations(setup: PPOSetup, make_data: Callable[[int], Iterable[dict]]) -> PPOSetup:
  """The setup with `step_fn` the compiled iteration (ppo.iterations_per_call K >= 1, rl/iteration.py: K
  iterations a call on K stacked batches) and, with train.seeds N > 1, N replicas in one program: the state
  stacked (replica i keyed by config.seed + i), each replica's own prompts (`make_data(seed + i)`) and root
  key, and `evaluate` giving each figure's mean over the replicas, `/seed_std` and `/seeds`, all against the
  one SFT baseline (the evaluations' keys do not depend on config.seed)."""
  config, mesh = setup.config, setup.mesh
  k, n = config.ppo.iterations_per_call, config.train.seeds
  frozen = {"ref": setup.ref_params, "rm": setup.rm_params}
  state, shardings, rng, data, evaluate = setup.state, setup.shardings, setup.rng, setup.data, setup.evaluate
  if n > 1:
    seeds = [config.seed + i for i in range(n)]
    keys = lambda offset: jnp.stack([jax.random.PRNGKey(seed + offset) for seed in seeds])
    state, shardings = state_lib.stack_replicas(state, shardings, keys(0))
    if setup.critic is not None:  # Each replica's critic bias measured on its own first batch (`make_critic`).
      critics = [replica_critic(setup, make_data, seed) for seed in seeds]
      state = state.replace(params={**state.params, "critic": jax.device_put(
          jax.tree.map(lambda *x: jnp.stack(x), *critics), shardings.params["critic"])})
    rng = keys(1)
    data = lambda: pipelines.SeedIterators([iter(make_data(seed)) for seed in seeds])
    take = state_lib.unstack_seed(shardings)
    evaluate = lambda state: combine_seeds([setup.evaluate(take(state, i)) for i in range(n)])
  run = iteration_lib.jit_iterations(setup.iteration, shardings, jax.tree.map(lambda x: x.sharding, frozen), mesh,
                                     per_call=k, seeds=n)
  loop = dataclasses.replace(setup.loop, steps_per_call=k, tokens_per_step=n * setup.loop.tokens_per_step)
  return dataclasses.replace(
      setup, state=state, shardings=shardings, rng=rng, data=data, evaluate=evaluate, loop=loop,
      make_batch=batch_maker(mesh, leading=int(k > 1), seed_axis=n > 1),
      step_fn=lambda state, batch, rng: run(state, batch, rng, frozen))


def actor_counts(setup: PPOSetup) -> dict:
  """num_params/actor, and with LoRA num_trainable_params/actor: what the actor trains (its adapters)."""
  trained = state_lib.count_params(setup.state.params["actor"]) // setup.config.train.seeds
  if setup.actor.lora is None:
    return {"num_params/actor": trained}
  return {"num_params/actor": state_lib.count_params(setup.ref_params) + trained,
          "num_trainable_params/actor": trained}


def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"ppo: already finished in {workdir}; nothing to do")
    return summary
  setup = build_ppo(config, workdir)
  models.save_tokenizer(workdir, setup.tokenizer)
  _, summary = train_loop(setup.loop, workdir=workdir, state=setup.state, shardings=setup.shardings,
                          step_fn=setup.step_fn, rng=setup.rng, data=setup.data(), make_batch=setup.make_batch,
                          evaluate=setup.evaluate, config=config,
                          extra_summary={**actor_counts(setup),
                                         **(setup.judge_reward.fitted if setup.judge_reward else {})})
  summary = finish_summary(setup.evaluator, setup.baseline, workdir, summary)
  print(common.result_line("ppo", summary, ["eval/rm_score", "eval/kl", "eval/gold/all", "sft/gold/all",
                                            "eval/win_rate_gold", "eval/win_rate_rm"]))
  return summary
