"""The bytes PPO holds -- parameters and optimizer state of every model -- with and without a LoRA actor.

Command:  python benchmarks/ppo_memory.py [--init-from SFT --reward-from RM] [--rank 8]

With `--init-from` and `--reward-from` (an SFT and a reward workdir): `build_ppo` builds the run
experiments/toyworld_ppo.py describes, full and with `lora.rank`, and the arrays it holds are counted: the
PPOState (actor, its Adam moments, its EMA, a critic's), the frozen reference and the reward model. Without them:
the same count from shapes alone (no arrays made) for the toy model and GPT-2 small, with and without a critic.
A LoRA actor holds its adapters, their moments and EMA; its base is the reference's weights, counted once; a
LoRA critic holds its adapters and value head (and their moments) on the reward model's trunk.
Activations and the KV cache are not counted. Last line: `BENCH ppo_memory key=value ...`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from rlhf_jax import config as config_lib
from rlhf_jax.model import lora
from rlhf_jax.model.transformer import Transformer, TransformerConfig, unbox
from rlhf_jax.train import state as state_lib

SIZES = {"toy": dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, vocab_size=1024, max_len=128),
         "gpt2_small": dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=3072, vocab_size=50304,
                            max_len=1024)}


def abstract_params(cfg: TransformerConfig, heads, spec=None):
  model = Transformer(cfg, heads=heads, lora=spec)
  return unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]))


def from_shapes(cfg: TransformerConfig, spec, critic: bool, ema: bool) -> dict:
  """{part: bytes} of a PPO run on `cfg`, from shapes: what `create_ppo_state` and `build_ppo` hold."""
  optim = config_lib.base_config().optim
  tx, _ = state_lib.make_optimizer(optim, 100)
  actor = abstract_params(cfg, ("lm",), spec)
  trained = lora.split(actor)[1] if spec is not None else actor
  parts = {"actor": lora.nbytes(trained), "actor_adam": lora.nbytes(jax.eval_shape(tx.init, trained)),
           "actor_ema": lora.nbytes(trained) if ema else 0, "reference": lora.nbytes(abstract_params(cfg, ("lm",))),
           "reward_model": lora.nbytes(abstract_params(cfg, ("reward",)))}
  if critic:  # A LoRA critic's trunk is the reward model's (counted there); it holds adapters and a value head.
    value = abstract_params(cfg, ("value",), spec)
    value = lora.split(value)[1] if spec is not None else value
    parts.update(critic=lora.nbytes(value), critic_adam=lora.nbytes(jax.eval_shape(tx.init, value)))
  return parts


def from_run(init_from: str, reward_from: str, rank: int) -> dict:
  """{"full" | "lora": {part: bytes}} of the arrays `build_ppo` makes for experiments/toyworld_ppo.py."""
  from rlhf_jax import main as main_lib
  from rlhf_jax.config import parse_overrides
  from rlhf_jax.stages import ppo as ppo_stage
  import os
  import tempfile
  out = {}
  for name, extra in (("full", []), ("lora", [f"--config.lora.rank={rank}"])):
    config = main_lib.resolve_config(
        os.path.join(os.path.dirname(__file__), "..", "experiments", "toyworld_ppo.py"),
        parse_overrides([f"--config.init_from={init_from}", f"--config.ppo.reward_from={reward_from}", *extra]))
    with tempfile.TemporaryDirectory() as workdir:
      setup = ppo_stage.build_ppo(config, workdir)
    s = setup.state
    parts = {"actor": lora.nbytes(s.params["actor"]), "actor_adam": lora.nbytes(s.opt_state["actor"]),
             "actor_ema": lora.nbytes(s.ema) if s.ema is not None else 0,
             "reference": lora.nbytes(setup.ref_params), "reward_model": lora.nbytes(setup.rm_params)}
    if "critic" in s.params:
      parts.update(critic=lora.nbytes(s.params["critic"]), critic_adam=lora.nbytes(s.opt_state["critic"]))
    out[name] = parts
  return out


def show(title: str, full: dict, adapted: dict) -> tuple[float, float]:
  print(f"{title}")
  for part in full:
    print(f"  {part:13s} {full[part] / 1e6:10.3f} MB  {adapted[part] / 1e6:10.3f} MB")
  a, b = sum(full.values()), sum(adapted.values())
  print(f"  {'total':13s} {a / 1e6:10.3f} MB  {b / 1e6:10.3f} MB   LoRA holds {b / a:.1%} of the full run's bytes")
  return a, b


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--init-from", default="")
  parser.add_argument("--reward-from", default="")
  parser.add_argument("--rank", type=int, default=8)
  args = parser.parse_args()
  spec = lora.LoraSpec(rank=args.rank, alpha=16.0)
  fields = [f"rank={args.rank}"]
  print(f"{'':15s} {'full':>13s} {'LoRA r' + str(args.rank):>13s}")
  if args.init_from:
    run = from_run(args.init_from, args.reward_from, args.rank)
    a, b = show("toyworld_ppo.py as built (critic-free, EMA as configured):", run["full"], run["lora"])
    fields += [f"run_full_mb={a / 1e6:.3f}", f"run_lora_mb={b / 1e6:.3f}", f"run_ratio={b / a:.4f}"]
  for size, dims in SIZES.items():
    cfg = TransformerConfig.from_config(config_lib.model_config("gpt2", **dims))
    for critic in (False, True):
      a, b = show(f"{size}, {'with a critic' if critic else 'critic-free'}, EMA:",
                  from_shapes(cfg, None, critic, True), from_shapes(cfg, spec, critic, True))
      tag = f"{size}_{'critic' if critic else 'nocritic'}"
      fields += [f"{tag}_full_mb={a / 1e6:.2f}", f"{tag}_lora_mb={b / 1e6:.2f}", f"{tag}_ratio={b / a:.4f}"]
  print("BENCH ppo_memory " + " ".join(fields))


if __name__ == "__main__":
  main()
