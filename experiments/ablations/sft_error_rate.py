"""Ablation: how the demonstrators' error rate limits SFT, with means and spreads over seeds.

  python -m rlhf_jax.sweep experiments/ablations/sft_error_rate.py --workdir runs/ablations/sft_error_rate \
      --config.init_from=runs/toyworld/pretrain

Runs experiments/toyworld_sft.py from the same pretrained model with toyworld.error_rate 0.0, 0.2 and
0.4: how often a demonstrator writes a flawed answer, with its habits (filler, compliance, broken
constraints; toyworld.py) switched off so that the content errors are all there is. Each run trains
train.seeds = 4 SFT models as one compiled program (jax.vmap over seeds, stages/common.py:train_lm): they start from the same
pretrained weights and differ in data order and evaluation sampling (seeds 0..3). The table gives the mean
over the 4 models and its spread (`/seed_std`, the sample standard deviation over seeds) of the held-out gold
score, the end-of-turn rate and the losses, next to the demonstrators' own gold score on the same prompts
(`demonstrator/all`, what imitating them perfectly would give); results.png draws the spreads as error
bars. The held-out demonstrations are written with the run's error rate too, so eval/loss is measured on
differently noisy text in each row: compare gold, not losses, across rows. `:smoke` runs in seconds (2
seeds) from a toyworld_pretrain.py:smoke workdir.

Measured results (2026-11-30, before the habits existed: held-out gold 0.845 / 0.745 / 0.624 for error
rates 0 / 0.2 / 0.4, 2 seeds a rate) and their reading: experiments/NOTES.md.
"""

import os

from rlhf_jax.config import load_module

toyworld_sft = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toyworld_sft.py"))

ERROR_RATES = (0.0, 0.2, 0.4)
COLUMNS = ("eval/gold/all", "demonstrator/all", "eval/gold/end_of_turn_rate", "eval/loss", "train/loss")


def get_config(arg=None):
  config = toyworld_sft.get_config(arg)
  config.train.seeds = 2 if arg == "smoke" else 4  # 4 x the work of one run per step, in one program.
  return config


def sweep(arg, workdir):
  runs = []
  for rate in ERROR_RATES:
    config = get_config(arg)
    config.toyworld.error_rate = rate
    # Content errors alone, as before the demonstrators had habits (filler, compliance, broken constraints).
    config.toyworld.filler_rate = config.toyworld.comply_rate = config.toyworld.constraint_error_rate = 0.0
    runs.append((f"error_{rate}", config))
  return runs
