"""toyworld stage 4: RLHF with PPO against the reward model, with a KL penalty to the SFT model.

  python -m rlhf_jax.main --config experiments/toyworld_ppo.py --workdir runs/toyworld/ppo \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Hardware: a 2-core CPU; about 2.5 s an iteration (quickstart size, measured alone), so 30 iterations and one
evaluation take about 2 minutes. Rollouts: 64 training prompts an iteration, each answered 4 times at
temperature 0.7 (the temperature every evaluation samples at) with up to 32 new tokens; each answer is
scored against the mean of the other three (leave-one-out, the RLOO estimator, Ahmadian et al. 2024) and
there is no critic (the December 2026 audit found one bought nothing here; `ppo.critic_free=false` brings
it back, with `ppo.critic_warmup` iterations of critic pre-training). KL to SFT twice: beta 0.1 x the k1
estimate in the reward, and the exact per-token KL over the vocabulary in the loss (`ppo.kl_loss_coef` 1:
the same gold gain at about a third to a half of the KL, experiments/NOTES.md).
Batch arithmetic: 256 answers x 1 epoch in 4 minibatches of 64 = 4 actor updates an iteration at lr 5e-5
(the audit: 2e-4 lowers the likelihood of every sampled answer, rewarded ones included); 30 iterations =
7,680 episodes. Evaluation: the 250 held-out prompts at temperature 0.7, against the SFT model's answers to
the same prompts with the same keys and against SFT sampled at temperature 0.5 (the free baseline).

Expected (2026-12-07, world 0, 2-core AMD EPYC, from toyworld_sft.py's model with its pretraining mix and
the toyworld_reward run from it, seeds 0-2 in one program: --config.train.seeds=3
--config.ppo.iterations_per_call=5 --config.train.log_every=5; 397 s, beside the test suite):
held-out gold 0.754 / 0.748 / 0.754 against SFT 0.692, gain +0.060 +- 0.004 (each +- 0.035-0.040 paired), KL
0.32-0.35, win rate 55.0-56.0%; SFT at T 0.5 0.720, the RM's best of 4 0.806, gold's 0.871. From the SFT
without the mix (2026-12-06, Intel Xeon): +0.093 +- 0.007 against its RM's best of 4 at 0.826. The history
(100 iterations: +0.082): experiments/NOTES.md. `:lora`: rank-8 adapters on every projection of
the actor, lr x10 (README, LoRA and int8).
"""

import os

from rlhf_jax.config import base_config, load_module, model_config

common = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


# The critic-free estimators as their papers specify them, on this file's rollouts (64 prompts x 4 answers)
# and clipped update; `:grpo`, `:rloo`, `:dr_grpo` (with smoke: `:smoke,grpo`). ppo.* keys they set:
METHODS = {
    # Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    # Feedback in LLMs": each answer's score less the mean of the other k - 1 (leave-one-out), the KL as a
    # per-token penalty in the reward, no normalisation of the advantages.
    "rloo": dict(critic_free=True, group_baseline=True, group_std=False, whiten_advantages=False, kl_coef=0.1,
                 kl_loss_coef=0.0),
    # Shao et al. 2024, "DeepSeekMath" (sec. 4.1): (r - mean) / std over the group, no KL in the reward but the
    # k3 estimate in the loss with beta 0.04, each answer's token mean averaged over answers (eq. 3).
    "grpo": dict(critic_free=True, group_baseline=True, group_std=True, whiten_advantages=False, kl_coef=0.0,
                 kl_loss="k3", kl_loss_coef=0.04, loss_aggregation="sequence_mean"),
    # Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective": GRPO without its two
    # normalisations -- the group's mean only, and token sums over a constant (the response width); GRPO's KL.
    "dr_grpo": dict(critic_free=True, group_baseline=True, group_std=False, whiten_advantages=False, kl_coef=0.0,
                    kl_loss="k3", kl_loss_coef=0.04, loss_aggregation="constant"),
}


def get_config(arg=None):
  variants = common.parse_variants(arg, "smoke", "lora", *METHODS, combine=True)
  if len(variants & set(METHODS)) > 1:
    raise ValueError(f"variants {arg!r}: name at most one of {', '.join(METHODS)}")
  config = base_config()
  config.stage = "ppo"
  config.seed = 0
  config.init_from = "runs/toyworld/sft"
  config.ppo.reward_from = "runs/toyworld/reward"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"
  config.train.steps = 30  # 7,680 episodes; 100 iterations scored higher by the RM and lower by gold (docstring).
  config.train.batch_size = 256  # 64 prompts x 4 answers an iteration.
  config.train.log_every = 1
  config.train.eval_every = 30
  config.train.checkpoint_every = 30
  config.optim.lr = 5e-5
  config.optim.warmup_steps = 5
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0
  config.optim.b2 = 0.99
  config.ppo.critic_lr = 5e-5
  config.ppo.samples_per_prompt = 4  # Each answer scored against the other three (leave-one-out, RLOO).
  config.ppo.group_baseline = True
  config.ppo.critic_free = True
  config.ppo.kl_coef = 0.1
  config.ppo.kl_loss_coef = 1.0  # The exact KL in the loss: it stops the drift the sampled estimate lets through.
  config.ppo.temperature = 0.7  # The temperature every evaluation samples at.
  config.ppo.max_new_tokens = 32
  config.ppo.prompt_len = 40
  config.ppo.epochs = 1  # 1 epoch x 4 minibatches of 64 rows: 4 actor updates an iteration.
  config.ppo.minibatches = 4
  if "smoke" in variants:  # Seconds on a CPU; init_from / reward_from must name smoke SFT and reward workdirs.
    common.smoke_evaluation(config)  # Evaluated as the smoke SFT and reward stages evaluate (eval/gold.py).
    config.toyworld.num_docs = 300
    config.ppo.num_prompts = 32
    config.ppo.max_new_tokens = 6
    config.ppo.prompt_len = 32
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.samples_per_prompt = 2
    config.ppo.group_baseline = True
    config.ppo.critic_free = False  # The smoke run exercises the critic's path too.
    config.ppo.ptx_coef = 0.5
    config.ppo.ptx_batch = 2
    config.ppo.ptx_seq_len = 16
    config.ppo.adaptive_kl = True
    config.ppo.ema_decay = 0.5
    config.train.steps = 4
    config.train.batch_size = 8
    config.train.log_every = 1
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
  for name in variants & set(METHODS):
    config.ppo.update(METHODS[name])
  if "lora" in variants:  # Rank-8 adapters on every projection at 10x the learning rate (README: LoRA and int8).
    config.lora.rank, config.lora.alpha = 8, 16.0
    config.optim.lr = 10 * config.optim.lr
  return config
