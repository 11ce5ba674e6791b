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

import jax
import numpy as np

from rlhf_jax.data import sources, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval.gold import sample_responses

FILES = {"train": "train.jsonl", "heldout": "heldout.jsonl"}


def toyworld_comparisons(model, params, tokenizer, config, instances: list[toyworld.Instance],
                         seed: int) -> tuple[list[dict], dict]:
  """Samples K responses per instance from the policy (`model`, `params`), ranks them with the simulated
  annotator. Returns (records, statistics)."""
  tw = config.toyworld
  world = toyworld.make_world(tw.seed)
  k = tw.responses_per_prompt
  prompts = [inst.prompt for inst in instances for _ in range(k)]
  texts, ended = sample_responses(model, params, tokenizer, prompts, config.sampling, seed,
                                  temperature=tw.sample_temperature)
  rng = np.random.default_rng(seed)
  records, all_tied = [], 0
  for n, inst in enumerate(instances):
    responses = texts[n * k:(n + 1) * k]
    ranks = toyworld.annotate(world, inst, responses, rng, temperature=tw.annotator_temperature,
                              tie_margin=tw.tie_margin, disagreement=tw.disagreement)
    if len(set(ranks)) < 2:
      all_tied += 1
      continue
    records.append({"prompt": inst.prompt, "responses": responses, "ranking": ranks, "task": inst.task,
                    "gold": [toyworld.gold_score(world, inst, r) for r in responses],
                    "instance": toyworld.instance_to_json(inst)})
  gold = toyworld.mean_gold_by_task(world, [i for i in instances for _ in range(k)], texts)
  stats = {"prompts": len(instances), "comparisons": len(records), "all_tied": all_tied,
           "end_of_turn_rate": float(np.mean(ended)), **{f"sample_gold/{t}": v for t, v in gold.items()}}
  return records, stats


def write_jsonl(path: str, records: list[dict]) -> None:
  with open(path + ".tmp", "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  os.replace(path + ".tmp", path)


def ensure_comparisons(config, directory: str, model, params, tokenizer) -> dict:
  """Writes `directory/train.jsonl` and `heldout.jsonl` unless both exist. Returns the statistics (read
  back from `directory/comparisons.json` when the files were already there)."""
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
                                                config.seed + offset)
    stats.update({f"comparisons/{split}/{k}": v for k, v in split_stats.items()})
    if not records:
      raise UserError(f"{directory}: the annotator tied all K answers of every one of the {num} {split} prompts "
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
