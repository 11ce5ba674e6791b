"""Ablation: how the demonstrators' error rate limits SFT, with means and spreads over seeds.

  python -m rlhf_jax.sweep experiments/ablations/sft_error_rate.py --workdir runs/ablations/sft_error_rate \
      --config.init_from=runs/toyworld/pretrain

Runs experiments/toyworld_sft.py from the same pretrained model with toyworld.error_rate 0.0, 0.2 and
0.4: how often a demonstrator writes a flawed answer, with its habits (filler, compliance, broken
constraints; toyworld.py) switched off so that the content errors are all there is (the figures below were
measured before the habits existed). Each run trains train.seeds = 4 SFT
models as one compiled program (jax.vmap over seeds, stages/common.py:train_lm): they start from the same
pretrained weights and differ in data order and evaluation sampling (seeds 0..3). The table gives the mean
over the 4 models and its spread (`/seed_std`, the sample standard deviation over seeds) of the held-out gold
score, the end-of-turn rate and the losses, next to the demonstrators' own gold score on the same prompts
(`demonstrator/all`, what imitating them perfectly would give); results.png draws the spreads as error
bars. The held-out demonstrations are written with the run's error rate too, so eval/loss is measured on
differently noisy text in each row: compare gold, not losses, across rows. `:smoke` runs in seconds (2
seeds) from a toyworld_pretrain.py:smoke workdir.

Measured 2026-11-30 with --config.train.seeds=2 (2 seeds a rate, to fit the time; 4 is the file's default)
from runs/toyworld/pretrain, alone on a 2-core CPU, 468-500 s a rate (2 replicas in one program). Mean +-
the standard deviation over the 2 seeds:

  error rate  held-out gold    demonstrators  arithmetic list  repeat reverse review  val loss  train loss
  0.0         0.845 +- 0.017   1.000          0.43       0.86  0.98   0.99    0.96    0.635     0.598
  0.2         0.745 +- 0.003   0.875          0.18       0.86  0.89   0.89    0.90    0.973     0.852
  0.4         0.624 +- 0.003   0.800          0.12       0.83  0.72   0.63    0.81    1.125     1.016

(the end-of-turn rate is 0.998-1.0 in every run). SFT imitates its demonstrators' errors: each step of 0.2 in
error rate costs it 0.100 and then 0.121 of held-out gold (the demonstrators lose 0.125 and 0.075).
With error-free demonstrations, copying and reversal are solved (0.98, 0.99) and arithmetic more than
doubles (0.18 -> 0.43): a flawed arithmetic demonstration teaches a wrong sum, not just noise. So at the
default 0.2 about 0.1 of gold is what a perfect RLHF stage could win back from imitation alone -- the
"something for RLHF to fix" of DESIGN.md.
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
