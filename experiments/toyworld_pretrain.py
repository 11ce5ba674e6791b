"""toyworld stage 1: pretrain a tiny GPT-2-style model on the generated corpus.

  python -m rlhf_jax.main --config experiments/toyworld_pretrain.py --workdir runs/toyworld/pretrain

Hardware: a 2-core CPU. Runtime: 637 s measured on a 2-core machine shared with other jobs (2026-12-05, world
0). Measured result: validation loss 1.155 nats/token. The model learns the world's words, grammar
and raw skills; it does not yet follow instructions (that is SFT's job).

Model: 4 layers, 4 heads, width 128 (about 0.9M parameters with the 1024-token vocabulary) — the size every
toyworld stage uses. Data: 20,000 documents (about 1.4M tokens), packed into rows of 128 tokens with
segment ids. Batch arithmetic: 32 rows x 128 tokens = 4,096 tokens per step; 1,200 steps = about 3.6 epochs.
"""

import os

from rlhf_jax.config import base_config, load_module, model_config

common = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  common.parse_variants(arg, "smoke")
  config = base_config()
  config.stage = "pretrain"
  config.seed = 0
  config.model = model_config("gpt2", vocab_size=0, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512,
                              max_len=128)
  config.data.source = "toyworld"
  config.data.layout = "packed"
  config.data.tokenizer = "sentencepiece"
  config.data.tokenizer_vocab_size = 1024
  config.train.steps = 1200
  config.train.batch_size = 32
  config.train.seq_len = 128
  config.train.log_every = 50
  config.train.eval_every = 400
  config.train.checkpoint_every = 400
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.optim.b2 = 0.99
  if arg == "smoke":  # Seconds on a CPU.
    config.model.n_layers = 2
    config.model.d_model = 32
    config.model.d_ff = 64
    config.data.tokenizer_vocab_size = 400
    config.toyworld.num_docs = 300
    config.toyworld.num_sft = 100
    config.train.steps = 6
    config.train.batch_size = 4
    config.train.seq_len = 64
    config.model.max_len = 64
    config.train.log_every = 2
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.optim.warmup_steps = 2
  return config
