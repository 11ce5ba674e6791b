"""toyworld's judge: the pretrained model instruction-tuned on judging demonstrations besides the usual ones.

  python -m rlhf_jax.main --config experiments/toyworld_judge.py --workdir runs/toyworld/judge \
      --config.init_from=runs/toyworld/pretrain

The SFT stage (experiments/toyworld_sft.py's settings) with `toyworld.judge_sft` judging demonstrations added
to its 16,000 answers: two thirds "which answer is better?" under one of the three principles of
experiments/principles/toyworld.txt, one third "is the answer good?" (rlhf_jax/judge.py has the templates;
toyworld.judge_pairs and judge_verdicts the exact labels). The answers judged are the demonstrator's at high
error, filler and constraint-breaking rates, never a policy's samples: what the judge knows of good answers
comes from the principles' labels on synthetic answers, not from labels on the answers it will judge.

Batch arithmetic: a judging demonstration is about 67 tokens (at most ~125), so 32 rows of 128 tokens hold
about 60 of them, or the usual 130 answers; 24,000 judging and 16,000 answers fill about 16,000 rows, so
1,200 steps are about 2.4 epochs. The judge is then read by stage=ai_comparisons (judge.model) and by
ppo.reward=judge.

Measured (2026-12-06, world 0, from the quickstart's 1,000-step pretraining; 799 s on a 2-core Xeon, matmul
peak 241 GFLOP/s, beside other jobs): on the quickstart's 250 held-out comparisons its rankings (3 principles,
both orders) agree with gold on 0.697 of the pairs whose gold differs, against the simulated annotator's 0.903
and the scalar reward model's 0.820; sums 0.45, copying 0.55-0.57, reviews 0.80, lists 0.76, refusals 1.00.
The two orders of a pair agree 36% of the time (position bias, which averaging them removes). As a policy it
keeps SFT's gold (0.609). Started from the SFT model instead of the pretrained one it judges no better
(0.669). README, "AI feedback"; experiments/NOTES.md.
"""

import os

from rlhf_jax.config import load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
common = load_module(os.path.join(_HERE, "common.py"))
sft = load_module(os.path.join(_HERE, "toyworld_sft.py"))


def get_config(arg=None):
  variants = common.parse_variants(arg, "smoke")
  config = sft.get_config("smoke" if "smoke" in variants else None)
  config.toyworld.judge_sft = 24000
  config.data.pretrain_mix = 0.0  # As measured (before toyworld_sft.py mixed in pretraining documents).
  config.train.steps = 1200
  config.train.eval_every = config.train.checkpoint_every = 600
  if "smoke" in variants:
    config.toyworld.judge_sft = 60
    config.train.steps = 4
    config.train.eval_every = config.train.checkpoint_every = 2
  return config
