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
from rlhf_jax.artifacts.models import load_pretrained
from rlhf_jax.artifacts.reward_model import load_reward_model
from rlhf_jax.eval import report
from rlhf_jax.eval.best_of_n import best_of_n_samples
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


def test_one_evaluator_gives_every_stage_the_same_answers(stage_dirs, toyworld_smoke, toyworld_ppo_smoke):
  """The SFT stage's gold evaluation, PPO's evaluator (its SFT baseline) and the reward stage's best-of-n all
  sample through eval/gold.py:sample_answers with sampling.eval_seed: the same model gets the same answers
  to the held-out prompts in each, best-of-n's first answer to a prompt included, so it has one figure."""
  import types

  from rlhf_jax.data import toyworld
  from rlhf_jax.eval.gold import answer_keys, eval_seed, gold_evaluation, sample_answers
  from rlhf_jax.eval.policy import PolicyEvaluator

  with open(os.path.join(stage_dirs["sft"], "config.json")) as f:
    config = json.load(f)
  sampling = types.SimpleNamespace(**config["sampling"])
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  model, params, tokenizer = load_pretrained(stage_dirs["sft"], mesh)
  world = toyworld.make_world(config["toyworld"]["seed"])
  instances = toyworld.eval_instances(world, config["toyworld"]["num_eval_prompts"])
  prompts = [inst.prompt for inst in instances]

  metrics, sft_texts = gold_evaluation(model, params, tokenizer, world, instances, sampling, mesh=mesh)
  assert len(set(sft_texts)) > 1  # The smoke model's answers vary, so equal lists below are no accident.
  rm_model, rm_params, _, spec = load_reward_model(stage_dirs["reward"], mesh)
  evaluator = PolicyEvaluator(actor=model, reference=model.clone(heads=("lm",)), reward_model=rm_model,
                              ref_params=params, rm_params=rm_params, tokenizer=tokenizer, mesh=mesh,
                              prompts=prompts, sampling=sampling, seed=eval_seed(sampling),
                              reward_token=spec.reward_token, world=world, instances=instances)
  ppo_view = evaluator.sample(params)
  assert ppo_view.texts == sft_texts
  np.testing.assert_allclose(ppo_view.kl, 0.0, atol=1e-5)  # The reference itself.
  best_of_3 = best_of_n_samples(model, params, tokenizer, instances, sampling, 3, eval_seed(sampling), mesh)
  assert best_of_3[::3] == sft_texts and best_of_3[1::3] != sft_texts
  # The stages' own summaries agree: PPO's SFT baseline is the SFT stage's last evaluation.
  sft_summary, ppo_summary = toyworld_smoke["sft"][1], toyworld_ppo_smoke[1]
  assert ppo_summary["sft/gold/all"] == pytest.approx(sft_summary["eval/gold/all"], abs=1e-12)
  assert ppo_summary["sft/gold/all"] == pytest.approx(metrics["gold/all"], abs=1e-12)
  # Another evaluation seed draws other answers; key (i, j) is the same whatever the number of answers.
  other = sample_answers(model, params, tokenizer, prompts, sampling, seed=eval_seed(sampling) + 1, mesh=mesh)
  assert other.texts != sft_texts
  np.testing.assert_array_equal(answer_keys(3, 4, 2)[::2], answer_keys(3, 4, 1))


def test_evaluate_cli_gives_the_stages_figures(stage_dirs, toyworld_ppo_smoke, toyworld_reward_smoke, tmp_path,
                                               capsys):
  """`python -m rlhf_jax.evaluate` re-evaluates a finished PPO run through the stages' own evaluator: the
  figures are those of PPO's summary (its last evaluation and its SFT baselines) and of the reward stage's
  best-of-n; a workdir that is not a PPO run is one line and exit status 2."""
  from rlhf_jax import evaluate

  out = tmp_path / "figures.json"
  assert evaluate.main(["--ppo", stage_dirs["ppo"], "--out", str(out)]) == 0
  figures = json.loads(out.read_text())
  ppo, rm = toyworld_ppo_smoke[1], toyworld_reward_smoke[1]
  for key in ("eval/gold/all", "eval/rm_score", "eval/kl", "eval/win_rate_rm", "sft/gold/all", "sft/rm_score",
              "sft_t0.5/kl", "sft_t0.5/rm_score", "eval/response_length"):
    assert figures[key] == pytest.approx(ppo[key], abs=1e-4), key
  assert figures["best_of_n/4/oracle_gold"] == pytest.approx(rm["best_of_n/4/oracle_gold"], abs=1e-9)
  assert "PPO - SFT" in capsys.readouterr().out
  assert evaluate.main(["--ppo", stage_dirs["sft"]]) == 2
  assert "not 'ppo'" in capsys.readouterr().err
