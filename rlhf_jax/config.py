"""Experiment configs: Python files with `get_config(arg)`, locked, overridable from the command line.

An experiment file (`experiments/NAME.py`) starts from `base_config()` — the schema of every key a run can
set — changes what it needs and returns it. `load_config("experiments/NAME.py:smoke")` imports the file,
calls `get_config("smoke")`, locks the result and returns it; `apply_overrides` applies `a.b=value`
strings from `--config.a.b=value` flags. Because the config is locked and every key exists in the schema,
a misspelt key or a value of the wrong type stops the run with one line naming the key (big_vision and
lm-human-preference-details work the same way).

`finalize(config)` checks cross-key constraints once, before anything is built, so that code further down
can trust the config instead of sprinkling `config.get(key, default)` checks through the stages.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict

from rlhf_jax import losses
from rlhf_jax.errors import UserError
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.model import quant
from rlhf_jax.rl import advantages

ConfigDict = ml_collections.ConfigDict
# The stages that train low-rank adapters when lora.rank > 0.
LORA_STAGES = ("sft", "reward", "dpo", "ppo")


def model_config(family: str = "gpt2", **overrides: Any) -> ConfigDict:
  """The `model` section for one of the two families; keyword arguments override single keys.

  gpt2: learned positions, LayerNorm, GELU (tanh form), dense MLP, tied embeddings, biases.
  llama: rotary positions, RMSNorm, SwiGLU, grouped-query attention, untied output, no biases.
  """
  common = dict(
      vocab_size=256,
      d_model=128,
      n_layers=4,
      n_heads=4,
      n_kv_heads=0,  # 0: n_heads (multi-head attention); fewer for grouped-query attention.
      head_dim=0,  # 0: d_model // n_heads.
      d_ff=512,
      max_len=256,
      rope_theta=10000.0,
      norm_eps=1e-5,
      dropout=0.0,
      init_std=0.02,
      dtype="float32",
      remat="none",
      scan_layers=False,
      attention_impl="xla",
  )
  families = {
      "gpt2": dict(position="learned", norm="layernorm", mlp="dense", activation="gelu_tanh",
                   use_bias=True, tie_embeddings=True),
      "llama": dict(position="rope", norm="rmsnorm", mlp="gated", activation="silu",
                    use_bias=False, tie_embeddings=False, norm_eps=1e-6),
  }
  if family not in families:
    raise UserError(f"unknown model family {family!r}; expected one of {sorted(families)}")
  values = {**common, **families[family]}
  for key in overrides:
    if key not in values:
      raise UserError(f"unknown model key {key!r} in model_config(); known keys: {sorted(values)}")
  values.update(overrides)
  return ConfigDict(values)


# The model keys that pick one of a few implementations (model/transformer.py has each).
MODEL_CHOICES = dict(position=("learned", "rope"), norm=("layernorm", "rmsnorm"), mlp=("dense", "gated"),
                     activation=("gelu_tanh", "gelu", "silu", "relu"), dtype=("float32", "bfloat16"),
                     remat=("none", "full", "dots"), attention_impl=("xla", "cudnn", "auto"))


def resolve_model(model: Any) -> dict:
  """A `model` section (ConfigDict or dict) checked, as the plain dict `TransformerConfig` is built from, with
  head_dim and n_kv_heads 0 resolved; errors name the offending key. A key the section lacks (a config.json or
  model.json written before the key existed, a Hugging Face config that does not set it) takes
  `model_config()`'s value, the gpt2 family's: the schema is the one place a model default is written."""
  given = dict(model)
  values = dict(model_config())
  for key in given:
    if key not in values:
      raise UserError(f"unknown config key 'model.{key}'")
  values.update(given)
  for key, choices in MODEL_CHOICES.items():
    _check_choice(f"model.{key}", values[key], choices)
  for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
    if values[key] < 1:
      raise UserError(f"config key 'model.{key}' must be >= 1, got {values[key]}")
  d_model, n_heads = values["d_model"], values["n_heads"]
  if not values["head_dim"]:
    if d_model % n_heads:
      raise UserError(f"config key 'model.n_heads': {n_heads} does not divide model.d_model={d_model} "
                      "(or set model.head_dim)")
    values["head_dim"] = d_model // n_heads
  if not values["n_kv_heads"]:
    values["n_kv_heads"] = n_heads
  if values["n_kv_heads"] < 1 or n_heads % values["n_kv_heads"]:
    raise UserError(f"config key 'model.n_kv_heads': {values['n_kv_heads']} must divide model.n_heads={n_heads}")
  if values["position"] == "rope" and values["head_dim"] % 2:
    raise UserError(f"config key 'model.head_dim': rotary positions need an even head_dim, got "
                    f"{values['head_dim']}")
  if not 0.0 <= values["dropout"] < 1.0:
    raise UserError(f"config key 'model.dropout' must be in [0, 1), got {values['dropout']}")
  return values


def mesh_config() -> ConfigDict:
  """The `mesh` section: axis sizes (-1 = all remaining devices) and multi-host start-up."""
  return ConfigDict(dict(
      data=1,
      fsdp=-1,
      tensor=1,
      # Multi-host: "auto" calls jax.distributed.initialize() with no arguments (TPU VMs, SLURM, ...) when
      # more than one process is launched; "on" always calls it with the settings below; "off" never.
      distributed="auto",
      coordinator_address="",
      num_processes=0,
      process_id=-1,
  ))


def optim_config() -> ConfigDict:
  """The `optim` section: AdamW with warmup and decay, clipping, accumulation, a weight-decay mask."""
  return ConfigDict(dict(
      lr=3e-4,
      min_lr_ratio=0.1,  # The decay ends at lr * min_lr_ratio.
      warmup_steps=100,
      schedule="cosine",  # cosine | linear | constant
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,
      # Norm scales, biases and embeddings are not decayed unless asked (GPT-2/nanoGPT practice).
      decay_embeddings=False,
      grad_clip=1.0,  # Global-norm clipping; 0 disables it.
      grad_accum_steps=1,
  ))


def base_config() -> ConfigDict:
  """The schema: every key a run may set, with its default. Experiment files start here."""
  config = ConfigDict()
  config.stage = "pretrain"
  config.seed = 0
  config.model = model_config()
  config.mesh = mesh_config()
  config.optim = optim_config()
  config.train = ConfigDict(dict(
      steps=1000,
      batch_size=16,  # Global batch, in sequences, summed over all hosts and devices.
      seq_len=128,
      log_every=50,
      eval_every=250,
      checkpoint_every=500,
      keep_checkpoints=2,
      # N > 1 trains N independent replicas (seeds seed, seed + 1, ...) as one compiled program, vmapped over
      # a leading seed axis: for small models that leave the device idle, so a comparison reports means and
      # spreads. Pretraining, SFT, and PPO with ppo.iterations_per_call >= 1; the workdir then holds N models
      # (stages/common.py:train_lm, stages/ppo.py).
      seeds=1,
  ))
  config.data = ConfigDict(dict(
      source="text",  # text: read data.path | toyworld: generate the built-in world
      path="",  # A .txt file or directory, .jsonl, .array_record, or tfds:NAME/SPLIT.
      layout="packed",  # packed: documents packed with segment ids | windows: one token stream (nanoGPT)
      # sentencepiece (trained on the training text) | char | a tokenizer file, or a workdir that holds one.
      tokenizer="sentencepiece",
      tokenizer_vocab_size=1024,
      val_fraction=0.1,
      # Invalid records of data.path (SFT and reward stages) that may be left out, each named as a warning
      # and in the summary (data/bad_records); one more stops the run. 0: the first invalid record stops it.
      max_bad_records=0,
      # SFT: the share of its training tokens that are pretraining documents (loss on every token), so that
      # instruction tuning does not wipe out the language model (experiments/NOTES.md, session 22). The
      # documents: data.pretrain_mix_path (pretraining text, read as the pretraining stage reads data.path),
      # or for toyworld its corpus. 0: demonstrations only.
      pretrain_mix=0.0,
      pretrain_mix_path="",
  ))
  # The run this one starts from: a workdir of ours, a `python -m rlhf_jax.convert from-hf` output, or a
  # Hugging Face GPT-2/Llama directory (SFT starts from pretraining, the reward model from SFT, ...).
  config.init_from = ""
  config.toyworld = ConfigDict(dict(
      seed=0,  # The world (lexicon) and its data.
      num_docs=20000,  # Pretraining documents (a further 5% are generated for validation).
      num_sft=4000,  # Demonstrations for SFT.
      num_val_sft=400,  # Held-out demonstrations (held-out instances) for the SFT validation loss.
      # The demonstrators (toyworld.demonstrate): how often they write a flawed answer (a wrong sum, a swapped
      # word, ...), comply with a request they should decline, break an instruction's constraint, and pad an
      # answer with filler. Their own gold is 0.856-0.876 with these rates on worlds 0-3 (SFT's summary reports
      # it): about today's 0.875, with the errors moved from content to habits RLHF can fix (toyworld.py).
      error_rate=0.02,
      comply_rate=0.5,  # Of the indirectly phrased requests to decline (the direct ones are always declined).
      constraint_error_rate=0.2,
      filler_rate=0.45,  # Of the answers to the open-ended tasks (reviews and lists).
      # Of the right answers to arithmetic questions: worked out with the calculator first, "[3+4=7] 7 ."
      # (toyworld.demonstrate; the run samples with it when sampling.tool=calculator).
      calculator_rate=0.0,
      num_eval_prompts=250,  # Held-out prompts on which samples are scored by the gold scorer.
      # Comparison data the InstructGPT way: K samples of the SFT policy per prompt, ranked by an annotator.
      num_comparisons=2000,  # Training prompts (each with K ranked responses).
      num_val_comparisons=250,  # Held-out prompts, for the reward model's evaluation.
      responses_per_prompt=4,  # K.
      sample_temperature=1.0,  # The SFT policy's temperature when it writes the responses to be ranked.
      annotator_temperature=0.1,  # Plackett-Luce noise on the gold scores (0: rank by gold exactly).
      tie_margin=0.02,  # Responses whose gold scores differ by less than this are tied.
      disagreement=0.05,  # How often an annotator's ranking is replaced by a random one.
      # Judging demonstrations (rlhf_jax/judge.py) added to the SFT stage's data: "which answer is better?"
      # under one of toyworld.JUDGE_PRINCIPLES, and the share `judge_pointwise` of them "is the answer good?",
      # each with its exact label (toyworld.judge_pairs, judge_verdicts): the SFT model becomes a judge.
      judge_sft=0,
      judge_pointwise=0.33,
  ))
  # The reward-model stage (stages/reward.py): which loss, and how its scores are normalised.
  config.reward = ConfigDict(dict(
      loss="pairwise",  # pairwise | margin | per_token | reward_token (losses.REWARD_LOSSES)
      margin=1.0,  # margin: r_w - r_l must exceed margin x (rank gap).
      threshold=1.0,  # per_token: the score difference each aligned response position must clear.
      max_responses=9,  # K of a comparison may be 2..max_responses; batches are padded to the data's largest K.
      # > 0: train for this many passes over the training comparisons (train.steps is then derived from the
      # number kept); 0: train.steps as given. InstructGPT trains its RM for one epoch.
      epochs=0.0,
      norm_samples=512,  # SFT samples on training prompts used to fit the score's gain and bias.
      # w > 0: the score adds w x the response's mean log-likelihood under the RM's own LM head, and the head
      # starts at zero, so the untrained RM ranks by the SFT model's likelihood (model/transformer.py).
      likelihood_weight=0.0,
      # toyworld: after training, the SFT model answers the held-out evaluation prompts best_of_n times each
      # (at sampling.temperature) and the summary gives the gold of the RM's pick out of 1, 2, 4, ...
      # best_of_n answers next to the gold scorer's own pick (eval/best_of_n.py); 0 = off.
      best_of_n=8,
  ))
  # Offline preference optimisation (stages/dpo.py): the policy learns from data.path's comparisons directly,
  # against its frozen SFT reference, with no reward model and no sampling in training.
  config.dpo = ConfigDict(dict(
      loss="dpo",  # dpo | ipo (losses.PREFERENCE_LOSSES)
      beta=0.1,  # dpo: the implicit reward's scale; ipo: the log-ratio gap is regressed to 1 / (2 beta).
      epochs=1.0,  # Passes over data.path's training comparisons (train.steps follows); 0: train.steps as given.
      # A reward model's workdir: its only use is the evaluation's RM-score column, so that a DPO policy is
      # evaluated exactly as PPO's (KL to SFT, win rates, SFT at T 0.5); "": held-out gold alone (toyworld).
      reward_from="",
  ))
  # AI feedback (rlhf_jax/judge.py): a language model that judges answers, for stage=ai_comparisons (it ranks
  # the policy's K answers to each prompt instead of an annotator) and for ppo.reward=judge (its log-odds of
  # "yes" to "is the answer good?" is PPO's score, normalised on SFT samples like a reward model's).
  config.judge = ConfigDict(dict(
      model="",  # The judge: a workdir, a converted or a Hugging Face checkpoint (with its own tokenizer).
      principles="",  # A text file, one principle per line, all of which vote; "": judge.DEFAULT_PRINCIPLE.
      rank="pairwise",  # pairwise: every pair under every principle | pointwise: by the log-odds of "yes".
      pair_template=("{principle} question : {prompt} answer a : {first} answer b : {second} "
                     "which answer is better ?"),
      pair_labels="a,b",
      point_template="question : {prompt} answer : {answer} is the answer good ?",
      point_labels="yes,no",
      batch_size=64,  # Judging questions a forward pass.
      # ai_comparisons on toyworld: the policy answers the held-out evaluation prompts best_of_n times and the
      # summary gives gold of the pointwise judge's pick out of 1, 2, 4, ... next to gold's own pick; 0 = off.
      best_of_n=16,
  ))
  # Low-rank adapters (model/lora.py) for the sft, reward, dpo and ppo stages: rank 0 trains every weight; rank
  # r > 0 freezes the model and trains rank-r adapters on the `targets` (projection names q,k,v,o,fc_in,fc_out,
  # gate,up,down or the groups attn, mlp) plus any head the stage adds, scaled by alpha / r. In PPO they adapt
  # the actor, whose frozen base is the reference itself, and a critic, on the reward model's trunk. Checkpoints
  # hold the adapters; a later stage reads the merged model (the base is read from init_from, kept in place).
  config.lora = ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets="attn,mlp"))
  # How responses are sampled for evaluation (gold scores, win rates, best-of-n; eval/gold.py:sample_answers)
  # and for the reward model's comparisons. `eval_seed` keys every held-out evaluation, the same in every stage
  # and for every training seed, so one model gets one figure wherever it is evaluated.
  # `quantize` int8: the evaluation samples from int8 weights (model/quant.py; training never reads them).
  # `regex`: every evaluation answer matches it in full (constrained decoding, constrain.py; "" = off).
  # `vote` n > 1: gold evaluations keep the majority final answer of n samples (self-consistency,
  # eval/self_consistency.py) instead of one sample.
  # `tool` calculator: every sampler of the run (evaluations, comparisons, PPO rollouts, `sample`) runs the
  # calls a response writes ("[3+4=" gets "7]", tools.py), and SFT, PPO and the evaluations leave the tool's
  # tokens out of losses, KL and log-probs ("" = none). Teach the calls with toyworld.calculator_rate.
  config.sampling = ConfigDict(dict(temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=32, batch_size=64,
                                    eval_seed=0, quantize="none", regex="", vote=1, tool=""))
  # PPO (stages/ppo.py). One iteration = one rollout of train.batch_size prompts, then `epochs` passes over it
  # in `minibatches` minibatches; train.steps counts iterations. The actor's optimizer is `optim`; the
  # critic's is the same with `critic_lr`.
  config.ppo = ConfigDict(dict(
      reward_from="",  # The reward workdir (its reward_model/): the frozen scorer and the critic's start.
      # Rollouts are sampled at this temperature and the ratio's log-probs use it too: what PPO optimises is the
      # policy sampled at it, so it matches sampling.temperature, at which every evaluation samples the policy
      # (1.0 here against 0.7 there was a trap: the December 2026 PPO audit).
      temperature=0.7,
      max_new_tokens=32,
      prompt_len=48,  # Prompts are left-padded (or cut, keeping BOS and the end) to this many tokens.
      epochs=4,
      minibatches=1,
      # Each minibatch's gradient is accumulated over this many equal microbatches (with its ptx rows): the
      # same update (the losses are sums over the whole minibatch's tokens), in a memory of one microbatch.
      microbatches=1,
      clip_eps=0.2,  # Policy ratio clipping.
      value_clip_eps=0.2,  # Value clipping, around the rollout's values.
      gamma=1.0,
      lam=0.95,
      vf_coef=0.1,  # Weight of the value loss when the critic shares the actor's trunk.
      ent_coef=0.0,  # Entropy bonus.
      critic_lr=1e-4,
      shared_critic=False,  # One trunk with LM and value heads (one optimizer) instead of a separate critic.
      # No critic at all: every value is 0, so a token's advantage is its reward-to-go (the score, less the
      # group's leave-one-out mean with group_baseline, less beta x the KL still to come), whitened -- the
      # critic-free estimators of RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024) inside PPO's clipped
      # update.
      critic_free=False,
      # Critic pre-training (PPO-max of Zheng et al. 2023, "Secrets of RLHF"; AI2's EasyLM PPO): the first N
      # iterations update only the critic, the policy frozen (its params, Adam state, EMA and beta unchanged);
      # the actor's learning-rate schedule starts at its first real update and spans the train.steps - N
      # iterations after. Needs a separate critic (not critic_free, not shared_critic); 0 = off.
      critic_warmup=0,
      kl_coef=0.05,  # beta: the per-token reward is -beta * KL(pi || pi_SFT) estimate.
      kl_estimator="k1",  # k1 | k3 (rl/advantages.py:KL_ESTIMATORS)
      # > 0 adds kl_loss_coef x the exact KL(pi || pi_SFT) over the vocabulary, averaged over the response
      # tokens, to the actor's loss (losses.exact_kl; one more forward of the reference a minibatch): a pull
      # back to SFT at every visited state with no sampling noise, beside or instead of the KL in the reward.
      kl_loss_coef=0.0,
      # Which KL the loss term is: "exact" (over the vocabulary, above) or "k3", GRPO's estimate at the sampled
      # tokens, pi_ref / pi - log(pi_ref / pi) - 1 (Shao et al. 2024, eq. 4; no reference forward pass).
      kl_loss="exact",
      # How the actor's per-token terms become the minibatch's loss (train/steps.py:LOSS_AGGREGATIONS):
      # token_mean (DAPO) | sequence_mean (GRPO) | constant (Dr. GRPO).
      loss_aggregation="token_mean",
      adaptive_kl=False,  # Ziegler et al. 2019: adapt beta towards kl_target over kl_horizon samples.
      kl_target=6.0,  # Nats per response.
      kl_horizon=10000,
      # Normalise each score by the running mean and std of all scores so far, this rollout's included
      # (PPO-max's reward normalisation; the statistics are in the PPO state, so checkpoints carry them):
      # the score (RM or gold, less the unfinished penalty) before reward_clip, the group baseline and the KL.
      reward_norm=False,
      reward_clip=0.0,  # Clip the score (after reward_norm, before the group baseline) to [-c, c]; 0 = off.
      unfinished_penalty=1.0,  # Subtracted from the score of a response that hits max_new_tokens unended.
      whiten_advantages=True,
      # K answers per prompt: each iteration samples train.batch_size / K prompts K times each. With
      # group_baseline, a score enters the rewards less the mean score of the other K - 1 answers to its
      # prompt (leave-one-out, rl/advantages.py) -- what the critic cannot know, how hard this prompt is for
      # the policy, comes from the policy's own answers; the critic then learns the KL part and the token-level
      # remainder of the return.
      samples_per_prompt=1,
      group_baseline=False,
      # With group_baseline: divide each centred score by the standard deviation of its group's scores, as
      # GRPO does (Shao et al. 2024; rl/advantages.py:group_std): every prompt whose answers differ pushes the
      # policy as hard as any other, however small its differences (exact copies against a one-word slip).
      group_std=False,
      ptx_coef=0.0,  # gamma_ptx of InstructGPT's PPO-ptx: weight of the pretraining LM loss.
      ptx_batch=8,  # Pretraining rows per minibatch update.
      ptx_seq_len=64,
      ptx_path="",  # Pretraining text for PPO-ptx (any pretraining source); toyworld uses its corpus.
      prompts_path="",  # Prompt JSONL ({"prompt"} or {"messages"}); toyworld samples its training prompts.
      num_prompts=4000,  # toyworld: training prompts to cycle through.
      ema_decay=0.0,  # > 0 keeps an EMA of the actor's weights, used for evaluation.
      # "gold" (toyworld): the rollout's score is gold_scale x the gold scorer instead of the reward model's --
      # PPO with a perfect reward model, the ceiling a learned one can approach (evaluations still report both).
      # "judge": the score is the judge's (judge.model) log-odds of "yes" to "is the answer good?", normalised
      # to mean 0 and std 1 on reward.norm_samples answers of the SFT model -- a generative reward model.
      reward="rm",
      gold_scale=3.0,
      # Iterated rounds (the seeds: repeat stages 3 and 4): every `round_every` iterations label
      # `round_prompts` prompts answered K times by the current policy, and train the reward model on all
      # comparisons so far for `round_steps` steps; 0 = off.
      round_every=0,
      round_prompts=500,
      round_steps=100,
      round_batch=32,  # Comparisons (prompts with their K answers) per reward-model step in a round.
      round_lr=5e-5,
      # K >= 1: each call runs K iterations as one compiled program (rl/iteration.py): generation with its
      # early exit, the rollout pass and the update, scanned K times, metrics leaving the device once per
      # call -- and `train.seeds` N > 1 vmaps it over N replicas. 0: the Python iteration, which iterated
      # rounds and reward="gold" need (the host scores the answers) and which logs the training prompts'
      # gold (ppo/gold) and the per-phase timings. train.steps, log_every, eval_every and checkpoint_every
      # must be multiples of K.
      iterations_per_call=0,
  ))
  return config


def load_module(path: str, what: str = "--config"):
  """Imports an experiment (or ablation) file by path."""
  if not path.endswith(".py"):
    raise UserError(f"{what} {path!r}: expected a Python experiment file, path/to/NAME.py[:ARG]")
  if not os.path.isfile(path):
    raise UserError(f"{what} {path!r}: no such file")
  module_name = "rlhf_jax_experiment_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  # Experiment files are code the user wrote to configure the run (as in big_vision); running them is the
  # point. Data files are never executed.
  sys.modules[module_name] = module
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ConfigDict:
  """Loads `path/to/file.py[:arg]`: imports the file and returns its locked `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: defines no get_config(arg)")
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError) as e:  # An experiment rejects an unknown variant this way.
    raise UserError(f"{path}: get_config({arg or None!r}) failed: {e}") from None
  if not isinstance(config, ConfigDict):
    raise UserError(f"{path}: get_config() returned {type(config).__name__}, expected a ConfigDict")
  config.lock()
  return config


def parse_overrides(rest: Sequence[str]) -> list[str]:
  """`--config.KEY=VALUE` (or `--config.KEY VALUE`) arguments -> ["KEY=VALUE", ...]."""
  overrides, i = [], 0
  while i < len(rest):
    item = rest[i]
    if not item.startswith("--config."):
      raise UserError(f"unrecognised argument {item!r}; config overrides look like --config.KEY=VALUE")
    item = item[len("--config."):]
    if "=" not in item:  # --config.KEY VALUE
      if i + 1 >= len(rest):
        raise UserError(f"--config.{item}: missing value")
      item, i = f"{item}={rest[i + 1]}", i + 1
    overrides.append(item)
    i += 1
  return overrides


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
  """Applies `a.b=value` strings (the part after `--config.`) to a locked config, in order."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep or not key:
      raise UserError(f"--config.{item}: expected --config.KEY=VALUE")
    parent, name = _resolve(config, key)
    current = parent._fields[name]
    if isinstance(current, config_dict.FieldReference):
      target_type, current = current.get_type(), current.get()
    else:
      target_type = type(current)
    value = _parse_value(key, raw, target_type, current)
    try:
      setattr(parent, name, value)
    except (TypeError, ValueError) as e:
      raise UserError(f"config key '{key}': cannot set {raw!r} ({e})") from None
  return config


def _resolve(config: ConfigDict, key: str) -> tuple[ConfigDict, str]:
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      where = ".".join(parts[:depth]) or "the config"
      known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
      raise UserError(f"unknown config key '{key}': {where} has no key {part!r} (known: {', '.join(known)})")
    if depth == len(parts) - 1:
      if isinstance(node[part], ConfigDict):
        raise UserError(f"config key '{key}' is a section; set one of its keys ({', '.join(sorted(node[part]))})")
      return node, part
    node = node[part]
  raise AssertionError("unreachable")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_value(key: str, raw: str, target_type: type, current: Any) -> Any:
  """Converts a command-line string to the type the schema gives `key`, or raises a one-line error."""
  def bad(expected: str) -> UserError:
    return UserError(f"config key '{key}' expects {expected}, got {raw!r}")

  if raw.lower() in ("none", "null") and (current is None or target_type is type(None)):
    return None
  if target_type is bool:
    if raw.lower() in _TRUE:
      return True
    if raw.lower() in _FALSE:
      return False
    raise bad("a boolean (true/false)")
  if target_type is int:
    try:
      return int(raw)
    except ValueError:
      raise bad("an integer") from None
  if target_type is float:
    try:
      return float(raw)
    except ValueError:
      raise bad("a number") from None
  if target_type is str:
    return raw
  if target_type in (tuple, list):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not isinstance(value, (tuple, list)):
      value = (value,)
    if current:
      element_type = type(current[0])
      try:
        value = [element_type(v) for v in value]
      except (TypeError, ValueError):
        raise bad(f"a list of {element_type.__name__}") from None
    return target_type(value)
  # A key whose default is None takes any literal; plain words stay strings.
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _check_choice(key: str, value: Any, choices) -> None:
  """One line naming `key` when `value` is not one of `choices` (a registry: its keys are the choices)."""
  if value not in choices:
    raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")


def finalize(config: ConfigDict) -> ConfigDict:
  """Checks constraints between keys; call once after overrides, before building anything."""
  # model.vocab_size 0 means "the tokenizer's size", resolved by the stage once the tokenizer exists.
  resolve_model({**dict(config.model), "vocab_size": config.model.vocab_size or 1})
  for key, choices in (("source", ("text", "toyworld")), ("layout", ("packed", "windows"))):
    _check_choice(f"data.{key}", config.data[key], choices)
  if not 0.0 <= config.data.pretrain_mix < 1.0:
    raise UserError(f"config key 'data.pretrain_mix' must be in [0, 1), got {config.data.pretrain_mix}")
  if not 0.0 < config.data.val_fraction < 1.0:
    raise UserError(f"config key 'data.val_fraction' must be in (0, 1), got {config.data.val_fraction}")
  if config.data.max_bad_records < 0:
    raise UserError(f"config key 'data.max_bad_records' must be >= 0 (0 = every record must be valid), got "
                    f"{config.data.max_bad_records}")
  _check_choice("reward.loss", config.reward.loss, losses.REWARD_LOSSES)
  _check_choice("dpo.loss", config.dpo.loss, losses.PREFERENCE_LOSSES)
  if config.dpo.beta <= 0:
    raise UserError(f"config key 'dpo.beta' must be > 0, got {config.dpo.beta}")
  if not config.reward.likelihood_weight >= 0:
    raise UserError(f"config key 'reward.likelihood_weight' must be >= 0, got {config.reward.likelihood_weight}")
  if config.reward.likelihood_weight > 0 and config.reward.loss == "reward_token":
    raise UserError("config key 'reward.likelihood_weight': the likelihood term averages the log-probabilities "
                    "up to the scored token, which with reward.loss='reward_token' would include the appended "
                    "reward token itself; use 0 with that loss")
  if not 2 <= config.reward.max_responses <= 16:
    raise UserError(f"config key 'reward.max_responses' must be in 2..16, got {config.reward.max_responses}")
  if config.toyworld.responses_per_prompt < 2:
    raise UserError("config key 'toyworld.responses_per_prompt': a comparison needs at least 2 responses, got "
                    f"{config.toyworld.responses_per_prompt}")
  ppo = config.ppo
  _check_choice("ppo.reward", ppo.reward, ("rm", "gold", "judge"))
  _check_choice("judge.rank", config.judge.rank, ("pairwise", "pointwise"))
  if config.judge.batch_size < 1 or config.judge.best_of_n < 0:
    raise UserError(f"config keys 'judge.batch_size' (>= 1) and 'judge.best_of_n' (>= 0): got "
                    f"{config.judge.batch_size} and {config.judge.best_of_n}")
  if (config.stage == "ai_comparisons" or (config.stage == "ppo" and ppo.reward == "judge")) and not config.judge.model:
    raise UserError("config key 'judge.model': name the judge's workdir or checkpoint (stage=ai_comparisons and "
                    "ppo.reward=judge read it)")
  if config.toyworld.judge_sft < 0 or not 0.0 <= config.toyworld.judge_pointwise <= 1.0:
    raise UserError(f"config keys 'toyworld.judge_sft' (>= 0) and 'toyworld.judge_pointwise' (in [0, 1]): got "
                    f"{config.toyworld.judge_sft} and {config.toyworld.judge_pointwise}")
  if ppo.reward == "gold" and config.data.source != "toyworld":
    raise UserError("config key 'ppo.reward': 'gold' scores with toyworld's gold scorer; it needs "
                    "data.source='toyworld'")
  _check_choice("ppo.kl_loss", ppo.kl_loss, ("exact", "k3"))
  _check_choice("ppo.loss_aggregation", ppo.loss_aggregation, ("token_mean", "sequence_mean", "constant"))
  if ppo.kl_loss_coef < 0:
    raise UserError(f"config key 'ppo.kl_loss_coef' must be >= 0 (0 = off), got {ppo.kl_loss_coef}")
  _check_choice("ppo.kl_estimator", ppo.kl_estimator, advantages.KL_ESTIMATORS)
  if ppo.epochs < 1 or ppo.minibatches < 1 or config.train.batch_size % ppo.minibatches:
    raise UserError(f"config key 'ppo.minibatches': {ppo.minibatches} must be >= 1 and divide "
                    f"train.batch_size={config.train.batch_size} (ppo.epochs={ppo.epochs} must be >= 1)")
  rows_per_minibatch = config.train.batch_size // ppo.minibatches
  if ppo.microbatches < 1 or rows_per_minibatch % ppo.microbatches or (
      ppo.ptx_coef > 0 and ppo.ptx_batch % ppo.microbatches):
    raise UserError(f"config key 'ppo.microbatches': {ppo.microbatches} must be >= 1 and divide a minibatch's "
                    f"{rows_per_minibatch} rows (and ppo.ptx_batch={ppo.ptx_batch} when ppo.ptx_coef > 0)")
  if ppo.samples_per_prompt < 1 or config.train.batch_size % ppo.samples_per_prompt:
    raise UserError(f"config key 'ppo.samples_per_prompt': {ppo.samples_per_prompt} must be >= 1 and divide "
                    f"train.batch_size={config.train.batch_size}")
  if ppo.group_std and not ppo.group_baseline:
    raise UserError("config key 'ppo.group_std': divides the centred scores of a group; it needs "
                    "ppo.group_baseline=true")
  if ppo.group_baseline and ppo.samples_per_prompt < 2:
    raise UserError("config key 'ppo.group_baseline': a baseline from the other answers to a prompt needs "
                    f"ppo.samples_per_prompt >= 2, got {ppo.samples_per_prompt}")
  if ppo.temperature <= 0:
    raise UserError(f"config key 'ppo.temperature' must be > 0, got {ppo.temperature}")
  if not 0.0 <= ppo.ema_decay < 1.0:
    raise UserError(f"config key 'ppo.ema_decay' must be in [0, 1), got {ppo.ema_decay}")
  if ppo.critic_warmup > 0 and (ppo.critic_free or ppo.shared_critic):
    other = "ppo.critic_free" if ppo.critic_free else "ppo.shared_critic"
    raise UserError(f"config keys 'ppo.critic_warmup' and '{other}': critic pre-training trains a separate "
                    f"critic with the policy frozen; set ppo.critic_warmup=0 or {other}=False")
  if not 0 <= ppo.critic_warmup < config.train.steps:
    raise UserError(f"config key 'ppo.critic_warmup' must be in [0, train.steps={config.train.steps}) (the policy "
                    f"would never train), got {ppo.critic_warmup}")
  if ppo.reward_clip < 0:
    raise UserError(f"config key 'ppo.reward_clip' must be >= 0 (0 = off), got {ppo.reward_clip}")
  _check_choice("sampling.quantize", config.sampling.quantize, quant.MODES)
  try:
    re.compile(config.sampling.regex)
  except re.error as e:
    raise UserError(f"config key 'sampling.regex': {config.sampling.regex!r} is not a regular expression: {e}")
  if config.sampling.tool not in ("", "calculator"):
    raise UserError(f"config key 'sampling.tool': {config.sampling.tool!r} is not a tool; expected calculator or "
                    "'' (none)")
  if config.sampling.tool and config.stage == "dpo":
    raise UserError("config key 'sampling.tool': the DPO stage does not yet leave a tool's tokens out of its "
                    "log-probabilities; train with PPO, or set sampling.tool=''")
  if config.sampling.tool and config.sampling.regex:
    raise UserError("config keys 'sampling.tool' and 'sampling.regex': a tool's result would not follow the "
                    "regex; set one of them")
  if not 0.0 <= config.toyworld.calculator_rate <= 1.0:
    raise UserError(f"config key 'toyworld.calculator_rate' must lie in [0, 1], got {config.toyworld.calculator_rate}")
  if config.sampling.vote < 1:
    raise UserError(f"config key 'sampling.vote' must be >= 1 (1 = one sample, no vote), got {config.sampling.vote}")
  spec = lora_lib.LoraSpec.from_config(config.lora)  # Errors name the lora key at fault.
  if spec is not None and config.stage not in LORA_STAGES:
    raise UserError(f"config key 'lora.rank': adapters train in the {', '.join(LORA_STAGES)} stages, not in "
                    f"{config.stage!r}; set lora.rank=0")
  optim, train = config.optim, config.train
  if optim.schedule not in ("cosine", "linear", "constant"):
    raise UserError(f"config key 'optim.schedule': unknown schedule {optim.schedule!r}; "
                    "expected cosine, linear or constant")
  if optim.grad_accum_steps < 1 or train.batch_size % optim.grad_accum_steps:
    raise UserError(f"config key 'optim.grad_accum_steps': {optim.grad_accum_steps} must be >= 1 and divide "
                    f"train.batch_size={train.batch_size}")
  for key in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "checkpoint_every", "seeds"):
    if train[key] < 1:
      raise UserError(f"config key 'train.{key}' must be >= 1, got {train[key]}")
  if config.stage == "ppo":
    _check_compiled_ppo(config)
  elif train.seeds > 1 and config.stage not in ("pretrain", "sft"):
    raise UserError(f"config key 'train.seeds': {train.seeds} seeds in one program run only in the pretrain, "
                    f"sft and ppo stages, not in {config.stage!r}; run one seed at a time (--config.seed=...)")
  return config


def _check_compiled_ppo(config: ConfigDict) -> None:
  """ppo.iterations_per_call K: what the compiled iteration cannot do, and the loop's counts it must divide."""
  ppo, train = config.ppo, config.train
  k = ppo.iterations_per_call
  if k < 0:
    raise UserError(f"config key 'ppo.iterations_per_call' must be >= 0 (0 = the Python iteration), got {k}")
  if k == 0:
    if train.seeds > 1:
      raise UserError(f"config key 'train.seeds': {train.seeds} PPO seeds in one program need the compiled "
                      "iteration; set ppo.iterations_per_call >= 1")
    return
  if ppo.reward in ("gold", "judge"):
    raise UserError(f"config key 'ppo.iterations_per_call': reward={ppo.reward!r} scores answers on the host; it "
                    "runs only in the Python iteration (ppo.iterations_per_call=0)")
  if ppo.round_every > 0:
    raise UserError("config key 'ppo.iterations_per_call': iterated rounds (ppo.round_every > 0) label "
                    "answers on the host; they run only in the Python iteration (ppo.iterations_per_call=0)")
  for key in ("steps", "log_every", "eval_every", "checkpoint_every"):
    if train[key] % k:
      raise UserError(f"config key 'train.{key}': {train[key]} is not a multiple of ppo.iterations_per_call "
                      f"({k}), the iterations each compiled call runs")


def to_json(config: ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)


def write_config(config: ConfigDict, workdir: str) -> str:
  """Writes the resolved config to `workdir/config.json` atomically: a new file, flushed to disk, renamed over
  the old one (a crash never leaves half a file). The stages call it only for a run that will start."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(to_json(config) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path
