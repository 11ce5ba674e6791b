"""toyworld stage 4: RLHF with PPO against the reward model, with a KL penalty to the SFT model.

  python -m rlhf_jax.main --config experiments/toyworld_ppo.py --workdir runs/toyworld/ppo \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Hardware: a 2-core CPU. Measured (700 s on a 2-core machine shared with two other jobs; reward model of
toyworld_reward.py at 0.62 gold-pair accuracy): over 100
iterations the held-out RM score rose from 0.09 (SFT) to 0.46 and the policy beat SFT by the RM's judgement
in 70.8% +- 5.2% of prompts, at a KL of 5.3 nats per response -- but gold fell from 0.635 to 0.562 (win
rate by gold 40.6% +- 4.2%): review 0.83 -> 0.96, where the RM is right, while list, repeat, reverse and
arithmetic, where it is near chance, fell (0.83 -> 0.81, 0.76 -> 0.62, 0.51 -> 0.38, 0.24 -> 0.04). That is
reward over-optimisation of a weak proxy, not the gain the recipe gives with a good reward model; the
reward model is the bottleneck (see toyworld_reward.py). Per iteration: rollout 0.59 s, update 3.2 s;
value explained variance 0.95, clip fraction 0.03.

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
  config.ppo.kl_coef = 0.05
  config.ppo.temperature = 1.0
  config.ppo.max_new_tokens = 32
  config.ppo.prompt_len = 40
  config.ppo.epochs = 4
  config.ppo.minibatches = 1
  if arg == "smoke":  # Seconds on a CPU; init_from / reward_from must name smoke SFT and reward workdirs.
    config.toyworld.num_eval_prompts = 8
    config.toyworld.num_docs = 300
    config.ppo.num_prompts = 32
    config.ppo.max_new_tokens = 6
    config.ppo.prompt_len = 32
    config.ppo.epochs = 2
    config.ppo.minibatches = 2
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
    raise ValueError(f"unknown variant {arg!r}; expected smoke or nothing")
  return config
