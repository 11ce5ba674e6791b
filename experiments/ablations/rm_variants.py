"""Ablation: the four reward-model losses on the same comparisons.

  python -m rlhf_jax.sweep experiments/ablations/rm_variants.py --workdir runs/ablations/rm_variants \
      --config.init_from=runs/toyworld/sft

Runs, in order: `comparisons` (the SFT model's samples ranked by the simulated annotator, toyworld.py), then
one reward model per loss on exactly those comparisons -- `pairwise` (InstructGPT), `margin` (a margin per
rank gap), `per_token` (every aligned response token must clear a threshold: the Fudan seed article),
`reward_token` (the score read at an appended reward token) -- each with experiments/toyworld_reward.py's
settings but the plain head (reward.likelihood_weight 0), then `pairwise_likelihood`, toyworld_reward.py
itself: the pairwise loss on a head that adds the response's mean log-likelihood (model/transformer.py).
The table (results.md / results.csv) gives held-out accuracy against the annotators' labels and against gold
(all pairs whose gold differs, and pairs at least 0.2 apart), Spearman's correlation with gold, calibration
error and training time. `:smoke` runs in seconds from a toyworld_sft.py:smoke workdir.

Measured from the toyworld SFT model (held-out gold 0.647), alone on a 2-core machine: comparisons 28 s
(5,021 training and 208 held-out prompts, K=4), then each reward model 300 steps:

  run                  likelihood  vs labels  vs gold  vs gold, clear pairs  Spearman  ECE    time
  pairwise             0           0.570      0.585    0.597                 0.052     0.053  150 s
  margin               0           0.578      0.594    0.594                 0.058     0.088  129 s
  per_token            0           0.597      0.600    0.615                 0.171     0.051  130 s
  reward_token         0           0.602      0.598    0.611                -0.002     0.035  131 s
  pairwise_likelihood  1           0.740      0.805    0.830                 0.544     0.072  157 s

With the plain head the four losses are within noise of each other (the held-out set has about 700 clear
pairs: +-0.035 at 95%) and none learns much beyond the review task; the likelihood term lifts every measure.
"""

import os

from rlhf_jax.config import load_module

toyworld_reward = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toyworld_reward.py"))

LOSSES = ("pairwise", "margin", "per_token", "reward_token")
COLUMNS = ("reward_loss", "reward/likelihood_weight", "eval/label_accuracy", "eval/gold_accuracy/all",
           "eval/gold_accuracy_clear/all", "eval/spearman/all", "eval/ece", "best_of_n/8/gold",
           "best_of_n/8/oracle_gold", "train/loss")


def get_config(arg=None):
  return toyworld_reward.get_config(arg)


def sweep(arg, workdir):
  data = get_config(arg)
  data.stage = "comparisons"
  runs = [("comparisons", data)]
  for loss in LOSSES + ("pairwise_likelihood",):
    config = get_config(arg)
    config.data.path = os.path.join(workdir, "comparisons")
    if loss in LOSSES:
      config.reward.loss, config.reward.likelihood_weight = loss, 0.0
    runs.append((loss, config))
  return runs
