"""toyworld stage 3: the reward model, trained on the SFT model's own samples ranked by simulated annotators.

  python -m rlhf_jax.main --config experiments/toyworld_reward.py --workdir runs/toyworld/reward \
      --config.init_from=runs/toyworld/sft

Hardware: a 2-core CPU. Data as InstructGPT and Gao et al. 2022 feed a reward model: 24,000 fresh training
prompts and 250 held-out ones (disjoint instances), K=4 SFT samples each at temperature 1.0 (a diverse
policy), ranked by the simulated annotator (Plackett-Luce on gold with temperature 0.1, ties within 0.02, 5%
random rankings), every C(K,2) pair of a prompt in one batch element; prompts whose answers all tie are
dropped. One epoch (`reward.epochs` 1): 32 prompts x 4 responses x 56 tokens a step, so about 24,000 x
(share kept) / 32 steps -- InstructGPT: "multiple epochs overfit quickly". The head (`reward.likelihood_weight`
1): the score is the head's projection of the last hidden state plus the response's mean log-likelihood
under the RM's own LM head (model/transformer.py), the projection starting at zero.

The stage ends with best-of-n: the SFT model answers the held-out evaluation prompts 8 times, and the summary
gives the gold of the RM's pick out of 1, 2, 4, 8 next to the gold scorer's own pick -- what its ranking is
worth before any PPO. Measured (2026-12-07, world 0, from toyworld_sft.py's model with its pretraining mix, on
a 2-core AMD EPYC beside the test suite: 505 s): 634 steps; on held-out comparisons 0.785 accuracy against the
labels, 0.865 against gold (0.887 on pairs >= 0.2 apart), Spearman 0.66 with gold; best of 4 SFT answers (the
one evaluator): 0.806 by the RM's pick, 0.871 by gold's, one answer 0.676. From the SFT without the
mix (2026-12-06, Intel Xeon, 460 s alone): 633 steps, 0.795 / 0.869 / 0.886, Spearman 0.70, best of 4 0.826.
"""

import os

from rlhf_jax.config import base_config, load_module, model_config

common = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  common.parse_variants(arg, "smoke")
  config = base_config()
  config.stage = "reward"
  config.seed = 0
  config.init_from = "runs/toyworld/sft"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"
  config.reward.loss = "pairwise"
  config.reward.likelihood_weight = 1.0
  config.toyworld.num_comparisons = 24000  # Fresh comparisons, one epoch (below).
  config.reward.epochs = 1.0  # train.steps follows the comparisons kept: about 24,000 / 32 = 750.
  config.train.batch_size = 32
  config.train.seq_len = 56
  config.train.log_every = 25
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  config.optim.lr = 1e-4
  config.optim.warmup_steps = 20
  config.optim.weight_decay = 0.0
  if arg == "smoke":  # Seconds on a CPU; init_from must name a toyworld_sft.py:smoke workdir.
    config.toyworld.num_comparisons = 24
    config.toyworld.num_val_comparisons = 8
    common.smoke_evaluation(config)  # Best-of-4 on the 8 held-out prompts every smoke stage evaluates on.
    config.reward.norm_samples = 16
    config.reward.best_of_n = 4
    # A smoke SFT model's answers all score 0 and would all tie: random rankings keep the data non-empty.
    config.toyworld.disagreement = 1.0
    config.reward.epochs = 0.0
    config.train.steps = 4
    config.train.batch_size = 4
    config.train.seq_len = 48
    config.train.log_every = 2
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
  return config
