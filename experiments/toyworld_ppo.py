"""toyworld stage 4: RLHF with PPO against the reward model, with a KL penalty to the SFT model.

  python -m rlhf_jax.main --config experiments/toyworld_ppo.py --workdir runs/toyworld/ppo \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Hardware: a 2-core CPU. Measured alone on the machine (2026-11-30) from the toyworld_sft run (16,000
demonstrations) and its toyworld_reward.py reward model (0.865 on clear gold pairs). Held-out gold, SFT ->
PPO on the same 250 prompts with the same keys (the SFT figure moves between runs with the evaluation's
sampling keys; +-0.045 is its 95% interval):

  run                        wall    held-out gold (SFT's)                     win rate gold / RM   KL
  default, 100 iterations    278 s   0.761 0.734 0.710 0.736 at 25..100 (0.741)  45.8% / 66.8%        2.6
  :group, 150 iterations     960 s   0.718 0.721 0.699 at 50..150 (0.786)        40.6% / 66.0%        3.5
  default + iterated rounds  783 s   0.761 0.712 0.708 0.708 at 25..100 (0.741)  43.8% / 63.4%        1.8
    (--config.ppo.round_every=25: 500 prompts x 4 answers of the current policy labelled and 100 more
    reward-model steps on all comparisons, every 25 iterations)

PPO raises the reward model's score and lowers gold: the policy finds what this RM does not punish. On
held-out list prompts the :group policy answers "list 6 fruits ." with "pear , pear , apple , apple , pear ,
pear ." (SFT: "guava , plum , melon , apricot , peach , pear ."), and on reversals the default run's policy
swaps words for others ("espresso horse pink camellia needle" -> "kefir tractor pink camellia needle").
Repeated words are likely words, and the RM's score, g (h.v + w L_RM) + b, includes the answer's mean
log-likelihood L_RM under its own LM head (w = reward.likelihood_weight), which rewards exactly that; the RM
never saw such answers among SFT's samples. Labelling the policy's own samples every 25 iterations (iterated
rounds) did not catch up in these budgets. Making the likelihood part relative to SFT's, g w (L_RM - L_SFT)
(a DPO-style log-ratio; tried and not kept), was worse: PPO then maximised -L_SFT -- KL 15 at iteration 25
and 25 at 50, gold 0.34 and 0.28, reviews 0.0. Per task (default run): review 0.93 -> 0.94, list 0.85 ->
0.85, repeat 0.91 -> 0.87, reverse 0.84 -> 0.74, arithmetic 0.18 -> 0.28.

From the earlier SFT model (4,000 demonstrations, held-out gold 0.632-0.650) and its RM (0.814), PPO held gold
level: default 0.632 -> 0.643 in 100 iterations (250 s), :group 0.650 -> 0.653 in 150 (998 s, shared
machine). With the gold scorer itself as the reward (--config.ppo.reward=gold) and :group, held-out gold
rose 0.650 -> 0.695 / 0.660 / 0.704 at 50/100/150 (win rate by gold 55.2% +- 4.2; repeat 0.77 -> 0.87,
reverse 0.54 -> 0.67) and the rollouts' gold 0.608 -> 0.715: PPO learns, but what it learns about one prompt
transfers little to others (on a fixed set of 64 training prompts the default oracle run rose 0.656 -> 0.827
in 40 iterations), and without the group baseline the oracle run did not move held-out gold. Neither reward
reaches the +0.15 over SFT the project aims at.

`:group` samples each prompt 4 times and scores every answer against the other three (ppo.samples_per_prompt,
ppo.group_baseline; 64 prompts x 4 = 256 rollouts, 2 epochs x 4 minibatches, lr 1e-4, 150 iterations).

Rollouts: 64 training prompts per iteration, answered at temperature 1.0 with up to 32 new tokens; the
actor starts from SFT, the critic from the reward model. Batch arithmetic: 64 responses x 4 epochs x 1
minibatch = 4 actor and 4 critic updates per iteration. Evaluation: the 250 held-out prompts of the SFT
stage, sampled at temperature 0.7, against the SFT model's answers to the same prompts with the same keys.
"""

from rlhf_jax.config import base_config, model_config


def get_config(arg=None):
  config = base_config()
  config.stage = "ppo"
  config.seed = 0
  config.init_from = "runs/toyworld/sft"
  config.ppo.reward_from = "runs/toyworld/reward"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"
  config.train.steps = 100
  config.train.batch_size = 64
  config.train.log_every = 1
  config.train.eval_every = 25
  config.train.checkpoint_every = 25
  config.optim.lr = 5e-5
  config.optim.warmup_steps = 10
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0
  config.optim.b2 = 0.99
  config.ppo.critic_lr = 5e-5
  config.ppo.kl_coef = 0.5  # See "Why these settings" above.
  config.ppo.temperature = 0.7  # The temperature every evaluation samples at.
  config.ppo.max_new_tokens = 32
  config.ppo.prompt_len = 40
  config.ppo.epochs = 4
  config.ppo.minibatches = 1
  if arg == "group":  # Four answers per prompt, each scored against the other three (see above).
    config.train.batch_size = 256  # 64 prompts x 4 answers.
    config.ppo.samples_per_prompt = 4
    config.ppo.group_baseline = True
    config.ppo.epochs = 2
    config.ppo.minibatches = 4
    config.optim.lr = 1e-4
    config.ppo.critic_lr = 1e-4
    config.train.steps = 150
    config.train.eval_every = 50
    config.train.checkpoint_every = 50
  elif arg == "smoke":  # Seconds on a CPU; init_from / reward_from must name smoke SFT and reward workdirs.
    config.toyworld.num_eval_prompts = 8
    config.toyworld.num_docs = 300
    config.ppo.num_prompts = 32
    config.ppo.max_new_tokens = 6
    config.ppo.prompt_len = 32
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
    config.ppo.samples_per_prompt = 2
    config.ppo.group_baseline = True
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
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r}; expected group, smoke or nothing")
  return config
