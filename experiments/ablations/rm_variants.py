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

Measured on the old world (before 2026-12-05; the table is in experiments/NOTES.md): with the plain head
the four losses are within noise of each other (clear-pair accuracy vs gold 0.59-0.62); the likelihood
term lifts every measure (0.83).
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
