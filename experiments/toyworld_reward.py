"""toyworld stage 3: the reward model, trained on the SFT model's own samples ranked by simulated annotators.

  python -m rlhf_jax.main --config experiments/toyworld_reward.py --workdir runs/toyworld/reward \
      --config.init_from=runs/toyworld/sft

Hardware: a 2-core CPU. Measured alone on the machine (2026-11-30) from the toyworld_sft run (16,000
demonstrations, held-out gold 0.748), on the comparisons of 6,000 prompts (5,182 kept, 219 held out; sampling
them took 35 s): 164 s in all. Held-out accuracy against gold on pairs >= 0.2 apart 0.865 (repeat 0.957,
reverse 0.951, list 0.807, review 0.806, arithmetic 0.755; 716 pairs), 0.845 / 0.867 / 0.865 at steps 100 /
200 / 300; on all pairs whose gold differs 0.841; against the annotators' labels 0.776; Spearman with gold
0.507; calibration error 0.086. From the earlier SFT model (4,000 demonstrations, held-out gold 0.647) the
same config reached 0.814 on clear pairs.

What its ranking is worth (best-of-n, rlhf_jax/eval/best_of_n.py; the stage reports n <= reward.best_of_n in
its summary and report). Measured on this model afterwards with `python -m rlhf_jax.best_of_n --policy
runs/toyworld/sft --reward runs/toyworld/reward --n 16` (15 s): 16 SFT answers at temperature 0.7 to each
of the 250 held-out prompts; gold of the RM's pick / of the gold scorer's pick:

  n    KL bound  gold: RM's pick / oracle's   arithmetic   list         repeat       reverse      review
  1    0         0.755 / 0.755                0.26 / 0.26  0.87 / 0.87  0.90 / 0.90  0.84 / 0.84  0.91 / 0.91
  4    0.64      0.809 / 0.909                0.26 / 0.62  0.89 / 0.98  0.98 / 0.98  0.95 / 0.96  0.97 / 1.00
  16   1.84      0.814 / 0.976                0.28 / 0.90  0.87 / 1.00  0.99 / 1.00  0.95 / 0.98  0.98 / 1.00

On repeats, reversals and reviews the RM picks as well as gold does; on arithmetic it picks no better than
chance, and on lists it misses most of what gold finds. Its pick is worth +0.06 gold at most, however many
answers it chooses from: a policy optimised against it can be expected to gain about that much, not the
+0.22 that the samples hold (see experiments/toyworld_ppo.py).

The head (`reward.likelihood_weight` 1): the score is the head's projection of the last hidden state plus
the response's mean log-likelihood under the RM's own LM head (model/transformer.py), with the projection
starting at zero. The InstructGPT head alone (likelihood_weight 0, the projection from random) reached only
0.623 after 400 steps (0.587 on 1,685 prompts), training accuracy 0.67: a 0.9M-parameter RM does not learn to
check an answer against its prompt from a few thousand comparisons. The SFT model's own likelihood does
that already -- untrained, it scores 0.772 on the same pairs (repeat 0.959, reverse 0.812) -- and training
the two together adds what likelihood misses (review's fluency, arithmetic). Held-out accuracy by step
(this config, the earlier SFT model): 0.812, 0.825, 0.814 at steps 100, 200, 300; the same run at 400 steps
ended at 0.801 with training loss still falling (over-fitting), so 300 it is. Per-variant figures: ablations/rm_variants.py.

Data: 6,000 training and 250 held-out prompts (disjoint instances), K=4 SFT samples each at temperature 1.0,
ranked by the simulated annotator (Plackett-Luce on gold with temperature 0.1, ties within 0.02, 5% random
rankings), written to WORKDIR/comparisons/{train,heldout}.jsonl; prompts whose answers all tie are dropped.
Batch arithmetic: 32 prompts x 4 responses x 56 tokens per step, so one epoch of 5,000 kept prompts is about
157 steps; 300 steps are about 1.9 epochs.
"""

from rlhf_jax.config import base_config, model_config


def get_config(arg=None):
  config = base_config()
  config.stage = "reward"
  config.seed = 0
  config.init_from = "runs/toyworld/sft"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"
  config.reward.loss = "pairwise"
  config.reward.likelihood_weight = 1.0
  config.toyworld.num_comparisons = 6000
  config.train.steps = 300
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
    config.sampling.batch_size = 8
    config.sampling.max_new_tokens = 8
    config.reward.norm_samples = 16
    config.reward.best_of_n = 4
    config.toyworld.num_eval_prompts = 8  # Best-of-4 on 8 held-out prompts.
    # A smoke SFT model's answers all score 0 and would all tie: random rankings keep the data non-empty.
    config.toyworld.disagreement = 1.0
    config.train.steps = 4
    config.train.batch_size = 4
    config.train.seq_len = 48
    config.train.log_every = 2
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r}; expected smoke or nothing")
  return config
