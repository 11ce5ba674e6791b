"""toyworld stage 4: RLHF with PPO against the reward model, with a KL penalty to the SFT model.

  python -m rlhf_jax.main --config experiments/toyworld_ppo.py --workdir runs/toyworld/ppo \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Hardware: a 2-core CPU. Rollouts: 64 training prompts an iteration, answered at temperature 0.7 (the
temperature every evaluation samples at) with up to 32 new tokens; the actor starts from SFT, the critic
from the reward model; beta 0.5. Batch arithmetic: 64 responses x 4 epochs x 1 minibatch = 4 actor and 4
critic updates an iteration. Evaluation: the 250 held-out prompts of the SFT stage at temperature 0.7,
against the SFT model's answers to the same prompts with the same keys.

Measured alone on the machine (2026-11-30) from the toyworld_sft run (16,000 demonstrations) and its
toyworld_reward.py reward model (0.865 on clear gold pairs), 100 iterations: 264 s, held-out gold 0.739 /
0.769 / 0.761 / 0.760 at iterations 25 / 50 / 75 / 100 against SFT's 0.741 on the same prompts (+-0.046):
+0.019, win rate 51.2% +- 3.1 by gold and 61.4% by the RM, KL 0.53, RM score 0.12 -> 0.23. Per task, SFT ->
PPO: review 0.93 -> 0.97, list 0.85 -> 0.85, repeat 0.91 -> 0.91, reverse 0.84 -> 0.85, arithmetic 0.18 ->
0.22.

What the reward model can give. Best-of-n with this reward model (python -m rlhf_jax.best_of_n; table in
experiments/toyworld_reward.py): picking the RM's favourite of n SFT answers to the held-out prompts raises
gold from 0.755 to 0.809 (n = 4, KL <= 0.64) and 0.814 (n = 16, KL <= 1.84), while the gold scorer's own
pick reaches 0.909 and 0.976. The RM picks repeats, reversals and reviews as well as gold does and
arithmetic no better than chance (0.28 against the oracle's 0.90 at n = 16). Reweighting 32 SFT answers a
prompt by exp(score / beta) -- the KL-regularised optimum PPO aims at, pi_SFT exp(r / beta) / Z, estimated
within SFT's samples -- gives gold 0.803 at beta 0.5 (KL about 0.28) and 0.809 at beta 0.2 (about 0.63),
against 0.757 for the samples themselves. So against this reward model PPO can be expected to gain about
+0.05 gold, not the +0.15 the project aims at: that needs a reward model that can check sums and lists.

What PPO gets (50 iterations, --config.train.steps=50 --config.train.eval_every=10, the same SFT and RM;
final gold against SFT's on the same prompts and keys, win rate by gold (+-0.03), KL; 98-197 s a run, some
on a shared machine):

  rollouts                                             gold (SFT's)      win rate  KL
  temperature 0.7, beta 0.5 (these defaults)           0.769 (0.741)     51.8%     0.51
  temperature 0.7, beta 0.2                            0.736 (0.741)     47.8%     0.96
  16 prompts x 4, group baseline, beta 0.5             0.762 (0.741)     51.0%     0.61
  the same without a critic (ppo.critic_free)          0.748 (0.741)     49.6%     0.66
  64 prompts x 4, no critic, 1 epoch x 4 minibatches   0.784 (0.786)     51.0%     0.30
  temperature 1.0, beta 0.5                            0.753 (0.741)     50.6%     0.96
  temperature 1.0, beta 1                              0.752 (0.741)     49.0%     0.52
  temperature 0.7, beta 0.5, lr 1.5e-4 (3x)            0.635 (0.741)     38.6%     4.87

The ablations/kl_coef.py table has beta from 0 to 1. No setting moves gold beyond the evaluation's noise:
PPO raises the RM's score on held-out prompts by 0.1-0.3 (best-of-4: 0.47) and spends 0.3-1 nats of KL on
it, where the KL-regularised optimum needs 0.28 for +0.05 gold; on its own training prompts the rollouts'
gold stays flat too (0.78-0.84 in means of 5 iterations of the 64 x 4 run, no trend) while their RM score
rises 0.06 -> 0.25 and entropy falls 0.71 -> 0.65. What it learns is mostly not what separates right from wrong answers. Measured on the way:

- Temperature. Two runs trained at 1.0 (the earlier default; beta 1, and beta 0.5 with 16 x 4 rollouts
  and the group baseline) raised held-out gold sampled at 1.0 (0.616 -> 0.632 / 0.633) but not at 0.7
  (0.748 -> 0.749 / 0.736; two seeds of 500 held-out prompts each): at 1.0 PPO learns what a lower
  temperature does anyway. So rollouts are now sampled at the evaluation's temperature.
- beta. At temperature 1.0 the final gold rose with beta from 0.709 (beta 0) to 0.753 (beta 0.5); the
  earlier default 0.05 ended at 0.734 in 50 iterations and 0.736 in 100 (KL 2.6), and 0.699 in 150 with
  :group (KL 3.5).
- The words swapped in reversals ("espresso horse pink camellia needle" -> "kefir tractor pink camellia
  needle") are not the RM being exploited, as an earlier version of this note said: on 200 held-out repeats
  and reversals the RM scores the right answer above the same answer with one word replaced by another of
  its kind in 99.5% of cases (by 1.6 std on average), and above one with a word duplicated in 99.0%. A
  larger step size makes it worse, not the RM score better: at lr 1.5e-4 the RM score falls (-0.62) with
  reversals (0.84 -> 0.38). It is PPO's own noise -- 64 answers an iteration, a critic that explains 0-4% of
  the returns' variance -- that the KL budget goes on.
- Lists under low beta ("list 6 fruits ." -> "pear , pear , apple , apple , pear , pear ." at beta 0.05 with
  :group) are RM exploitation: repeated words are likely words, and the RM's score includes the answer's
  mean log-likelihood (reward.likelihood_weight 1). Making that part relative to SFT's, g w (L_RM - L_SFT),
  was tried and dropped: PPO then maximised -L_SFT (KL 25 at iteration 50, gold 0.28).
- Without a critic (ppo.critic_free) an update of 16 x 4 rollouts in 4 epochs takes 1.04 s instead of
  1.90 s (medians per iteration) for the same result.

Earlier figures, with temperature 1.0 and beta 0.05 (then the defaults): from this SFT and RM, 100
iterations in 278 s, gold 0.741 -> 0.736 (win 45.8%, KL 2.6), :group 150 iterations 0.786 -> 0.699 (960 s),
iterated rounds (--config.ppo.round_every=25) 0.741 -> 0.708 (783 s); from the earlier SFT model (4,000
demonstrations, gold 0.632-0.650) and its RM (0.814), gold held level (default 0.632 -> 0.643, :group 0.650
-> 0.653), and with the gold scorer as the reward (--config.ppo.reward=gold) and :group it rose 0.650 ->
0.704 in 150 iterations (win rate 55.2%).

`:group` samples each prompt 4 times and scores every answer against the other three (ppo.samples_per_prompt,
ppo.group_baseline; 64 prompts x 4 = 256 rollouts, 2 epochs x 4 minibatches, lr 1e-4, 150 iterations).
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
