"""Character-level Tiny Shakespeare: nanoGPT's "baby GPT" recipe on a CPU, checked against published results.

  python -m rlhf_jax.main --config experiments/shakespeare_char.py --workdir runs/shakespeare \
      --config.data.path=../shared/data/tinyshakespeare.txt

Variants (comma-separated): `nanogpt` uses nanoGPT's learned position table instead of rotary positions;
`smoke` runs a few steps of a smaller model on whatever text data.path names (seconds on a CPU).

The training settings are nanoGPT's `config/train_shakespeare_char.py` with its CPU overrides (README: "baby
GPT" on a MacBook): block 64, batch 12, 4 layers, 4 heads, width 128, no biases, dropout 0, 2000 iterations,
lr 1e-3 with cosine decay to 1e-4 after 100 warmup iterations, AdamW betas (0.9, 0.99), weight decay 0.1 on
every matrix (embeddings included, as nanoGPT's optimizer groups do), gradient clipping 1.0, the first 90% of
characters for training and the last 10% for validation. Batch arithmetic: 12 rows x 64 characters = 768
predicted characters per step. The architecture is nanoGPT's (LayerNorm, exact GELU, tied embeddings) except
for the position encoding, which those settings leave open: rotary (RoPE, base 10,000, every head dimension)
by default, nanoGPT's learned table with `:nanogpt`.

Hardware: a laptop or 2-core CPU. Runtime: 130 s alone on the 2-core Intel Xeon (16 it/s while training).
Measured 2026-11-30, validation loss on the whole split (111,539 characters, each predicted once), seeds
1337 / 0 / 1: rotary 1.7928 / 1.7845 / 1.7839, `:nanogpt` 1.9077 / 1.9002 / 1.9012 -- where the PyTorch
references trained the same way land (Hugging Face GPTNeoX 1.78-1.79, GPT2 and nanoGPT itself 1.90 +- 0.01;
experiments/NOTES.md has every figure). tests/test_nanogpt_parity.py checks `:nanogpt,smoke` step for step
against nanoGPT's own training step.
"""

import os

from rlhf_jax.config import base_config, load_module, model_config

common = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
  variants = common.parse_variants(arg, "nanogpt", "smoke", combine=True)
  config = base_config()
  config.stage = "pretrain"
  config.seed = 1337
  config.model = model_config(
      "gpt2", vocab_size=0, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512, max_len=64,
      use_bias=False, tie_embeddings=True, dropout=0.0, activation="gelu",  # nanoGPT: exact GELU, no biases.
      position="rope")  # Rotary; nanoGPT's learned table with :nanogpt.
  config.data.source = "text"
  config.data.path = "../shared/data/tinyshakespeare.txt"
  config.data.layout = "windows"
  config.data.tokenizer = "char"
  config.data.val_fraction = 0.1
  config.train.steps = 2000
  config.train.batch_size = 12
  config.train.seq_len = 64
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.optim.lr = 1e-3
  config.optim.min_lr_ratio = 0.1  # Decays to 1e-4.
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.b1, config.optim.b2 = 0.9, 0.99
  config.optim.weight_decay = 0.1
  config.optim.decay_embeddings = True  # nanoGPT decays every matrix, embeddings included.
  config.optim.grad_clip = 1.0
  if "nanogpt" in variants:
    config.model.position = "learned"
  if "smoke" in variants:
    config.model.n_layers = 2
    config.model.d_model = 32
    config.model.d_ff = 64
    config.model.max_len = 32
    config.train.steps = 6
    config.train.seq_len = 32
    config.train.batch_size = 4
    config.train.log_every = 2
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.optim.warmup_steps = 2
  return config
