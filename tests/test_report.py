"""The pipeline report (eval/report.py) on the smoke runs, and a sweep's results.png."""

import json
import math
import os
import re

import jax
import numpy as np
import pytest

from rlhf_jax import mesh as mesh_lib
from rlhf_jax import sweep
from rlhf_jax.eval import report
from rlhf_jax.stages.common import load_pretrained
from rlhf_jax.train import state as state_lib
from rlhf_jax.train.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def stage_dirs(toyworld_smoke, toyworld_reward_smoke, toyworld_ppo_smoke):
  return {"pretrain": str(toyworld_smoke["pretrain"][0]), "sft": str(toyworld_smoke["sft"][0]),
          "reward": str(toyworld_reward_smoke[0]), "ppo": str(toyworld_ppo_smoke[0])}


def _png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_report_on_smoke_runs(tmp_path, stage_dirs, toyworld_ppo_smoke):
  """report.md names every plot, each is a real PNG, the win rates in the table and in the returned numbers
  are the PPO summary's, the numbers are strict JSON, and every LM stage answered the fixed prompts."""
  numbers = report.write_report(str(tmp_path), stage_dirs)
  text = (tmp_path / "report.md").read_text()
  expected = {f"plots/{s}_loss.png" for s in report.STAGES} | {"plots/ppo_scores.png", "plots/gold_vs_kl.png",
                                                                "plots/rm_calibration.png"}
  assert set(numbers["plots"]) == expected
  linked = set(re.findall(r"!\[[^]]*\]\((plots/[^)]+)\)", text))
  assert linked == expected
  for name in expected:
    assert _png(tmp_path / name), name
  json.dumps(numbers, allow_nan=False)  # Strict JSON: raises on NaN or infinity.

  summary = toyworld_ppo_smoke[1]
  for key in ("eval/win_rate_gold", "eval/win_rate_rm"):
    value, ci = summary[key], summary[key + "_ci"]
    assert numbers[f"ppo/{key}"] == value and numbers[f"ppo/{key}_ci"] == ci
    by = "gold" if key.endswith("gold") else "the RM"
    row = next(line for line in text.splitlines() if line.startswith(f"| win rate vs SFT, by {by}"))
    assert row.split("|")[2].strip() == f"{value:.4g} ± {ci:.2g}"
  assert numbers["ppo/sft/pretrain/loss"] == summary["sft/pretrain/loss"]
  assert numbers["reward/eval/label_accuracy"] is not None
  rm_summary = json.load(open(os.path.join(stage_dirs["reward"], "summary.json")))
  for n in (1, 2, 4):  # The best-of-n table: one row per n, the reward summary's figures.
    row = next(line for line in text.splitlines() if line.startswith(f"| {n} | "))
    assert row.split("|")[3].strip() == f"{rm_summary[f'best_of_n/{n}/gold']:.4g}"
    assert numbers[f"reward/best_of_n/{n}/oracle_gold"] == rm_summary[f"best_of_n/{n}/oracle_gold"]

  samples = text.split("## Sample answers")[1].strip().splitlines()
  table = [line for line in samples if line.startswith("| <code>")]
  assert len(table) == report.NUM_SAMPLE_PROMPTS
  assert all(line.count("|") == 5 for line in table)  # prompt + pretrain, SFT, PPO answers.
  for stage in ("pretrain", "sft", "ppo"):
    assert 0.0 <= numbers[f"samples/{stage}/gold"] <= 1.0


def test_load_pretrained_reads_the_policy_ppo_evaluated(stage_dirs):
  """A PPO workdir opens as its actor's moving average (the smoke run keeps one), not the raw actor; an SFT
  workdir as its params."""
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  model, loaded, _ = load_pretrained(stage_dirs["ppo"], mesh)
  checkpoints = Checkpointer(os.path.join(stage_dirs["ppo"], "checkpoints"))
  step = checkpoints.latest_step()
  assert checkpoints.policy_path(step) == ("ema",)
  abstract, shardings = state_lib.param_shardings(model, mesh)
  ema, actor = (checkpoints.restore_params(step, abstract, shardings, path) for path in (("ema",), ("params", "actor")))
  checkpoints.close()
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  assert all(np.array_equal(a, b) for a, b in zip(leaves(loaded), leaves(ema)))
  assert not all(np.array_equal(a, b) for a, b in zip(leaves(ema), leaves(actor)))
  sft = Checkpointer(os.path.join(stage_dirs["sft"], "checkpoints"))
  assert sft.policy_path(sft.latest_step()) == ("params",)
  sft.close()


def test_report_skips_missing_stages_and_takes_given_prompts(tmp_path, stage_dirs):
  given = {"reward": stage_dirs["reward"], "sft": stage_dirs["sft"], "ppo": str(tmp_path / "not_there")}
  numbers = report.write_report(str(tmp_path), given, sample_prompts=["compute 2 plus 3 ."])
  assert set(numbers["plots"]) == {"plots/sft_loss.png", "plots/reward_loss.png", "plots/rm_calibration.png"}
  text = (tmp_path / "report.md").read_text()
  assert "## PPO" not in text and "| <code>compute 2 plus 3 .</code> |" in text
  assert "samples/sft/gold" not in numbers  # No gold score for a free-form prompt.


def test_sweep_table_plot_with_nan(tmp_path):
  """results.png is written next to the table, whatever NaN, None, infinite or text values the runs hold."""
  rows = [{"run": "a", "reward_loss": "pairwise", "eval/ece": math.nan, "eval/kl": 0.5, "wall_time_s": 3.0},
          {"run": "b", "reward_loss": "margin", "eval/ece": 0.1, "eval/kl": None, "wall_time_s": math.nan},
          {"run": "c", "reward_loss": "per_token", "eval/ece": math.inf, "eval/kl": -0.25, "wall_time_s": 1.0}]
  sweep.write_table(str(tmp_path), rows)
  assert (tmp_path / "results.md").exists() and _png(tmp_path / "results.png")
  sweep.write_table(str(tmp_path / "x"), [])  # No rows: nothing is written, nothing fails.
  assert not (tmp_path / "x").exists()


def test_one_evaluator_for_the_pretraining_loss_and_ppo_baselines(toyworld_smoke, toyworld_ppo_smoke, stage_dirs,
                                                                   tmp_path):
  """The held-out pretraining loss of the SFT model is the same figure whether the SFT stage or PPO's
  evaluation reports it (one function, stages/pretrain.py:heldout_lm_evaluator); PPO's paired gold gain is
  the difference of the two means; the report's PPO table has the free baseline and best-of-4 columns."""
  sft, ppo = toyworld_smoke["sft"][1], toyworld_ppo_smoke[1]
  assert np.isfinite(sft["eval/pretrain/loss"])
  assert ppo["sft/pretrain/loss"] == pytest.approx(sft["eval/pretrain/loss"], rel=1e-5)
  assert ppo["eval/gold_gain"] == pytest.approx(ppo["eval/gold/all"] - ppo["sft/gold/all"], abs=1e-9)
  assert 0.0 <= ppo["sft_t0.5/gold/all"] <= 1.0 and "sft_t0.5/win_rate_gold" in ppo
  report.write_report(str(tmp_path), stage_dirs)
  header = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| | PPO |"))
  assert "SFT at T 0.5" in header and "RM's best of 4" in header and "gold's best of 4" in header
