"""Evaluate a finished PPO run again, with the held-out evaluator every stage uses (eval/gold.py).

  python -m rlhf_jax.evaluate --ppo runs/quickstart/ppo [--out eval.json]

Reads the run's config.json, the SFT model it started from (`init_from`) and its reward model
(`ppo.reward_from`), and gives the figures of the quickstart's final table: PPO's policy against the SFT
model on the same held-out prompts and keys (gold per task, paired gain, win rates, RM score, KL), SFT
sampled at temperature 0.5, and best-of-n of the SFT model's answers picked by the reward model and by gold
(n up to the reward stage's `reward.best_of_n`). The PPO figures are built by the PPO stage's own
`make_evaluators`, so they are the ones its summary holds when it was written by this version of the code;
best-of-n scores with the saved (normalised) reward model, the same ranking the reward stage used. Useful
after the evaluator changes (a run's figures under the current one without retraining) and on a run
trained elsewhere. Keys are the summaries' ("eval/...", "sft/...", "sft_t0.5/...", "best_of_n/N/...").
Only toyworld runs have gold; an error is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import ml_collections

from rlhf_jax import compile_cache
from rlhf_jax.errors import UserError

TABLE_TASKS = ("review", "list", "harmful", "repeat", "reverse", "arithmetic", "all")


def _run_config(workdir: str, what: str) -> ml_collections.ConfigDict:
  from rlhf_jax.model.hf import read_json_object
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path}: missing; --{what} names the workdir of a finished {what} run")
  return ml_collections.ConfigDict(read_json_object(path))


def evaluate(ppo_dir: str) -> dict:
  """The figures (module doc) of the PPO run in `ppo_dir`, keyed as the stages' summaries key them."""
  from rlhf_jax.artifacts.models import load_pretrained
  from rlhf_jax.artifacts.reward_model import check_shared_tokenizer, load_reward_model
  from rlhf_jax.data import toyworld
  from rlhf_jax.eval import rm as rm_eval
  from rlhf_jax.eval.best_of_n import best_of_n_metrics, best_of_n_rows, best_of_n_samples
  from rlhf_jax.eval.gold import eval_seed
  from rlhf_jax.stages import common

  config = _run_config(ppo_dir, "ppo")
  if config.get("stage") != "ppo":
    raise UserError(f"{os.path.join(ppo_dir, 'config.json')}: stage is {config.get('stage')!r}, not 'ppo'")
  if config.data.source != "toyworld":
    raise UserError(f"{ppo_dir}: data.source is {config.data.source!r}; only toyworld runs have a gold scorer")
  mesh = common.make_mesh(config)
  actor, sft_params, tokenizer = load_pretrained(config.init_from, mesh, config.model)
  _, policy_params, _ = load_pretrained(ppo_dir, mesh, config.model)
  rm_model, rm_params, rm_tokenizer, spec = load_reward_model(config.ppo.reward_from, mesh, config.model)
  check_shared_tokenizer(config.ppo.reward_from, rm_tokenizer, config.init_from, tokenizer)
  world = toyworld.make_world(config.toyworld.seed)
  _, eval_prompts = common.load_prompts(config, tokenizer, world)
  evaluator, cold = common.make_evaluators(config, actor=actor, ref_params=sft_params, rm_model=rm_model,
                                        rm_params=rm_params, tokenizer=tokenizer, mesh=mesh, world=world,
                                        eval_prompts=eval_prompts, reward_token=spec.reward_token)
  sft = evaluator.sample(sft_params)
  out = {**evaluator.metrics(evaluator.sample(policy_params), sft),
         **common.baseline_metrics(evaluator, sft, cold.sample(sft_params))}

  reward_config = _run_config(config.ppo.reward_from, "reward")
  n = int(reward_config.reward.best_of_n)
  if n > 0:
    texts = best_of_n_samples(actor, sft_params, tokenizer, eval_prompts.instances, reward_config.sampling, n,
                              eval_seed(reward_config.sampling), mesh)
    chunk = int(reward_config.train.batch_size) * int(reward_config.toyworld.responses_per_prompt)
    scorer = rm_eval.make_scorer(rm_model, mesh, chunk=chunk)
    rows = best_of_n_rows(scorer, rm_params, tokenizer, world, eval_prompts.instances, texts, spec.seq_len,
                          spec.reward_token)
    out.update(best_of_n_metrics(rows))
  return out


def format_table(figures: dict) -> str:
  """Gold per task: SFT, SFT at T 0.5, the RM's and gold's best of 4, PPO and PPO - SFT; then the headline."""
  from rlhf_jax.stages.common import SFT_COLD_TEMPERATURE
  cold = f"sft_t{SFT_COLD_TEMPERATURE}"
  columns = (("SFT", "sft/gold"), ("SFT at T 0.5", cold + "/gold"), ("RM's best of 4", "best_of_n/4/gold"),
             ("gold's best of 4", "best_of_n/4/oracle_gold"), ("PPO", "eval/gold"))
  # Per-task keys end in /TASK; overall, the stages' keys end in /all and best-of-n's in nothing.
  key = lambda prefix, task: prefix if task == "all" and prefix.startswith("best_of_n/") else f"{prefix}/{task}"
  cell = lambda value, spec, width: format(value, spec) if value is not None else f"{'-':>{width}}"
  lines = ["task        " + "".join(f"{name:>18}" for name, _ in columns) + f"{'PPO - SFT':>12}"]
  for task in TABLE_TASKS:
    ppo, sft = figures.get(key("eval/gold", task)), figures.get(key("sft/gold", task))
    lines.append(f"{task:<12}" + "".join(cell(figures.get(key(prefix, task)), ">18.3f", 18) for _, prefix in columns)
                 + cell(None if ppo is None or sft is None else ppo - sft, ">+12.3f", 12))
  f = figures
  lines.append(f"PPO - SFT {f['eval/gold_gain']:+.3f} +- {f['eval/gold_gain_ci']:.3f} (paired, 95%), win rate "
               f"{100 * f['eval/win_rate_gold']:.1f}% +- {100 * f['eval/win_rate_gold_ci']:.1f} by gold, KL "
               f"{f['eval/kl']:.2f}; SFT at T 0.5: KL {f[cold + '/kl']:.2f}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.evaluate", description=__doc__.split("\n\n")[0])
  parser.add_argument("--ppo", required=True, help="workdir of a finished toyworld PPO run")
  parser.add_argument("--out", help="write the figures as JSON to this file")
  args = parser.parse_args(argv)
  compile_cache.enable()
  try:
    figures = evaluate(args.ppo)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(figures))
  if args.out:
    with open(args.out + ".tmp", "w") as f:
      json.dump(figures, f, indent=2, sort_keys=True)
    os.replace(args.out + ".tmp", args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
