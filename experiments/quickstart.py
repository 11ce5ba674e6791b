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

Budgets: 1,000 of toyworld_pretrain's 1,200 steps (700 leave a model that cannot copy a word from its
prompt), 500 of SFT's 600, 8,000 of the reward model's 24,000 prompts (one epoch, about 207 steps of 32),
30 PPO iterations (7,680 episodes, 120 actor updates). `:smoke` runs every stage in seconds (the tests).

Measured alone on a 2-core Intel Xeon (float32 matmul peak 271-276 GFLOP/s in the same session) on 2026-12-05,
world seed 0: 14 min 25 s wall -- pretrain 359 s, SFT 195 s, comparisons 53 s, reward 113 s, PPO 103 s, the rest
start-up and the report; PPO with the exact KL in its loss (today's default) then took 115 s alone, so about 14
min 37 s. Held-out gold (250 prompts, the one evaluator of eval/gold.py; a PPO stage rerun with it gave exactly
these): SFT 0.619, SFT at T 0.5 0.653 (KL 0.21), the RM's best of 4 SFT answers 0.708 (gold's own pick 0.793),
PPO 0.665: +0.045 +- 0.030 over SFT (paired, 95%), win rate 54.8% +- 3.1 by gold, KL 0.32. Other worlds: the
README. `:calculator`: arithmetic worked out with the calculator tool (README, "Tool calls"; NOTES.md).
"""

import os

from rlhf_jax.config import base_config, load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_load = lambda name: load_module(os.path.join(_HERE, f"{name}.py"))
common = _load("common")


def get_config(arg=None):
  common.parse_variants(arg, "smoke", "calculator", combine=True)
  config = base_config()
  config.stage = "pipeline"
  return config


def stages(arg=None):
  variants = common.parse_variants(arg, "smoke", "calculator", combine=True)
  arg = "smoke" if "smoke" in variants else None
  pretrain = _load("toyworld_pretrain").get_config(arg)
  sft = _load("toyworld_sft").get_config(arg)
  if arg is None:  # The time budget: 1,000 of toyworld_pretrain's 1,200 steps and 500 of SFT's 600 (fewer
    # pretraining steps leave a model that cannot yet copy words from its prompt), one evaluation each.
    pretrain.train.steps, pretrain.train.eval_every, pretrain.train.checkpoint_every = 1000, 1000, 500
    sft.train.steps = sft.train.eval_every = 500
  sft.init_from = "{pretrain}"
  reward = _load("toyworld_reward").get_config(arg)
  comparisons = _load("toyworld_reward").get_config(arg)
  comparisons.stage = "comparisons"
  if arg is None:  # 8,000 prompts x 4 ranked answers (those not all tied are kept), one epoch (reward.epochs).
    comparisons.toyworld.num_comparisons = reward.toyworld.num_comparisons = 8000
  comparisons.init_from = "{sft}"
  reward.init_from = "{sft}"
  reward.data.path = "{comparisons}"
  ppo = _load("toyworld_ppo").get_config(arg)
  if arg is None:
    ppo.train.steps, ppo.train.eval_every, ppo.train.checkpoint_every = 30, 30, 30  # 7,680 episodes.
  ppo.init_from = "{sft}"
  ppo.ppo.reward_from = "{reward}"
  out = [("pretrain", pretrain), ("sft", sft), ("comparisons", comparisons), ("reward", reward), ("ppo", ppo)]
  if "calculator" in variants:  # Arithmetic demonstrations call the calculator; every sampler runs the calls.
    for _, config in out:  # The tokenizer and pretraining are the plain run's (pretrain.tokenizer_texts).
      config.toyworld.calculator_rate, config.sampling.tool = 1.0, "calculator"
  return out
