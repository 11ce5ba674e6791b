"""toyworld comparisons labelled by AI feedback: the SFT model's answers ranked by toyworld's judge.

  python -m rlhf_jax.main --config experiments/toyworld_ai_comparisons.py --workdir runs/toyworld/ai_comparisons \
      --config.init_from=runs/toyworld/sft --config.judge.model=runs/toyworld/judge

The comparisons stage's prompts and answers (experiments/toyworld_reward.py's settings: K = 4 SFT answers at
temperature 1.0 to each training prompt; the same seeds give the same answers), ranked by the judge
(experiments/toyworld_judge.py) instead of the simulated annotator: every pair of answers under the three
principles of experiments/principles/toyworld.txt, in both orders, 36 questions a prompt. The reward stage
then trains on them as data.path (`--config.data.path=runs/toyworld/ai_comparisons`). With judge.best_of_n
16 the stage ends with the pointwise judge as a best-of-n picker on the held-out evaluation prompts.
Figures and the commands that made them: README, "AI feedback".
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
