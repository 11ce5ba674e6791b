"""toyworld stage 2: instruction tuning on the imperfect demonstrators' answers.

  python -m rlhf_jax.main --config experiments/toyworld_sft.py --workdir runs/toyworld/sft \
      --config.init_from=runs/toyworld/pretrain

Hardware: a 2-core CPU. Runtime: about 4 minutes (evaluations included; 236 s measured alone on the machine).
Measured (2026-12-06, world 0, from the quickstart's toyworld_pretrain run, whose held-out pretraining loss is
1.155): held-out gold 0.694 by the one evaluator (eval/gold.py) against the demonstrators' 0.868 -- review
0.72/0.68, list 0.68/0.76, harmful 0.92/0.82, repeat 0.88/1.00, reverse 0.81/1.00, arithmetic 0.17/0.96;
validation loss 0.606; held-out pretraining loss 1.333. Without the pretraining documents in the mix
(`--config.data.pretrain_mix=0`, the default until 2026-12-06): validation loss 0.586, gold 0.691, and a
pretraining loss of 4.60 -- SFT had wiped out the language model; 10% / 25% / 50% of the tokens: pretraining
loss 1.25 / 1.17 / 1.12 at validation loss 0.64 / 0.73 / 0.92 (experiments/NOTES.md, session 22). The
demonstrators' losses are their habits (filler on reviews and lists, complying with indirect harmful requests,
ignored constraints: data/toyworld.py); SFT copies them and adds its own slips in copying and arithmetic. The
16,000 demonstrations (about InstructGPT's ~13k) were chosen on the old world, where 4,000 over-fitted and
64,000 gave no more (experiments/NOTES.md).

Data: 16,000 demonstrations (one user turn, one assistant turn; about 30 tokens each) and pretraining documents
holding 5% of all the tokens (`data.pretrain_mix`), packed into rows of 128 tokens; the loss counts the
assistant's tokens with its end-of-turn token, and every token of a document. Batch arithmetic: 32 rows x 128
tokens hold about 125 demonstrations, so 600 steps are about 5 epochs. `:lora` (rank-8 adapters, lr 5e-3)
fails here: held-out gold 0.14 against full fine-tuning's 0.60 at 500 steps (quickstart.py:short; README, LoRA).
"""

import os

from rlhf_jax.config import base_config, load_module, model_config

common = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  variants = common.parse_variants(arg, "smoke", "lora", combine=True)
  config = base_config()
  config.stage = "sft"
  config.seed = 0
  config.init_from = "runs/toyworld/pretrain"
  # The architecture comes from init_from; only the run-time keys (dtype, remat, ...) of this section apply.
  config.model = model_config("gpt2")
  config.data.source = "toyworld"
  config.toyworld.num_sft = 16000  # 4,000 (the world's default) over-fits in 600 steps; see above.
  # 5% of the training tokens are pretraining documents: without them SFT wipes out the language model (the
  # held-out pretraining loss 1.155 -> 4.60), with them it keeps it (1.33) for +0.02 of SFT's validation loss.
  config.data.pretrain_mix = 0.05
  config.train.steps = 600
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.log_every = 25
  config.train.eval_every = 300
  config.train.checkpoint_every = 300
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 30
  config.optim.b2 = 0.99
  if "lora" in variants:  # Rank-8 adapters on every projection at 5x the learning rate (README: LoRA and int8).
    config.lora.rank, config.lora.alpha = 8, 16.0
    config.optim.lr = 5e-3
  if "smoke" in variants:  # Seconds on a CPU; init_from must name a toyworld_pretrain.py:smoke workdir.
    config.toyworld.num_docs = 300  # As toyworld_pretrain.py:smoke: the same held-out pretraining documents.
    config.toyworld.num_sft = 100
    config.toyworld.num_val_sft = 20
    common.smoke_evaluation(config)  # As every smoke stage evaluates: the same answers (eval/gold.py).
    config.train.steps = 4
    config.train.batch_size = 4
    config.train.seq_len = 64
    config.train.log_every = 2
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
  return config
