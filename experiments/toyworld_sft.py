"""toyworld stage 2: instruction tuning on the imperfect demonstrators' answers.

  python -m rlhf_jax.main --config experiments/toyworld_sft.py --workdir runs/toyworld/sft \
      --config.init_from=runs/toyworld/pretrain

Hardware: a 2-core CPU. Runtime: about 4 minutes (evaluations included; 236 s measured alone on the machine).
Measured here (from the full toyworld_pretrain run, 2026-11-30): held-out gold 0.748 against the
demonstrators' 0.875 (review 0.93/0.82, list 0.86/0.93, repeat 0.90/0.93, reverse 0.87/0.89, arithmetic
0.19/0.81), end-of-turn token in 100% of samples; training loss 0.85, validation loss 0.98. The
demonstrators err 20% of the time; SFT is now within 0.07 of them on every task but arithmetic, and above
them on reviews.

How much data: the same 600 steps on 4,000 demonstrations (about 20 epochs) over-fit -- training loss 0.59,
validation loss 1.31, held-out gold 0.647 (reverse 0.52, repeat 0.73) -- and on 64,000 (about 1.2 epochs)
gave 0.744 (validation loss 0.94), the same gold as 16,000 within the evaluation's noise (+-0.05 on 250
prompts). 16,000 it is, about the size of InstructGPT's SFT set (~13k prompts). (300 steps at lr 5e-4 on
4,000 gave 0.369.)

Data: 16,000 demonstrations (one user turn, one assistant turn; about 30 tokens each) packed into rows of
128 tokens; the loss counts only the assistant's tokens and its end-of-turn token. Batch arithmetic: 32 rows
x 128 tokens hold about 130 demonstrations, so 600 steps are about 5 epochs.
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
  config.toyworld.num_sft = 16000  # 4,000 (the world's default) over-fits in 600 steps; see above.
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
    config.toyworld.num_docs = 300  # As toyworld_pretrain.py:smoke: the same held-out pretraining documents.
    config.toyworld.num_sft = 100
    config.toyworld.num_val_sft = 20
    config.toyworld.num_eval_prompts = 8  # As every smoke stage evaluates: the same answers (eval/gold.py).
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
