"""Ablation: the KL penalty's coefficient beta, and reward over-optimisation.

  python -m rlhf_jax.sweep experiments/ablations/kl_coef.py --workdir runs/ablations/kl_coef \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Runs experiments/toyworld_ppo.py with beta = 0, 0.01, 0.05 (the default) and 0.2 held fixed, and with the
adaptive controller of Ziegler et al. 2019 (target KL 4 nats per response). The reward model is a proxy
for the gold scorer: it was fitted on a few thousand comparisons of SFT samples, and e.g. it cannot see
repetition in a review as well as gold does. Without the KL penalty the policy is free to move wherever
the proxy is wrong, so its RM score keeps rising while its gold score peaks and falls (Gao et al. 2022,
"Scaling laws for reward model overoptimization"); the penalty keeps it near the SFT model, where the RM was
trained. The table gives each run's final and best gold and RM scores and the evaluation step of the best
(`.../max_step`); metrics.jsonl in each run has the curves. `:smoke` runs in seconds from smoke workdirs.
"""

import os

from rlhf_jax.config import load_module

toyworld_ppo = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toyworld_ppo.py"))

# (run name, beta, adaptive)
VARIANTS = (("beta_0", 0.0, False), ("beta_0.01", 0.01, False), ("beta_0.05", 0.05, False),
            ("beta_0.2", 0.2, False), ("adaptive", 0.05, True))
COLUMNS = ("eval/gold/all", "eval/gold/all/max", "eval/gold/all/max_step", "eval/rm_score",
           "eval/rm_score/max_step", "eval/kl", "eval/win_rate_gold", "ppo/kl_coef")


def get_config(arg=None):
  return toyworld_ppo.get_config(arg)


def sweep(arg, workdir):
  runs = []
  for name, beta, adaptive in VARIANTS:
    config = get_config(arg)
    config.ppo.kl_coef = beta
    config.ppo.adaptive_kl = adaptive
    config.ppo.kl_target = 4.0
    runs.append((name, config))
  return runs
