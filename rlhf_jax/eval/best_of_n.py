"""Best-of-n against a reward model: how much gold the reward model's ranking is worth, and at what KL.

Sample N answers per prompt from a policy, score each with the reward model and (toyworld) the gold scorer,
and report, for every n <= N, the expected gold of the answer the reward model picks out of n -- next to the
answer the gold scorer itself would pick (the oracle: what the samples hold at all). Best-of-n is the
simplest policy optimisation against a reward model: its KL to the sampling policy is at most
log n - (n - 1) / n (Stiennon et al. 2020, appendix G), so gold against that bound traces the same curve as
PPO's gold against KL (Gao et al. 2022, "Scaling laws for reward model overoptimization"), without any
training. If the reward model's pick out of n gains little gold, PPO against it cannot be expected to gain
more at the same KL.

The expectations use every n-subset of the N samples, not one draw per n: sorted by the picking score
ascending, the i-th answer (1-based) is the best of a uniformly random n-subset with probability
C(i-1, n-1) / C(N, n). Ties in the picking score are broken by sample order.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rlhf_jax.data import toyworld
from rlhf_jax.data.pipelines import encode_responses
from rlhf_jax.eval.gold import sample_answers
from rlhf_jax.eval.self_consistency import majority_of_n


def kl_bound(n: int) -> float:
  """The KL (nats) of best-of-n to the policy it samples from, for a continuous score: log n - (n-1)/n."""
  return math.log(n) - (n - 1) / n


def pick_weights(num: int, n: int) -> np.ndarray:
  """(num,) probabilities that the i-th smallest of `num` scores is the largest in a random n-subset."""
  if not 1 <= n <= num:
    raise ValueError(f"best-of-n needs 1 <= n <= the number of samples, got n={n} with {num} samples")
  weights = np.array([math.comb(i, n - 1) for i in range(num)], np.float64)
  return weights / math.comb(num, n)


def best_of_n(pick_by: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
  """Expected `values` of the answer with the highest `pick_by` among n of each prompt's answers.

  `pick_by`, `values`: (P, N) per prompt and sample. Returns (P,)."""
  pick_by, values = np.asarray(pick_by, np.float64), np.asarray(values, np.float64)
  if pick_by.shape != values.shape or pick_by.ndim != 2:
    raise ValueError(f"pick_by and values must both be (prompts, samples), got {pick_by.shape} and {values.shape}")
  order = np.argsort(pick_by, axis=1, kind="stable")
  return np.take_along_axis(values, order, axis=1) @ pick_weights(pick_by.shape[1], n)


def best_of_n_sizes(n: int) -> list[int]:
  """The n of a best-of-n table of n samples a prompt: 1, 2, 4, ... up to n, and n itself."""
  return sorted({2 ** k for k in range(n.bit_length()) if 2 ** k <= n} | {n})


def best_of_n_table(rm_scores: np.ndarray, gold: np.ndarray, tasks: Sequence[str],
                    ns: Sequence[int]) -> list[dict]:
  """One row per n: the KL bound, the reward model's score and gold of its pick, and gold of the oracle's
  pick, overall and per task (`gold/TASK`, `oracle_gold/TASK`). `rm_scores`, `gold`: (P, N); `tasks`: (P,)
  task names."""
  tasks = np.asarray(tasks)
  rows = []
  for n in ns:
    rm_pick, oracle_pick = best_of_n(rm_scores, gold, n), best_of_n(gold, gold, n)
    row = {"n": int(n), "kl_bound": kl_bound(n), "rm_score": float(best_of_n(rm_scores, rm_scores, n).mean()),
           "gold": float(rm_pick.mean()), "oracle_gold": float(oracle_pick.mean())}
    for task in sorted(set(tasks.tolist())):
      row[f"gold/{task}"] = float(rm_pick[tasks == task].mean())
      row[f"oracle_gold/{task}"] = float(oracle_pick[tasks == task].mean())
    rows.append(row)
  return rows


def best_of_n_samples(model, params, tokenizer, instances, sampling, n: int, seed: int, mesh=None) -> list[str]:
  """n answers per toyworld instance (instance-major) from the policy, for `best_of_n_rows`: the held-out
  evaluations' sampler, so each prompt's first answer is the one the other evaluations score."""
  return sample_answers(model, params, tokenizer, [inst.prompt for inst in instances], sampling, seed=seed,
                        num_samples=n, mesh=mesh).texts


def best_of_n_rows(score, params, tokenizer, world, instances, texts: list[str], seq_len: int,
                   reward_token: bool, log_probs: np.ndarray | None = None) -> list[dict]:
  """`best_of_n_table` of the answers `texts` (n per instance, from `best_of_n_samples`) scored by the
  reward model (`score`, `params`: `rm_eval.make_scorer`) and by gold, for n = 1, 2, 4, ... and n itself.

  With the answers' `log_probs` (`gold.Answers.log_probs`), each row whose n divides the samples per prompt
  also gives `vote_gold` (and per task): gold of self-consistency's majority answer out of n
  (`eval.self_consistency.majority_of_n`), which needs no reward model."""
  n = len(texts) // len(instances)
  repeated = [inst for inst in instances for _ in range(n)]
  pairs = [([{"role": "user", "content": inst.prompt}], text) for inst, text in zip(repeated, texts)]
  tokens, start, end = encode_responses(tokenizer, pairs, seq_len, reward_token)
  scores = score(params, tokens, start, end).reshape(len(instances), n)
  gold = np.array([toyworld.gold_score(world, inst, t) for inst, t in zip(repeated, texts)]).reshape(scores.shape)
  rows = best_of_n_table(scores, gold, [inst.task for inst in instances], best_of_n_sizes(n))
  if log_probs is not None:
    answers = [[toyworld.final_answer(inst, t) for t in texts[i * n:(i + 1) * n]] for i, inst in enumerate(instances)]
    tasks = np.asarray([inst.task for inst in instances])
    log_probs = np.asarray(log_probs).reshape(scores.shape)
    for row in rows:
      if n % row["n"] == 0:
        voted = majority_of_n(answers, log_probs, gold, row["n"])
        row["vote_gold"] = float(voted.mean())
        row.update({f"vote_gold/{task}": float(voted[tasks == task].mean()) for task in sorted(set(tasks))})
  return rows


def best_of_n_metrics(rows: list[dict]) -> dict:
  """Summary keys best_of_n/N/{gold, oracle_gold, rm_score, kl_bound}, and gold per task, for every N."""
  return {f"best_of_n/{row['n']}/{k}": v for row in rows for k, v in row.items() if k != "n"}
