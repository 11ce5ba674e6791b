"""Ablation: the KL penalty's coefficient beta, and reward over-optimisation.

  python -m rlhf_jax.sweep experiments/ablations/kl_coef.py --workdir runs/ablations/kl_coef \
      --config.init_from=runs/quickstart/sft --config.ppo.reward_from=runs/quickstart/reward

Runs experiments/toyworld_ppo.py with beta = 0 (and no KL in the loss either), 0.03, 0.1 (the default), 0.3
and 1 held fixed (the exact KL in the loss at its default otherwise), and with
the adaptive controller of Ziegler et al. 2019 (from 0.1, towards 1 nat per response, horizon 2,500
samples). The reward model is a proxy for the gold scorer, fitted on comparisons of SFT samples; without
the KL penalty the policy is free to move wherever the proxy is wrong, so its RM score keeps rising while
its gold score peaks and falls (Gao et al. 2022, "Scaling laws for reward model overoptimization"); the
penalty keeps it near the SFT model, where the RM was trained. The table gives each run's final and best
gold and RM scores and the evaluation step of the best (`.../max_step`); metrics.jsonl in each run has the
curves. Each run is 100 iterations evaluated every 25 (toyworld_ppo.py's own default is 30); `:pair` runs
beta 0 and the default only, evaluated every 20 (about 5 minutes each on a 2-core CPU). `:smoke` runs beta 0
and the adaptive one (the two with paths of their own) in seconds from smoke workdirs.

Measured results and the history: experiments/NOTES.md.
"""

import os

from rlhf_jax.config import load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
toyworld_ppo = load_module(os.path.join(_HERE, "..", "toyworld_ppo.py"))
common = load_module(os.path.join(_HERE, "..", "common.py"))

# (run name, beta, adaptive)
VARIANTS = (("beta_0", 0.0, False), ("beta_0.03", 0.03, False), ("beta_0.1", 0.1, False),
            ("beta_0.3", 0.3, False), ("beta_1", 1.0, False), ("adaptive", 0.1, True))
COLUMNS = ("eval/gold/all", "eval/gold/all/max", "eval/gold/all/max_step", "eval/rm_score",
           "eval/rm_score/max_step", "eval/kl", "eval/win_rate_gold", "ppo/kl_coef")


def get_config(arg=None):
  common.parse_variants(arg, "pair", "smoke")
  config = toyworld_ppo.get_config("smoke" if arg == "smoke" else None)
  if arg != "smoke":  # 100 iterations (toyworld_ppo.py runs 30): long enough to over-optimise.
    every = 20 if arg == "pair" else 25
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 100, every, every
  return config


def sweep(arg, workdir):
  runs = []
  chosen = {"pair": ("beta_0", "beta_0.1"), "smoke": ("beta_0", "adaptive")}.get(arg)
  variants = [v for v in VARIANTS if chosen is None or v[0] in chosen]
  for name, beta, adaptive in variants:
    config = get_config(arg)
    config.ppo.kl_coef = beta
    if beta == 0:  # No KL at all: the exact KL in the loss goes too (over-optimisation needs a free policy).
      config.ppo.kl_loss_coef = 0.0
    config.ppo.adaptive_kl = adaptive
    # Adaptive: towards 1 nat per response, correcting within about 2,500 samples (10 iterations of 256).
    config.ppo.kl_target, config.ppo.kl_horizon = 1.0, 2500
    runs.append((name, config))
  return runs
