"""Reward-model evaluation: scoring responses, pairwise accuracy, rank correlation, calibration, normalisation.

Scores come from `make_scorer` (one jitted forward over fixed-size chunks of rows); everything else is plain
numpy on the host, on lists of per-comparison score arrays:

- label accuracy: over the annotator's (better, worse) pairs, the fraction the scores order the same way
  (equal scores count half), pooled over all held-out pairs;
- gold accuracy (toyworld): the same against the gold scores, over pairs whose gold scores differ (`all`)
  and over pairs that differ by at least `clear_gap` (the pairs a careful annotator would not get wrong);
- Spearman's rank correlation between scores and gold scores over all held-out responses;
- calibration: for every labelled pair the predicted probability that the model's favourite is the
  annotator's, sigma(|r_i - r_j|) under the Bradley-Terry reading of the loss, binned, next to how often it
  was; ECE is the count-weighted mean gap.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.sharding import Mesh

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.model.transformer import Transformer

CALIBRATION_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def make_scorer(model: Transformer, mesh: Mesh, chunk: int):
  """Returns `score(params, tokens (N, T), start (N,), end (N,)) -> (N,) numpy`: the reward head read at `end`
  of each row whose response begins at `start` (`chunked_scorer`)."""
  eval_model = model.clone(deterministic=True)

  def score_rows(params, tokens_nt, start_n, end_n):
    rewards_nt = eval_model.apply({"params": params}, tokens_nt, response_start_b=start_n).rewards
    return jnp.take_along_axis(rewards_nt, end_n[:, None], axis=-1)[:, 0]

  return chunked_scorer(score_rows, mesh, chunk)


def chunked_scorer(score_rows, mesh: Mesh, chunk: int):
  """`score_rows(params, tokens (n, T), start (n,), end (n,)) -> (n,)` (traceable) as a host function of any
  number of rows N -> (N,) numpy: rows go `chunk` at a time (the last chunk padded) through one compiled
  program, so one compilation serves any N; each process passes the same rows and gets all the scores."""
  replicated = mesh_lib.replicated(mesh)

  @jax.jit
  def score_chunk(params, tokens_nt, start_n, end_n):
    return jax.lax.with_sharding_constraint(score_rows(params, tokens_nt, start_n, end_n), replicated)

  def score(params, tokens_nt: np.ndarray, start_n: np.ndarray, end_n: np.ndarray) -> np.ndarray:
    n = len(tokens_nt)
    out = []
    with mesh_lib.activate(mesh):
      for i in range(0, n, chunk):
        rows = {"tokens": tokens_nt[i:i + chunk], "start": start_n[i:i + chunk], "end": end_n[i:i + chunk]}
        size = len(rows["tokens"])
        rows = {k: np.concatenate([v, np.zeros((chunk - size, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}
        local = jax.tree.map(lambda x: x[mesh_lib.process_batch_slice(chunk)], rows)
        sharded = mesh_lib.shard_batch(local, mesh)
        out.append(np.asarray(jax.device_get(score_chunk(params, sharded["tokens"], sharded["start"],
                                                                  sharded["end"])))[:size])
    return np.concatenate(out) if out else np.zeros(0, np.float32)

  return score


def score_examples(score, params, examples: Sequence[dict]) -> list[np.ndarray]:
  """Scores of each comparison example's responses (padding slots dropped), one array per example."""
  if not examples:
    return []
  tokens = np.concatenate([ex["tokens"] for ex in examples])
  start = np.concatenate([ex["start"] for ex in examples])
  end = np.concatenate([ex["end"] for ex in examples])
  flat = score(params, tokens, start, end)
  k = examples[0]["tokens"].shape[0]
  return [flat[i * k:(i + 1) * k][ex["ranks"] >= 0] for i, ex in enumerate(examples)]


def _pair_accuracy(diffs: Sequence[float]) -> float:
  d = np.asarray(diffs, np.float64)
  return float(np.mean((d > 0) + 0.5 * (d == 0))) if len(d) else float("nan")


def calibration_table(winner_minus_loser: Sequence[float], edges: Sequence[float] = CALIBRATION_EDGES) -> list[dict]:
  """Rows {"low", "high", "count", "predicted", "observed"} over the labelled pairs, with `predicted` the mean
  of sigma(|r_w - r_l|) in the bin and `observed` the fraction of those pairs the model ordered like the
  annotator."""
  d = np.asarray(winner_minus_loser, np.float64)
  confidence = 1.0 / (1.0 + np.exp(-np.abs(d)))
  agrees = (d > 0) + 0.5 * (d == 0)
  rows = []
  for low, high in zip(edges[:-1], edges[1:]):
    inside = (confidence >= low) & ((confidence < high) | (high == edges[-1]))
    count = int(inside.sum())
    rows.append({"low": low, "high": high, "count": count,
                 "predicted": float(confidence[inside].mean()) if count else float("nan"),
                 "observed": float(agrees[inside].mean()) if count else float("nan")})
  return rows


def expected_calibration_error(rows: Sequence[dict]) -> float:
  total = sum(r["count"] for r in rows)
  return sum(r["count"] * abs(r["predicted"] - r["observed"]) for r in rows if r["count"]) / max(total, 1)


def comparison_metrics(scores: Sequence[np.ndarray], records: Sequence[dict], clear_gap: float = 0.2,
                       prefix: str = "eval") -> tuple[dict, list[dict]]:
  """Held-out metrics of a reward model. `records` are comparison records ({"ranking"}, and for simulated
  data "gold" and "task"); `scores[i]` holds the scores of records[i]'s responses. Returns (metrics,
  calibration table)."""
  label_diffs = []
  gold_all: dict[str, list[float]] = {}
  gold_clear: dict[str, list[float]] = {}
  flat_scores, flat_gold, flat_task = [], [], []
  for s, rec in zip(scores, records):
    ranking = rec["ranking"]
    k = len(ranking)
    label_diffs += [s[i] - s[j] for i in range(k) for j in range(k) if ranking[i] < ranking[j]]
    gold: Optional[Sequence[float]] = rec.get("gold")
    if gold is None:
      continue
    task = rec.get("task")
    names = ("all",) if task is None else (task, "all")
    for i in range(k):
      flat_scores.append(s[i])
      flat_gold.append(gold[i])
      flat_task.append("" if task is None else task)
      for j in range(k):
        gap = gold[i] - gold[j]
        if gap > 0:
          for name in names:
            gold_all.setdefault(name, []).append(s[i] - s[j])
            if gap >= clear_gap:
              gold_clear.setdefault(name, []).append(s[i] - s[j])
  table = calibration_table(label_diffs)
  metrics = {f"{prefix}/label_accuracy": _pair_accuracy(label_diffs), f"{prefix}/label_pairs": len(label_diffs),
             f"{prefix}/ece": expected_calibration_error(table)}
  for name, diffs in sorted(gold_all.items()):
    metrics[f"{prefix}/gold_accuracy/{name}"] = _pair_accuracy(diffs)
  for name, diffs in sorted(gold_clear.items()):
    metrics[f"{prefix}/gold_accuracy_clear/{name}"] = _pair_accuracy(diffs)
  metrics[f"{prefix}/gold_pairs_clear"] = len(gold_clear.get("all", []))
  if len(flat_scores) > 2:
    flat_scores, flat_gold, flat_task = np.asarray(flat_scores), np.asarray(flat_gold), np.asarray(flat_task)
    metrics[f"{prefix}/spearman/all"] = _spearman(flat_scores, flat_gold)
    for task in sorted(set(flat_task.tolist()) - {""}):
      inside = flat_task == task
      metrics[f"{prefix}/spearman/{task}"] = _spearman(flat_scores[inside], flat_gold[inside])
  return metrics, table


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
    return float("nan")
  return float(scipy.stats.spearmanr(a, b).statistic)


def fit_normalization(scores: np.ndarray, gain: float, bias: float) -> dict:
  """The reward head's new gain and bias so that these scores (made with `gain` and `bias`) get mean 0 and
  standard deviation 1: score = gain * u + bias, so (score - mean) / std = (gain / std) u + (bias - mean) / std.
  """
  scores = np.asarray(scores, np.float64)
  mean, std = float(scores.mean()), float(scores.std())
  if not np.isfinite(std) or std < 1e-8:
    std = 1.0  # Constant scores: only shift them.
  return {"gain": gain / std, "bias": (bias - mean) / std, "raw_mean": mean, "raw_std": std,
          "num_samples": int(len(scores))}
