"""The whole InstructGPT recipe on the built-in toyworld, in one command, with no downloads.

  python -m rlhf_jax.main --config experiments/quickstart.py --workdir runs/quickstart

Stages, each in its own directory of the workdir (re-running the command skips finished stages and resumes an
interrupted one): `pretrain` (trains the tokenizer, then the 4-layer model on the generated corpus), `sft`
(instruction tuning on imperfect demonstrators), `comparisons` (4 SFT answers to each of 8,000 fresh prompts
ranked by the simulated annotator), `reward` (one epoch over them, normalised on SFT samples, then best-of-n on
the held-out prompts), `ppo` (30 iterations of 64 prompts x 4 answers, each answer scored against the other
three, KL penalty 0.1 and the exact KL in the loss, no critic: experiments/toyworld_ppo.py), then `report.md`
with plots and the final table (PPO against SFT, SFT sampled at temperature 0.5, and the reward model's and
gold's best of 4 SFT answers, per task) and `summary.json`.

Budgets: toyworld_pretrain's 1,200 steps and toyworld_sft's 600 with 5% of its tokens from pretraining
documents (`:short`: 1,000 and 500 and none, the quickstart until 2026-12-06, on whose models the README's
later sections were measured); 8,000 of the reward model's 24,000 prompts (one epoch, about 210 steps of
32); 30 PPO iterations (7,680 episodes, 120 actor updates). `:smoke` runs every stage in seconds (the tests);
`:calculator` works arithmetic out with the calculator tool (README, "Tool calls").

Measured alone, world seed 0: 12 min 16 s on a 2-core Intel Xeon (2026-12-06, matmul peak 353 -> 267 GFLOP/s;
pretrain 291 s, SFT 155 s, comparisons 51 s, reward 93 s, PPO 99 s; 18 min 14 s at 278 -> 163), 10 min 17 s on
a 2-core AMD EPYC (2026-12-07, 416 -> 413 GFLOP/s). Held-out gold (250 prompts, eval/gold.py), session 22:
SFT 0.694, SFT at T 0.5 0.712, the RM's best of 4 0.789 (gold's 0.867), PPO 0.763: +0.069 +- 0.032 (paired,
95%), win rate 55.6% +- 3.1, KL 0.36; three PPO seeds +0.059 +- 0.013; worlds 0-3 +0.061 +- 0.017 (the EPYC:
+0.085, three seeds +0.071 +- 0.013). More, and the history: the README, experiments/NOTES.md (sessions 20-23).
"""

import os

from rlhf_jax.config import base_config, load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_load = lambda name: load_module(os.path.join(_HERE, f"{name}.py"))
common = _load("common")


VARIANTS = ("smoke", "calculator", "short")


def get_config(arg=None):
  common.parse_variants(arg, *VARIANTS, combine=True)
  config = base_config()
  config.stage = "pipeline"
  return config


def stages(arg=None):
  variants = common.parse_variants(arg, *VARIANTS, combine=True)
  if {"smoke", "short"} <= variants:
    raise ValueError("variants 'smoke' and 'short' are two budgets; name one")
  arg = "smoke" if "smoke" in variants else None
  pretrain = _load("toyworld_pretrain").get_config(arg)
  sft = _load("toyworld_sft").get_config(arg)
  if arg is None:  # The files' own 1,200 pretraining and 600 SFT steps (`:short`: 1,000 and 500), one evaluation
    # each. The last 200 pretraining steps are when the model learns to copy words from its prompt (NOTES.md).
    if "short" in variants:  # As it ran until 2026-12-06: also without pretraining documents in SFT's rows.
      pretrain.train.steps, sft.train.steps, sft.data.pretrain_mix = 1000, 500, 0.0
    pretrain.train.eval_every, pretrain.train.checkpoint_every = pretrain.train.steps, pretrain.train.steps // 2
    sft.train.eval_every = sft.train.steps
  sft.init_from = "{pretrain}"
  reward = _load("toyworld_reward").get_config(arg)
  comparisons = _load("toyworld_reward").get_config(arg)
  comparisons.stage = "comparisons"
  if arg is None:  # 8,000 prompts x 4 ranked answers (those not all tied are kept), one epoch (reward.epochs).
    comparisons.toyworld.num_comparisons = reward.toyworld.num_comparisons = 8000
  comparisons.init_from = "{sft}"
  reward.init_from = "{sft}"
  reward.data.path = "{comparisons}"
  ppo = _load("toyworld_ppo").get_config(arg)  # 30 iterations, 7,680 episodes.
  ppo.init_from = "{sft}"
  ppo.ppo.reward_from = "{reward}"
  out = [("pretrain", pretrain), ("sft", sft), ("comparisons", comparisons), ("reward", reward), ("ppo", ppo)]
  if "calculator" in variants:  # Arithmetic demonstrations call the calculator; every sampler runs the calls.
    for _, config in out:  # The tokenizer and pretraining are the plain run's (pretrain.tokenizer_texts).
      config.toyworld.calculator_rate, config.sampling.tool = 1.0, "calculator"
  return out
