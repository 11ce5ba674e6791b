"""The whole InstructGPT recipe on the built-in toyworld, in one command, with no downloads.

  python -m rlhf_jax.main --config experiments/quickstart.py --workdir runs/quickstart

Stages, each in its own directory of the workdir (re-running the command skips finished stages and resumes
an interrupted one): `pretrain` (trains the tokenizer, then the 4-layer model on the generated corpus),
`sft` (instruction tuning on imperfect demonstrations), `comparisons` (4 SFT answers per prompt ranked by
the simulated annotator), `reward` (the reward model on those comparisons, normalised on SFT samples),
`ppo` (PPO against the reward model with a KL penalty to SFT), then `report.md` with plots and the final
table, and `summary.json`.

Hardware: a 2-core CPU. The budgets are those of experiments/toyworld_*.py cut to fit 15 minutes: 1,000 of
pretraining's 1,200 steps, 500 of SFT's 600, comparisons on 4,000 of the reward model's 6,000 prompts and 150
of its 300 steps, 30 of PPO's 100 iterations, one evaluation each of pretraining and SFT (see `stages`). PPO
answers 16 prompts 4 times each per iteration, scores each answer against the other three
(ppo.group_baseline), samples at the evaluation's temperature 0.7 and uses beta 0.5.

Measured alone on a 2-core machine on 2026-11-30, one run of the command: 13 min 0 s wall -- pretrain 367 s,
SFT 186 s, comparisons 21 s, reward 79 s (with its best-of-8), PPO 85 s, 42 s of start-up and the report.
Results: pretraining loss 1.248; SFT gold 0.593 (demonstrators 0.875); reward model 0.807 on clear gold pairs;
its pick out of 2 / 4 / 8 SFT answers has gold 0.665 / 0.682 / 0.680 against 0.622 for one answer (the gold
scorer's own pick: 0.741 / 0.828 / 0.899). PPO 0.586 +- 0.048 against SFT's 0.617 +- 0.047 on the same 250
held-out prompts: win rate 45.2% +- 3.4 by gold and 55.8% by the RM, KL 0.55 -- PPO does not improve on SFT
in 30 iterations, and the reward model's best-of-n, the most it can give, is +0.06
(experiments/toyworld_ppo.py says why). Two runs of the same budgets before the corpus was made independent
of PYTHONHASHSEED (toyworld.py) took 13 min 49 s and about 14 min 33 s, with SFT gold 0.546 / 0.604 and PPO
0.530 / 0.593 against SFT's 0.572 / 0.621: at this budget, run-to-run differences of the data move SFT by
about 0.05.

Budgets measured on the way: with 850 pretraining and 550 SFT steps the pipeline took 14 min 14 s, but the
pretraining loss was 1.350 and SFT's gold 0.508; an earlier session's 750 / 500 gave 13 min 30 s and 0.25.
The previous budgets (1,000 / 600 steps, reward 200 steps on 6,000 prompts, PPO 50 iterations at temperature
1.0 and beta 0.2) took about 16 min 17 s, with SFT 0.666 and PPO 0.637 against SFT's 0.686.
`:smoke` runs every stage in seconds (what the tests exercise).
"""

import os

from rlhf_jax.config import base_config, load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_load = lambda name: load_module(os.path.join(_HERE, f"{name}.py"))


def get_config(arg=None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown variant {arg!r}; expected smoke or nothing")
  config = base_config()
  config.stage = "pipeline"
  return config


def stages(arg=None):
  pretrain = _load("toyworld_pretrain").get_config(arg)
  sft = _load("toyworld_sft").get_config(arg)
  if arg is None:  # The time budget: 1,000 of toyworld_pretrain's 1,200 steps, 500 of SFT's 600, 4,000 of the
    # reward model's 6,000 comparison prompts and 150 of its 300 steps, 30 of PPO's 100 iterations, and one
    # evaluation each of pretraining and SFT (at the end).
    pretrain.train.steps, pretrain.train.eval_every, pretrain.train.checkpoint_every = 1000, 1000, 500
    sft.train.steps = sft.train.eval_every = 500
  sft.init_from = "{pretrain}"
  reward = _load("toyworld_reward").get_config(arg)
  if arg is None:
    reward.train.steps = 150
  comparisons = _load("toyworld_reward").get_config(arg)
  comparisons.stage = "comparisons"
  if arg is None:
    comparisons.toyworld.num_comparisons = reward.toyworld.num_comparisons = 4000
  comparisons.init_from = "{sft}"
  reward.init_from = "{sft}"
  reward.data.path = "{comparisons}"
  ppo = _load("toyworld_ppo").get_config(arg)
  if arg is None:  # 30 iterations; each of 16 prompts answered 4 times, scored against the other 3; answers
    # sampled at the evaluation's temperature (0.7); beta 0.5.
    ppo.train.steps, ppo.train.eval_every, ppo.train.checkpoint_every = 30, 15, 15
    ppo.ppo.samples_per_prompt, ppo.ppo.group_baseline, ppo.ppo.kl_coef = 4, True, 0.5
    ppo.ppo.temperature = 0.7
  ppo.init_from = "{sft}"
  ppo.ppo.reward_from = "{reward}"
  return [("pretrain", pretrain), ("sft", sft), ("comparisons", comparisons), ("reward", reward), ("ppo", ppo)]
