"""Ablation: how many comparisons the reward model needs (Gao et al. 2022, "Scaling laws for reward model
overoptimization": below ~2,000 comparisons every proxy is near chance, and one epoch over fresh data beats
several over less).

  python -m rlhf_jax.sweep experiments/ablations/rm_data.py --workdir runs/ablations/rm_data \
      --config.init_from=runs/toyworld/sft

Runs, in order, for N = 2,000, 8,000 and 32,000 prompts: `comparisons_N` (N fresh training prompts, K=4
SFT answers each ranked by the simulated annotator), then `rm_N`, experiments/toyworld_reward.py's reward
model trained for one epoch on them (reward.epochs 1: about N / 32 steps). Every reward model is evaluated
on the same held-out comparisons and the same best-of-n prompts. The table gives held-out accuracy against
gold (all pairs whose gold differs, and clear pairs >= 0.2 apart), Spearman's correlation with gold, and
best-of-4: the gold of the RM's pick out of 4 SFT answers next to the gold scorer's own pick -- the gate
before any PPO, since PPO lands near its reward model's best-of-n. `:smoke` runs in seconds from a
toyworld_sft.py:smoke workdir.

Results (2026-12-05, world 0, from the full toyworld_sft run, beside other jobs; best of 4 with the keys used
before the one evaluator, the same SFT answers for every size): kept prompts 1,682 / 6,689 / 26,880; steps
53 / 210 / 841; accuracy against gold 0.795 / 0.860 / 0.880 (pairs >= 0.2 apart 0.812 / 0.875 / 0.904);
Spearman 0.45 / 0.65 / 0.72; best of 4 0.818 / 0.839 / 0.851 against gold's 0.893 and one answer's 0.722;
92 / 126 / 625 s of RM training. Batch arithmetic: 42,000 prompts sampled 4 times, then one epoch each of
at most 63, 250 and 1,000 reward-model steps of 32 prompts (fewer: all-tied prompts are dropped).
"""

import os

from rlhf_jax.config import load_module

toyworld_reward = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toyworld_reward.py"))

SIZES = (2000, 8000, 32000)
SMOKE_SIZES = (8, 16)
COLUMNS = ("reward/steps", "comparisons/train_prompts", "eval/gold_accuracy/all",
           "eval/gold_accuracy_clear/all", "eval/spearman/all", "best_of_n/1/gold", "best_of_n/4/gold",
           "best_of_n/4/oracle_gold", "train/loss")


def get_config(arg=None):
  return toyworld_reward.get_config(arg)


def sweep(arg, workdir):
  runs = []
  for n in SMOKE_SIZES if arg == "smoke" else SIZES:
    data = get_config(arg)
    data.stage = "comparisons"
    data.toyworld.num_comparisons = n
    config = get_config(arg)
    config.toyworld.num_comparisons = n
    config.data.path = os.path.join(workdir, f"comparisons_{n}")
    runs += [(f"comparisons_{n}", data), (f"rm_{n}", config)]
  return runs
