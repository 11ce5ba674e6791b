"""toyworld stage 2: instruction tuning on the imperfect demonstrators' answers.

  python -m rlhf_jax.main --config experiments/toyworld_sft.py --workdir runs/toyworld/sft \
      --config.init_from=runs/toyworld/pretrain

Hardware: a 2-core CPU. Runtime: about 4 minutes (evaluations included). Measured here (from the full
toyworld_pretrain run): held-out gold 0.572 against the demonstrators' 0.875 (review 0.81/0.82, list
0.81/0.93, repeat 0.74/0.93, reverse 0.30/0.89, arithmetic 0.20/0.81), end-of-turn token in 100% of samples.
The demonstrators err 20% of the time; the copying and arithmetic tasks are still well below them, and
training loss (0.66) far below validation loss (1.42) says more demonstrations would help. (300 steps at
lr 5e-4 gave 0.369.)

Data: 4,000 demonstrations (one user turn, one assistant turn; about 30 tokens each) packed into rows of 128
tokens; the loss counts only the assistant's tokens and its end-of-turn token. Batch arithmetic: 32 rows x
128 tokens hold about 130 demonstrations, so 600 steps are about 20 epochs.
"""

from rlhf_jax.config import base_config, model_config


def get_config(arg=None):
  config = base_config()
  config.stage = "sft"
  config.seed = 0
  config.init_from = "runs/toyworld/pretrain"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"
  config.train.steps = 600
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.log_every = 25
  config.train.eval_every = 300
  config.train.checkpoint_every = 300
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 30
  config.optim.b2 = 0.99
  if arg == "smoke":  # Seconds on a CPU; init_from must name a toyworld_pretrain.py:smoke workdir.
    config.toyworld.num_sft = 100
    config.toyworld.num_val_sft = 20
    config.toyworld.num_eval_prompts = 10
    config.sampling.batch_size = 8
    config.sampling.max_new_tokens = 8
    config.train.steps = 4
    config.train.batch_size = 4
    config.train.seq_len = 64
    config.train.log_every = 2
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r}; expected smoke or nothing")
  return config
