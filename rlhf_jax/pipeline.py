"""All four stages in one command: pretrain -> SFT -> reward model (with its comparisons) -> PPO -> report.

  python -m rlhf_jax.main --config experiments/quickstart.py[:ARG] --workdir DIR [--config.a.b=value ...]

A pipeline file is an experiment file whose `get_config(arg)` has `stage = "pipeline"` and which also
defines `stages(arg) -> [(name, config), ...]`: the stages in order, each run into DIR/name. A stage's
`init_from`, `ppo.reward_from`, `data.path` and `judge.model` may name earlier stages as "{sft}", "{reward}", ...
(filled in with their directories). Command-line overrides apply to every stage, as in sweeps (only the stages that read a key
are affected by it). Each stage is an ordinary run: a finished one is skipped, an interrupted one resumes,
so re-running the command after a crash or preemption continues where it stopped. At the end
`eval/report.py` writes DIR/report.md (plots in DIR/plots/) and DIR/summary.json.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Sequence

from rlhf_jax import config as config_lib
from rlhf_jax import orchestrate
from rlhf_jax.errors import UserError
from rlhf_jax.eval.report import write_report
from rlhf_jax.train.loop import read_summary, write_summary

PLACEHOLDER_KEYS = ("init_from", "ppo.reward_from", "data.path", "judge.model")
REPORTED = ("pretrain", "sft", "reward", "ppo")


def stage_configs(spec: str, workdir: str, overrides: Sequence[str] = ()) -> list[tuple[str, object]]:
  """The pipeline file's stages as (name, finalised config), with placeholders resolved."""
  path, _, arg = spec.partition(":")
  module = config_lib.load_module(path)
  if not hasattr(module, "stages"):
    raise UserError(f"{path}: a pipeline file defines stages(arg) -> [(name, config), ...]; it is missing")
  try:
    stages = module.stages(arg or None)
  except (ValueError, KeyError) as e:
    raise UserError(f"{path}: stages({arg or None!r}) failed: {e}") from None
  dirs = {name: os.path.join(workdir, name) for name, _ in stages}
  out = []
  for name, config in stages:
    if config.stage == "pipeline":
      raise UserError(f"{path}: stage {name!r} is itself a pipeline")
    out.append((name, orchestrate.prepare(config, overrides, functools.partial(fill_placeholders, path, name, dirs))))
  return out


def fill_placeholders(path: str, name: str, dirs: dict, config) -> None:
  """Replaces "{sft}", "{reward}", ... in the PLACEHOLDER_KEYS of stage `name`'s config by those stages' dirs."""
  for key in PLACEHOLDER_KEYS:
    parent, leaf = config_lib._resolve(config, key)
    try:
      parent[leaf] = parent[leaf].format(**dirs)
    except (KeyError, IndexError) as e:
      raise UserError(f"{path}: stage {name!r}: config key '{key}' names an unknown stage {e}") from None


# What the final table shows of each kind of stage: (label, summary key, its confidence-interval key or None).
TABLE = {
    "pretrain": (("held-out loss", "eval/loss", None),),
    "sft": (("gold", "eval/gold/all", None), ("end of turn", "eval/gold/end_of_turn_rate", None)),
    "comparisons": (("comparisons", "comparisons/train/comparisons", None),),
    "ai_comparisons": (("comparisons", "comparisons/train/comparisons", None),
                       ("judge vs gold", "comparisons/heldout/gold_agreement/all", None)),
    "reward": (("accuracy vs labels", "eval/label_accuracy", None),
               ("vs gold (pairs >= 0.2 apart)", "eval/gold_accuracy_clear/all", None)),
    "ppo": (("gold", "eval/gold/all", "eval/gold/all_ci"), ("SFT's gold", "sft/gold/all", "sft/gold/all_ci"),
            ("win rate vs SFT (gold)", "eval/win_rate_gold", "eval/win_rate_gold_ci"),
            ("win rate vs SFT (RM)", "eval/win_rate_rm", "eval/win_rate_rm_ci"), ("KL to SFT", "eval/kl", None),
            ("pretraining loss", "eval/pretrain/loss", None)),
}


def final_table(results: list[dict], summaries: dict) -> str:
  """One line per stage: its wall time and headline figures (with 95% half-widths where there are any)."""
  lines = ["", f"{'stage':<12} {'wall s':>7}  result"]
  for row in results:
    summary = summaries.get(row["name"]) or {}
    parts = []
    for label, key, ci in TABLE.get(row["stage"], ()):
      if summary.get(key) is not None:
        value = f"{summary[key]:.3f}" + (f" +- {summary[ci]:.3f}" if ci and summary.get(ci) is not None else "")
        parts.append(f"{label} {value}")
    wall = row["wall_time_s"]
    lines.append(f"{row['name']:<12} {wall if wall is not None else float('nan'):>7.0f}  " + ", ".join(parts))
  return "\n".join(lines)


def run_pipeline(spec: str, workdir: str, overrides: Sequence[str] = ()) -> dict:
  stages = stage_configs(spec, workdir, overrides)
  started = time.time()
  runs = [(name, config, os.path.join(workdir, name)) for name, config in stages]
  announce = lambda i, name, config, run_dir: print(f"[{i + 1}/{len(runs)}] {name} ({config.stage}) -> {run_dir}",
                                                    flush=True)
  summaries = orchestrate.run_in_order(runs, announce)
  results = [{"name": name, "stage": config.stage, "wall_time_s": summary.get("wall_time_s")}
             for (name, config, _), summary in zip(runs, summaries)]
  # The report reads the last run of each kind of stage.
  stage_dirs = {config.stage: run_dir for _, config, run_dir in runs if config.stage in REPORTED}
  report = write_report(workdir, stage_dirs)
  print(final_table(results, {row["name"]: read_summary(os.path.join(workdir, row["name"])) for row in results}))
  summary = {**report, "stages": results, "wall_time_s": time.time() - started, "complete": True}
  write_summary(workdir, summary)
  print(f"pipeline done: {os.path.join(workdir, 'report.md')}")
  return summary
