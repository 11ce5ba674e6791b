"""Ablation: the KL penalty's coefficient beta, and reward over-optimisation.

  python -m rlhf_jax.sweep experiments/ablations/kl_coef.py --workdir runs/ablations/kl_coef \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Runs experiments/toyworld_ppo.py with beta = 0, 0.05, 0.2, 0.5 (the default) and 1 held fixed, and with the
adaptive controller of Ziegler et al. 2019 (from 0.5, towards 0.5 nats per response, horizon 1,000 samples).
The reward model is a proxy for the gold scorer: it was fitted on a few thousand comparisons of SFT samples,
and e.g. it cannot see repetition in a review as well as gold does. Without the KL penalty the policy is
free to move wherever the proxy is wrong, so its RM score keeps rising while its gold score peaks and falls
(Gao et al. 2022, "Scaling laws for reward model overoptimization"); the penalty keeps it near the SFT
model, where the RM was trained. The table gives each run's final and best gold and RM scores and the
evaluation step of the best (`.../max_step`); metrics.jsonl in each run has the curves. `:smoke` runs in
seconds from smoke workdirs.

Measured from the toyworld_sft.py model (16,000 demonstrations; gold 0.741 on these prompts and keys) and
its toyworld_reward.py reward model (0.865 on clear gold pairs), toyworld_ppo.py's defaults (rollouts at
temperature 0.7), --config.train.steps=50 --config.train.eval_every=10, alone on a 2-core machine, 146-159 s
a run (2026-11-30). Held-out gold at iterations 10/20/30/40/50, the RM score at the same evaluations, then
the final KL (nats per response) and win rate by gold (+-0.03):

  run        gold                            RM score                   KL    win rate by gold
  beta 0     0.722 0.718 0.713 0.714 0.710   0.11 0.16 0.16 0.23 0.24   2.69  0.436
  beta 0.05  0.753 0.743 0.711 0.742 0.736   0.18 0.21 0.04 0.22 0.23   1.42  0.472
  beta 0.2   0.755 0.763 0.748 0.735 0.736   0.12 0.15 0.11 0.20 0.11   0.96  0.478
  beta 0.5   0.741 0.744 0.748 0.747 0.769   0.12 0.12 0.09 0.16 0.12   0.51  0.518   (the default)
  beta 1     0.737 0.735 0.755 0.759 0.742   0.03 0.07 0.08 0.15 0.02   0.66  0.476
  adaptive   0.752 0.738 0.733 0.739 0.749   0.15 0.12 0.06 0.19 0.08   0.77  0.492   (beta 0.5 -> 0.486)

Without the penalty the RM score rises at every evaluation but one (0.11 -> 0.24) while gold is highest at
the first and falls to 0.710, lists most (0.85 -> 0.72-0.77; SFT's lists 0.85); the KL reaches 2.7 nats.
With the default beta gold never falls below SFT's 0.741 (0.741-0.769) at a KL of 0.3-0.65. Neighbouring
rows differ by less than the evaluation's noise (+-0.045 on gold); what the table shows is the pattern across
it: beta 0 ends lowest in gold and highest in RM score and KL. The same sweep with rollouts at temperature
1.0 (toyworld_ppo.py's earlier default) ended at gold 0.709 / 0.724 / 0.734 / 0.744 / 0.753 / 0.752 for beta
0 / 0.01 / 0.05 / 0.2 / 0.5 / 1 (the last two measured separately with the same flags and
--config.ppo.kl_coef). The tables below are from the earlier SFT model.

With toyworld_reward.py's reward model (likelihood head, 0.814 on clear gold pairs) from the earlier
toyworld SFT model (4,000 demonstrations, gold 0.632 on these prompts), the same flags, alone on a 2-core
machine, about 130 s a run. Gold at iterations 10/20/30/40/50, then the final RM score, KL
(nats per response) and win rate by gold:

  run        gold                            RM score  KL    win rate by gold
  beta 0     0.619 0.615 0.615 0.600 0.600   0.06      7.3   0.424
  beta 0.01  0.613 0.600 0.631 0.600 0.630   0.23      5.9   0.484
  beta 0.05  0.620 0.624 0.640 0.627 0.623   0.23      3.8   0.458
  beta 0.2   0.630 0.607 0.628 0.618 0.625   0.16      2.8   0.458
  adaptive   0.617 0.622 0.636 0.634 0.610   0.20      4.3   0.440   (beta 0.05 -> 0.047)

With this reward model no run moves gold beyond the evaluation's noise (+-0.046 at 95%): beta 0 drifts
furthest (KL 7.3) and ends lowest, but its RM score does not keep rising either. Over-optimisation showed
clearly with the earlier reward model (the plain head, 0.62 on clear pairs), 30 iterations from gold 0.635:

  run        gold                       RM score  KL (nats)  win rate by gold
  beta 0     0.525 (0.586 0.557 0.525)  0.427      8.08      0.370
  beta 0.01  0.528 (0.595 0.562 0.528)  0.415      6.16      0.364
  beta 0.05  0.576 (0.619 0.614 0.576)  0.397      3.75      0.428
  beta 0.2   0.595 (0.631 0.598 0.595)  0.326      1.95      0.458
  adaptive   0.573 (0.624 0.601 0.573)  0.373      3.84      0.420   (beta 0.05 -> 0.048)

There the RM score rose at every evaluation while gold fell from SFT's 0.635, the faster the smaller beta;
even the default beta only slowed the fall.

`:group` runs beta 0 and the default beta with toyworld_ppo.py:group (4 answers per prompt with a
leave-one-out baseline, 256 rollouts an iteration, 150 iterations; the PPO that optimises this reward model
hardest). Measured when the default was 0.05 and rollouts were sampled at temperature 1.0, with the likelihood-head reward model from the SFT model (held-out gold 0.650); wall 1164 s for
beta 0 and 998 s for beta 0.05 (the toyworld_ppo.py:group run, evaluated every 50), both on a machine
shared with other jobs part of the time:

  held-out gold at 25/50/75/100/125/150      KL at 150   RM score (rollouts, means of 25 iterations)
  beta 0     0.651 0.605 0.602 0.617 0.599 0.627   8.8   -0.08 0.12 0.12 0.16 0.21 0.25
  beta 0.05  -     0.644 -     0.642 -     0.653   5.7   -0.07 0.09 0.13 0.09 0.20 0.21

Without the penalty the reward model's score on the rollouts keeps rising while held-out gold peaks at
iteration 25 (SFT's level) and falls to 0.60-0.63 (win rate against SFT by gold 0.42-0.45, +-0.04, at
iterations 50-150; lists 0.79 -> 0.61 as the policy drifts, KL 8.8 nats); the rollouts' own gold stays at
0.60-0.615. With beta 0.05 held-out gold does not fall (0.642-0.653) and the rollouts' gold rises 0.61 ->
0.66. The held-out RM score itself moves within its interval (+-0.12) in both runs (beta 0: 0.38 0.30 0.28
0.34 0.36 0.39).
"""

import os

from rlhf_jax.config import load_module

toyworld_ppo = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toyworld_ppo.py"))

# (run name, beta, adaptive)
VARIANTS = (("beta_0", 0.0, False), ("beta_0.05", 0.05, False), ("beta_0.2", 0.2, False),
            ("beta_0.5", 0.5, False), ("beta_1", 1.0, False), ("adaptive", 0.5, True))
COLUMNS = ("eval/gold/all", "eval/gold/all/max", "eval/gold/all/max_step", "eval/rm_score",
           "eval/rm_score/max_step", "eval/kl", "eval/win_rate_gold", "ppo/kl_coef")


def get_config(arg=None):
  return toyworld_ppo.get_config(arg)


def sweep(arg, workdir):
  runs = []
  variants = VARIANTS if arg != "group" else [v for v in VARIANTS if v[0] in ("beta_0", "beta_0.5")]
  for name, beta, adaptive in variants:
    config = get_config(arg)
    config.ppo.kl_coef = beta
    config.ppo.adaptive_kl = adaptive
    # Adaptive: towards 0.5 nats per response, correcting within about 1,000 samples (16 iterations of 64).
    config.ppo.kl_target, config.ppo.kl_horizon = 0.5, 1000
    if arg == "group":  # 150 iterations: evaluate often enough to see a peak.
      config.train.eval_every = 25
      config.train.checkpoint_every = 25
    runs.append((name, config))
  return runs
