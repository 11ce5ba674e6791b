"""Seconds per PPO iteration of Tunix's `PPOLearner` (google-tunix, JAX) at `ppo_iteration.py`'s setting.

Command:  TUNIX_VENV/bin/python benchmarks/ppo_iteration_tunix.py [--iterations N]   (default 7)
Own venv, not the repo's .venv (CPU jax, no CUDA wheels, no torch; Tunix 0.1.7 installs on Python 3.11):
  python3.11 -m venv TUNIX_VENV && TUNIX_VENV/bin/pip install -r benchmarks/requirements-tunix.txt
Sets up Tunix's `RLCluster` (vanilla rollout engine; one 1x1 ('fsdp', 'tp') CPU mesh for all roles, so the
rollout shares the actor's weights and no weight sync runs) and runs `PPOLearner.train` on 1 + N batches of
the same 64 prompts x 16 random ids (a whitespace-id tokenizer: no BOS; EOS 1024 and pad 1025 lie outside
the vocabulary, so every row samples exactly 32 tokens, T=0.7, top_p 1, full vocabulary). PPOConfig:
num_iterations=4 epochs of one minibatch of 64, beta 0.05 with kl_method "kl" (k1, in the reward), GAE
gamma 1 lambda 0.95 (whitened), clip 0.2, value clip 0.2, no entropy; AdamW 3e-4 (critic 1e-4), wd 0.1,
clip-norm 1. An iteration (generate, score with ref/old/critic/reward, 4 actor + 4 critic steps) is timed
between the learner's pulls of consecutive batches; the first (compiles) is a warm-up; figures are medians.
Differs from ours: Tunix has no GPT-2, so all four models are its Qwen2 (L=4 D=128 H=4 KV=4 head 32, MLP
512, V=1024, float32, random init): RoPE, not learned positions; RMSNorm; SwiGLU (3 matrices 128x512, not
GELU's 2: trunk matmuls +33% a token); biases only on q/k/v. Policy and reference tie embeddings as GPT-2;
critic and reward model are untied Qwen2s with lm_head replaced by Linear(128, 1) (`create_critic_model`).
Tunix 0.1.7 takes old log-probs and the loss at T=1 but the reference's at T=0.7 (ours all at 0.7), adds
the reward model's score into an int32 tensor (truncates it), and samples with the same seed each iteration.
Runtime ~50 s alone on 2 CPU cores. Measured 2026-12-05 on a 2-core Intel Xeon, alone: 3.654 s and 3.588 s
an iteration, around ours at 1.392 s (ppo_iteration.py): 2.6x (benchmarks/README.md).
Last line: `BENCH ppo_iteration_tunix key=value ...`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tunix.models.qwen2 import model as qwen2  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl import utils as rl_utils  # noqa: E402
from tunix.rl.ppo import ppo_learner  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402

BATCH = 64
PROMPT_LEN = 16
NEW_TOKENS = 32
TEMPERATURE = 0.7
EPOCHS = 4
KL_COEF = 0.05
VOCAB = 1024
EOS_ID, PAD_ID = VOCAB, VOCAB + 1  # Outside the vocabulary: never sampled, so no row stops early.


class IdTokenizer:
  """Whitespace-separated integer ids; what Tunix's TokenizerAdapter needs (encode/decode/bos/eos/pad)."""

  def encode(self, text, **kwargs):
    return [int(t) for t in str(text).split()]

  def decode(self, ids, **kwargs):
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self):
    return None  # The sampler prepends no BOS when this is falsy.

  def eos_id(self):
    return EOS_ID

  def pad_id(self):
    return PAD_ID


def qwen2_config(tied: bool) -> qwen2.ModelConfig:
  return qwen2.ModelConfig(num_layers=4, vocab_size=VOCAB, embed_dim=128, hidden_dim=512, num_heads=4,
                           head_dim=32, num_kv_heads=4, rope_theta=10_000, norm_eps=1e-6,
                           use_tied_embedding=tied, dtype=jnp.float32, param_dtype=jnp.float32)


def build(mesh, max_steps: int):
  """Policy, reference, critic, reward model and the PPO learner on them."""
  with mesh:
    actor = qwen2.Qwen2(qwen2_config(tied=True), rngs=nnx.Rngs(0))
    reference = qwen2.Qwen2(qwen2_config(tied=True), rngs=nnx.Rngs(0))
    # Value and reward models: untied trunks whose lm_head becomes Linear(D, 1), as Tunix's tests build them.
    critic = rl_utils.create_critic_model(qwen2.Qwen2(qwen2_config(tied=False), rngs=nnx.Rngs(1)), seed=1)
    reward = rl_utils.create_critic_model(qwen2.Qwen2(qwen2_config(tied=False), rngs=nnx.Rngs(2)), seed=2)
  params = {}
  for name, m in (("policy", actor), ("critic", critic), ("reward", reward)):
    leaves = jax.tree.leaves(nnx.state(m, nnx.Param))
    assert {str(x.dtype) for x in leaves} == {"float32"}, name
    params[name] = sum(x.size for x in leaves)

  def adamw(lr):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.1))

  roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.CRITIC, rl_cluster_lib.Role.REFERENCE,
           rl_cluster_lib.Role.ROLLOUT, rl_cluster_lib.Role.REWARD)
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={r: mesh for r in roles},
      rollout_engine="vanilla",
      offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=adamw(3e-4), critic_optimizer=adamw(1e-4), eval_every_n_steps=10**9,
          max_steps=max_steps, mini_batch_size=BATCH, pbar_description=None),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=NEW_TOKENS, temperature=TEMPERATURE, top_p=1.0, top_k=None,
          max_prompt_length=PROMPT_LEN, kv_cache_size=PROMPT_LEN + NEW_TOKENS, eos_tokens=[EOS_ID]),
  )
  cluster = rl_cluster_lib.RLCluster(actor=actor, critic=critic, reference=reference, reward=reward,
                                     tokenizer=IdTokenizer(), cluster_config=cluster_config)
  config = ppo_learner.PPOConfig(num_iterations=EPOCHS, beta=KL_COEF, kl_method="kl", gamma=1.0,
                                 gae_lambda=0.95, epsilon=0.2, clip_range_value=0.2, entropy_coef=None)
  return ppo_learner.PPOLearner(rl_cluster=cluster, ppo_config=config), params


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--iterations", type=int, default=7, help="timed iterations after the warm-up")
  args = parser.parse_args()
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  total = 1 + args.iterations

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
  start = time.perf_counter()
  learner, params = build(mesh, max_steps=EPOCHS * total + 1)
  setup_s = time.perf_counter() - start

  rng = np.random.default_rng(0)
  prompts = np.array([" ".join(map(str, row)) for row in rng.integers(0, VOCAB, (BATCH, PROMPT_LEN))])

  # Phase times: wrap (not change) the learner's rollout step and the cluster's generate.
  phases = {"rollout": [], "generate": [], "completion_tokens": []}
  cluster = learner.rl_cluster
  orig_rollout, orig_generate = learner._generate_and_compute_advantage, cluster.generate

  def timed_rollout(*a, **k):
    t = time.perf_counter()
    out = jax.block_until_ready(orig_rollout(*a, **k))
    phases["rollout"].append(time.perf_counter() - t)
    phases["completion_tokens"].append(int(np.asarray(out.completion_mask).sum()))
    return out

  def timed_generate(*a, **k):
    t = time.perf_counter()
    out = orig_generate(*a, **k)
    phases["generate"].append(time.perf_counter() - t)
    assert all(len(x) == NEW_TOKENS for x in out.tokens), "tunix: some row stopped early"
    return out

  learner._generate_and_compute_advantage = timed_rollout
  cluster.generate = timed_generate

  starts = []

  def batches():  # The learner pulls batch k+1 at the start of global step k+1 (after step k's updates).
    for _ in range(total):
      starts.append(time.perf_counter())
      yield {"prompts": prompts}

  learner.train(batches())
  end = time.perf_counter()
  edges = starts + [end]
  seconds = [b - a for a, b in zip(edges[:-1], edges[1:])]
  assert len(seconds) == total and len(phases["rollout"]) == total, (len(seconds), phases)
  assert all(n == BATCH * NEW_TOKENS for n in phases["completion_tokens"]), phases["completion_tokens"]
  steps = learner.rl_cluster.actor_trainer.train_steps
  assert steps == EPOCHS * total, f"actor optimizer steps {steps}, expected {EPOCHS * total}"

  timed = seconds[1:]
  gen = statistics.median(phases["generate"][1:])
  roll = statistics.median(phases["rollout"][1:])
  med = statistics.median(timed)
  print("iterations (s):", " ".join(f"{s:.3f}" for s in seconds), f"(first = warm-up incl. compile)")
  print(f"median: total {med:.3f} s; generate {gen:.3f}, rollout scoring {roll - gen:.3f}, "
        f"update (4 actor + 4 critic steps) ~{med - roll:.3f}; setup {setup_s:.1f} s; parameters {params}")
  print(f"BENCH ppo_iteration_tunix s_per_iter={med:.4f} generate_s={gen:.4f} score_s={roll - gen:.4f} "
        f"update_s={med - roll:.4f} warmup_s={seconds[0]:.2f} min_s={min(timed):.4f} iterations={len(timed)} "
        f"tunix_version={importlib.metadata.version('google-tunix')} jax_version={jax.__version__} "
        f"flax_version={importlib.metadata.version('flax')} model=qwen2_L4_D128_H4_F512_V1024 "
        f"batch={BATCH} prompt_len={PROMPT_LEN} new_tokens={NEW_TOKENS} epochs={EPOCHS} "
        f"policy_params={params['policy']} critic_params={params['critic']} "
        f"devices={jax.device_count()}x{jax.devices()[0].platform} cpus={os.cpu_count()}")


if __name__ == "__main__":
  main()
