"""Comparison data, the InstructGPT way (section 3.5): the SFT policy answers each prompt K times, and an
annotator ranks the K answers. For toyworld the annotator is simulated (`toyworld.annotate`: Plackett-Luce
on the gold scores, with ties and disagreement), so the data is known to be right up to its noise.

  model <- init_from (an SFT workdir)
  prompts <- toyworld training / held-out instances (disjoint: the held-out split never appears in training)
  K samples per prompt at toyworld.sample_temperature -> annotate -> JSONL, one comparison per line:
    {"prompt", "responses", "ranking", "gold", "task", "instance"}

The files (`train.jsonl`, `heldout.jsonl`) are ordinary comparison JSONL (data/sources.py), so they can be
read, inspected and reused: the reward stage reads them, and the reward-model ablation trains every variant
on the same ones. Prompts whose K answers all tie carry no preference and are left out (counted in the
summary). As a stage (`config.stage = "comparisons"`) it writes into its own workdir; the reward stage
calls `ensure_comparisons` to write them into `WORKDIR/comparisons/` when it is given none.
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
from rlhf_jax.stages import common
from rlhf_jax.train.loop import read_summary, write_summary

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


def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"comparisons: already written in {workdir}; nothing to do")
    return summary
  if not config.init_from:
    raise UserError("config key 'init_from': the comparisons are sampled from an SFT model; name its workdir")
  if config.data.source != "toyworld":
    raise UserError("config key 'data.source': the comparisons stage simulates annotators, which needs "
                    "'toyworld' (for your own data, write comparison JSONL and give it to the reward stage)")
  mesh = common.make_mesh(config)
  model, params, tokenizer = common.load_pretrained(config.init_from, mesh, config.model)
  common.record_model(config, workdir, model.config)
  tokenizer = common.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer)
  common.write_run_config(config, workdir)
  stats = ensure_comparisons(config, workdir, model, params, tokenizer)
  summary = {**stats, "complete": True, "wall_time_s": stats["comparisons/seconds"]}
  write_summary(workdir, summary)
  print(common.result_line("comparisons", summary, ["comparisons/train/comparisons",
                                                   "comparisons/heldout/comparisons",
                                                   "comparisons/train/sample_gold/all"]))
  return summary
