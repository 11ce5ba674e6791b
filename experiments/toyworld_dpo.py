"""toyworld, the offline alternative to stages 3-4: DPO (or IPO) on the reward stage's comparisons, no RM, no PPO.

  python -m rlhf_jax.main --config experiments/toyworld_dpo.py --workdir runs/toyworld/dpo \
      --config.init_from=runs/toyworld/sft --config.data.path=runs/toyworld/reward/comparisons \
      --config.dpo.reward_from=runs/toyworld/reward

Hardware: a 2-core CPU. Data: the comparisons the reward model learned from (K=4 SFT answers per prompt,
ranked; every pair of a ranking, ties excluded, averaged per prompt as the RM loss averages them), one epoch
(dpo.epochs); the reference's log-probabilities are computed once before training. The RM of
dpo.reward_from only scores the evaluation, so the policy is evaluated exactly as PPO's is: held-out gold by
the one evaluator, KL to SFT, win rates against SFT and SFT at T 0.5 on the same prompts and keys, and the
implicit reward beta (log pi - log pi_ref) as a reward model on the held-out comparisons (eval/implicit/...).
`--config.dpo.loss=ipo` trains IPO (Azar et al. 2023) instead; beta is dpo.beta for both.
Batch arithmetic: 32 prompts x 4 responses x 56 tokens a step; one epoch (dpo.epochs) of the quickstart's
8,000 prompts, 6,625 kept (not all tied), is 208 steps.
Expected (2026-12-05, world 0's quickstart SFT, comparisons and RM, seeds 0-2, 115-117 s each in the loop,
alone on the 2-core Xeon, via ablations/methods.py): held-out gold 0.668 / 0.677 / 0.665 against SFT 0.619,
paired gain +0.049 / +0.058 / +0.045 (each +- 0.04), KL 0.74 / 0.73 / 0.87, win rate 54-56%; the implicit
reward orders 0.63-0.64 of the held-out pairs as the labels do (the RM: 0.76). History: experiments/NOTES.md.
"""

import os

from rlhf_jax.config import base_config, load_module, model_config

common = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  common.parse_variants(arg, "smoke")
  config = base_config()
  config.stage = "dpo"
  config.seed = 0
  config.init_from = "runs/toyworld/sft"
  config.data.path = "runs/toyworld/reward/comparisons"
  config.dpo.reward_from = "runs/toyworld/reward"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"  # The gold scorer and the held-out prompts of the evaluation.
  config.dpo.loss = "dpo"
  config.dpo.beta = 0.1
  config.dpo.epochs = 1.0  # train.steps follows the comparisons kept: 6,625 / 32 = 208 for the quickstart's.
  config.train.batch_size = 32
  config.train.seq_len = 56
  config.train.log_every = 25
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  config.optim.lr = 5e-6  # 5e-5 ran to a KL of 5.8 nats and lost gold (experiments/NOTES.md, session 14).
  config.optim.warmup_steps = 10
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0
  config.ppo.prompt_len = 40  # The evaluation's prompts are encoded as PPO's are (stages/ppo.py:load_prompts).
  if arg == "smoke":  # Seconds on a CPU; init_from and data.path name smoke SFT and comparison workdirs.
    common.smoke_evaluation(config)
    config.ppo.prompt_len = 32
    config.dpo.epochs = 0.0
    config.train.steps = 4
    config.train.batch_size = 4
    config.train.seq_len = 48
    config.train.log_every = 2
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
  return config
