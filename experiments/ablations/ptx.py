"""Ablation: PPO-ptx, InstructGPT's pretraining-loss mixing (gamma_ptx = 0 vs > 0).

  python -m rlhf_jax.sweep experiments/ablations/ptx.py --workdir runs/ablations/ptx \
      --config.init_from=runs/toyworld/sft --config.ppo.reward_from=runs/toyworld/reward

Runs experiments/toyworld_ppo.py with gamma_ptx = 0 (plain PPO) and gamma_ptx = 1 (each minibatch update
also takes the LM loss on 8 rows of 64 tokens of the pretraining corpus). InstructGPT (Ouyang et al. 2022,
section 4) mixes pretraining gradients to reduce the "alignment tax": RLHF alone regresses the model on
pretraining-like text. The table compares the held-out pretraining loss after PPO (eval/pretrain/loss;
sft/pretrain/loss is the SFT model's) with the gold score and win rate. `:smoke` runs in seconds from smoke
workdirs.

Measured with --config.train.steps=40 --config.train.eval_every=20 (the toyworld SFT and reward runs; 220 s
and 278 s on a shared 2-core machine). Held-out pretraining loss: SFT 5.03 (600 steps of chat SFT had
erased plain-text modelling; the pretrained model scores 1.76 on the same windows), gamma_ptx = 0 5.22,
gamma_ptx = 1 2.09 -- mixing pretraining gradients undoes the regression instead of adding to it. The price
here: gold 0.545 vs 0.480, KL to SFT 4.7 vs 8.0 nats (the LM loss pulls away from SFT's chat behaviour).
"""

import os

from rlhf_jax.config import load_module

toyworld_ppo = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toyworld_ppo.py"))

VARIANTS = (("ptx_0", 0.0), ("ptx_1", 1.0))
COLUMNS = ("eval/pretrain/loss", "sft/pretrain/loss", "eval/gold/all", "eval/rm_score", "eval/kl",
           "eval/win_rate_gold")


def get_config(arg=None):
  return toyworld_ppo.get_config(arg)


def sweep(arg, workdir):
  runs = []
  for name, coef in VARIANTS:
    config = get_config(arg)
    config.ppo.ptx_coef = coef
    config.ppo.ptx_batch = 8
    config.ppo.ptx_seq_len = 64
    runs.append((name, config))
  return runs
