"""toyworld comparisons labelled by AI feedback: the SFT model's answers ranked by toyworld's judge.

  python -m rlhf_jax.main --config experiments/toyworld_ai_comparisons.py --workdir runs/toyworld/ai_comparisons \
      --config.init_from=runs/toyworld/sft --config.judge.model=runs/toyworld/judge

The comparisons stage's prompts and answers (experiments/toyworld_reward.py's settings: K = 4 SFT answers at
temperature 1.0 to each training prompt; the same seeds give the same answers), ranked by the judge
(experiments/toyworld_judge.py) instead of the simulated annotator: every pair of answers under the three
principles of experiments/principles/toyworld.txt, in both orders, 36 questions a prompt. The reward stage
then trains on them as data.path (`--config.data.path=runs/toyworld/ai_comparisons`). With judge.best_of_n
16 the stage ends with the pointwise judge as a best-of-n picker on the held-out evaluation prompts.

Measured (2026-12-06, world 0, the quickstart's SFT model and 8,000 prompts, experiments/toyworld_judge.py's
judge; 824 s alone on a 2-core Xeon of float32 matmul peak 241 GFLOP/s, 288,000 judging questions at about 360
a second): 7,898 comparisons kept (the annotator kept 6,625: it ties answers whose gold is within 0.02),
agreement with gold 0.709 (training) and 0.697 (held-out) of the pairs, mean confidence 0.62; the pointwise
judge's pick of 4 and of 16 held-out answers scores gold 0.662 and 0.641 (one answer 0.598, gold's own pick
0.795 and 0.907). The reward model trained on them and PPO against it: README, "AI feedback".
"""

import os

from rlhf_jax.config import load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
common = load_module(os.path.join(_HERE, "common.py"))
reward = load_module(os.path.join(_HERE, "toyworld_reward.py"))


def get_config(arg=None):
  variants = common.parse_variants(arg, "smoke")
  config = reward.get_config("smoke" if "smoke" in variants else None)
  config.stage = "ai_comparisons"
  config.init_from = "runs/toyworld/sft"
  config.judge.model = "runs/toyworld/judge"
  config.judge.principles = os.path.join(_HERE, "principles", "toyworld.txt")
  config.judge.best_of_n = 16
  if "smoke" in variants:
    config.judge.best_of_n = 2
  return config
