"""Comparison data, the InstructGPT way (section 3.5): the SFT policy answers each prompt K times, and an
annotator ranks the K answers. For toyworld the annotator is simulated (`toyworld.annotate`: Plackett-Luce
on the gold scores, with ties and disagreement), so the data is known to be right up to its noise.

A comparisons directory holds `train.jsonl` and `heldout.jsonl`, ordinary comparison JSONL (data/sources.py),
one comparison per line: {"prompt", "responses", "ranking", "gold", "task", "instance"}, and comparisons.json,
the account of them. The comparisons stage writes one (`ensure_comparisons`), the reward stage reads one
(`read_comparisons`, or any comparison source) or writes its own, and PPO's reward rounds label new ones
(`toyworld_comparisons`). Prompts whose K answers all tie carry no preference and are left out (counted).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import jax
import numpy as np

from rlhf_jax.data import sources, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval.gold import sample_responses

FILES = {"train": "train.jsonl", "heldout": "heldout.jsonl"}


# A ranker: (prompts, each prompt's K responses) -> (ranks of each prompt's responses, each record's confidence
# (N,) or None, statistics). `judge_ranker` (stages/ai_comparisons.py) is one; None means the annotator.
Ranker = Callable[[list, list[list[str]]], tuple[list[list[int]], Optional[np.ndarray], dict]]


def toyworld_comparisons(model, params, tokenizer, config, instances: list[toyworld.Instance],
                         seed: int, rank: Optional[Ranker] = None) -> tuple[list[dict], dict]:
  """Samples K responses per instance from the policy (`model`, `params`), ranks them with the simulated
  annotator, or with `rank` (AI feedback), whose records also carry its "confidence". Returns (records,
  statistics); the statistics include how often the ranking orders two answers as gold does
  (`gold_agreement/TASK`, ties half: `ranking_gold_agreement`)."""
  tw = config.toyworld
  world = toyworld.make_world(tw.seed)
  k = tw.responses_per_prompt
  prompts = [inst.prompt for inst in instances for _ in range(k)]
  texts, ended = sample_responses(model, params, tokenizer, prompts, config.sampling, seed,
                                  temperature=tw.sample_temperature)
  groups = [texts[n * k:(n + 1) * k] for n in range(len(instances))]
  if rank is None:
    rng = np.random.default_rng(seed)
    rankings = [toyworld.annotate(world, inst, responses, rng, temperature=tw.annotator_temperature,
                                  tie_margin=tw.tie_margin, disagreement=tw.disagreement)
                for inst, responses in zip(instances, groups)]
    confidence, rank_stats = None, {}
  else:
    rankings, confidence, rank_stats = rank([inst.prompt for inst in instances], groups)
  golds = [[toyworld.gold_score(world, inst, r) for r in responses] for inst, responses in zip(instances, groups)]
  records, all_tied = [], 0
  for n, (inst, responses, ranks, gold) in enumerate(zip(instances, groups, rankings, golds)):
    if len(set(ranks)) < 2:
      all_tied += 1
      continue
    record = {"prompt": inst.prompt, "responses": responses, "ranking": ranks, "task": inst.task, "gold": gold,
              "instance": toyworld.instance_to_json(inst)}
    if confidence is not None:
      record["confidence"] = float(confidence[n])
    records.append(record)
  gold = toyworld.mean_gold_by_task(world, [i for i in instances for _ in range(k)], texts)
  stats = {"prompts": len(instances), "comparisons": len(records), "all_tied": all_tied,
           "end_of_turn_rate": float(np.mean(ended)), **{f"sample_gold/{t}": v for t, v in gold.items()},
           **{f"gold_agreement/{t}": v for t, v in ranking_gold_agreement([i.task for i in instances], golds,
                                                                            rankings).items()},
           **rank_stats}
  if confidence is not None and len(confidence):
    stats["mean_confidence"] = float(np.mean(confidence))
  return records, stats


def ranking_gold_agreement(tasks: list[str], golds: list[list[float]], rankings: list[list[int]]) -> dict[str, float]:
  """Per task and "all": over every pair of a prompt's answers whose gold differs (`golds[n]`, the gold of
  prompt n's answers), the share the ranking orders as gold does (a tie counts half) -- an annotator's or a
  judge's agreement with the hidden truth."""
  hits: dict[str, list[float]] = {}
  for task, gold, ranks in zip(tasks, golds, rankings):
    for i in range(len(gold)):
      for j in range(len(gold)):
        if gold[i] > gold[j]:
          value = 1.0 if ranks[i] < ranks[j] else 0.5 if ranks[i] == ranks[j] else 0.0
          for name in (task, "all"):
            hits.setdefault(name, []).append(value)
  return {name: float(np.mean(v)) for name, v in sorted(hits.items())}


def write_jsonl(path: str, records: list[dict]) -> None:
  with open(path + ".tmp", "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  os.replace(path + ".tmp", path)


def ensure_comparisons(config, directory: str, model, params, tokenizer, rank: Optional[Ranker] = None) -> dict:
  """Writes `directory/train.jsonl` and `heldout.jsonl` unless both exist, ranked by the annotator or by
  `rank`. Returns the statistics (read back from `directory/comparisons.json` when the files were already
  there)."""
  stats_path = os.path.join(directory, "comparisons.json")
  paths = {split: os.path.join(directory, name) for split, name in FILES.items()}
  if all(os.path.exists(p) for p in paths.values()) and os.path.exists(stats_path):
    with open(stats_path) as f:
      return json.load(f)
  tw = config.toyworld
  world = toyworld.make_world(tw.seed)
  started = time.time()
  stats = {}
  for split, num, offset in (("train", tw.num_comparisons, 4), ("heldout", tw.num_val_comparisons, 5)):
    instances = toyworld.sample_instances(world, num, tw.seed + offset, split=split)
    records, split_stats = toyworld_comparisons(model, params, tokenizer, config, instances,
                                                config.seed + offset, rank)
    stats.update({f"comparisons/{split}/{k}": v for k, v in split_stats.items()})
    if not records:
      who = "annotator" if rank is None else "judge"
      raise UserError(f"{directory}: the {who} tied all K answers of every one of the {num} {split} prompts "
                      f"(mean gold {split_stats['sample_gold/all']:.3f}), so there is no preference to learn; "
                      "is init_from a trained SFT model?")
    if jax.process_index() == 0:
      os.makedirs(directory, exist_ok=True)
      write_jsonl(paths[split], records)
  stats["comparisons/seconds"] = time.time() - started
  if jax.process_index() == 0:
    with open(stats_path + ".tmp", "w") as f:
      json.dump(stats, f, indent=2, sort_keys=True)
    os.replace(stats_path + ".tmp", stats_path)
  return stats


def read_comparisons(path: str, val_fraction: float,
                     bad: sources.BadRecords | None = None) -> tuple[list[dict], list[dict]]:
  """(training, held-out) comparison records from `path`: a directory holding train.jsonl and heldout.jsonl
  (as this stage writes them), or any comparison source (JSONL, ArrayRecord, TFDS), whose last
  `val_fraction` is held out. `bad`: the invalid records that may be left out (by default none)."""
  if os.path.isdir(path) and os.path.exists(os.path.join(path, FILES["train"])):
    splits = []
    for name in (FILES["train"], FILES["heldout"]):
      source = sources.open_source(os.path.join(path, name), "comparisons", bad=bad)
      splits.append([source[i] for i in range(len(source))])
    return splits[0], splits[1]
  source = sources.open_source(path, "comparisons", bad=bad)
  records = [source[i] for i in range(len(source))]
  cut = max(1, int(round(len(records) * (1.0 - val_fraction))))
  return records[:cut], records[cut:] or records[-1:]
