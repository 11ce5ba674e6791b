"""Best-of-n on toyworld's held-out prompts: the gold a reward model's pick is worth, against KL.

  python -m rlhf_jax.best_of_n --policy runs/toyworld/sft --reward runs/toyworld/reward [--n 16]

The policy (any LM workdir of a chat stage: SFT, PPO) answers each of the toyworld held-out prompts -- the
ones every stage is evaluated on -- N times; the reward model scores the answers, the gold scorer grades them,
and the table gives, for n = 1, 2, 4, ... N, the KL bound of best-of-n, the reward model's score and gold of
its pick, and gold of the oracle's pick (rlhf_jax/eval/best_of_n.py says how), and beside them gold of
self-consistency's majority answer out of n (eval/self_consistency.py: no reward model, a vote on the final
answers). `--out FILE` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from rlhf_jax.errors import UserError


def evaluate(policy: str, reward_dir: str, n_max: int, num_prompts: int, temperature: float, seed: int,
             batch_size: int = 64) -> list[dict]:
  """Rows of `best_of_n_table` for n = 1, 2, 4, ..., n_max (and n_max itself)."""
  from rlhf_jax import mesh as mesh_lib
  from rlhf_jax.config import base_config
  from rlhf_jax.data import toyworld
  from rlhf_jax.eval import rm as rm_eval
  from rlhf_jax.artifacts.models import load_pretrained
  from rlhf_jax.artifacts.reward_model import check_shared_tokenizer, load_reward_model
  from rlhf_jax.eval.best_of_n import best_of_n_rows
  from rlhf_jax.eval.gold import sample_answers
  from rlhf_jax.model.hf import read_json_object

  if n_max < 1 or num_prompts < 1:
    raise UserError(f"--n and --prompts must be at least 1, got --n {n_max} --prompts {num_prompts}")
  run_config = read_json_object(os.path.join(policy, "config.json")) if os.path.exists(
      os.path.join(policy, "config.json")) else {}
  world_seed = run_config.get("toyworld", {}).get("seed", base_config().toyworld.seed)
  mesh = mesh_lib.single_device_mesh()
  model, params, tokenizer = load_pretrained(policy, mesh)
  if tokenizer is None:
    raise UserError(f"{policy}: no tokenizer.model or tokenizer.json next to the checkpoint")
  rm_model, rm_params, rm_tokenizer, spec = load_reward_model(reward_dir, mesh)
  check_shared_tokenizer(reward_dir, rm_tokenizer, policy, tokenizer)

  world = toyworld.make_world(world_seed)
  instances = toyworld.eval_instances(world, num_prompts)
  sampling = base_config().sampling  # The evaluations' settings, at the asked temperature and batch size.
  sampling.temperature, sampling.batch_size = temperature, batch_size
  # The held-out evaluations' sampler (`best_of_n_samples`), with the answers' log-probabilities for the vote.
  answers = sample_answers(model, params, tokenizer, [inst.prompt for inst in instances], sampling, seed=seed,
                           num_samples=n_max, mesh=mesh)
  return best_of_n_rows(rm_eval.make_scorer(rm_model, mesh, chunk=256), rm_params, tokenizer, world, instances,
                        answers.texts, spec.seq_len, spec.reward_token, log_probs=answers.log_probs)


def format_table(rows: Sequence[dict]) -> str:
  """The rows as text: overall figures, then gold per task as "RM pick / majority vote / oracle pick"."""
  tasks = [k.split("/", 1)[1] for k in rows[0] if k.startswith("gold/")]
  head = ["n", "KL bound", "RM score", "gold RM pick", "gold vote", "gold oracle"] + tasks
  lines = ["  ".join(f"{h:>12}" for h in head[:6]) + "".join(f"{h:>20}" for h in head[6:])]
  vote = lambda row, key, digits=3: f"{row[key]:.{digits}f}" if key in row else "-"
  for row in rows:
    cells = [f"{row['n']:>12d}"] + [f"{row[k]:>12.3f}" for k in ("kl_bound", "rm_score", "gold")]
    cells += [vote(row, "vote_gold").rjust(12), f"{row['oracle_gold']:>12.3f}"]
    per_task = [f"{row['gold/' + t]:.2f}/{vote(row, 'vote_gold/' + t, 2)}/{row['oracle_gold/' + t]:.2f}".rjust(20)
                for t in tasks]
    lines.append("  ".join(cells) + "".join(per_task))
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.best_of_n", description=__doc__.split("\n\n")[0])
  parser.add_argument("--policy", required=True, help="workdir of the policy that answers (an SFT or PPO run)")
  parser.add_argument("--reward", required=True, help="workdir of a finished reward stage")
  parser.add_argument("--n", type=int, default=16, help="answers per prompt (the largest n)")
  parser.add_argument("--prompts", type=int, default=250, help="held-out toyworld prompts")
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="write the rows as JSON to this file")
  args = parser.parse_args(argv)
  try:
    rows = evaluate(args.policy, args.reward, args.n, args.prompts, args.temperature, args.seed)
  except (UserError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(rows))
  if args.out:
    with open(args.out + ".tmp", "w") as f:
      json.dump(rows, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
