"""The one command: every stage of experiments/quickstart.py:smoke into its own directory, a report at the end,
and a preempted pipeline that resumes without redoing the stages it had finished."""

import json
import os
import signal

import pytest

from rlhf_jax import main as main_lib
from rlhf_jax.errors import UserError
from rlhf_jax.eval.report import NUM_SAMPLE_PROMPTS
from rlhf_jax.pipeline import stage_configs
from rlhf_jax.train.checkpoint import Checkpointer
from rlhf_jax.train.metrics import MetricsWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "experiments", "quickstart.py") + ":smoke"
STAGES = ["pretrain", "sft", "comparisons", "reward", "ppo"]


def test_stage_placeholders_name_earlier_stages(tmp_path):
  stages = dict(stage_configs(SPEC, str(tmp_path)))
  assert list(stages) == STAGES
  assert stages["sft"].init_from == str(tmp_path / "pretrain")
  assert stages["reward"].data.path == str(tmp_path / "comparisons")
  assert stages["ppo"].ppo.reward_from == str(tmp_path / "reward")
  assert all(c.sampling.tool == "" and c.toyworld.calculator_rate == 0.0 for c in stages.values())
  calculator = dict(stage_configs(SPEC + ",calculator", str(tmp_path)))  # Every stage samples with the tool.
  assert all(c.sampling.tool == "calculator" and c.toyworld.calculator_rate == 1.0 for c in calculator.values())
  assert calculator["ppo"].train.steps == stages["ppo"].train.steps  # Still the smoke budgets.


def test_short_variant_differs_only_in_the_pretraining_and_sft_budgets(tmp_path):
  """`:short` is the quickstart as it was until 2026-12-06 (1,000 pretraining and 500 SFT steps, no
  pretraining documents in SFT's rows; the README's sections measured on those models name it); every other
  setting is the full command's."""
  full = dict(stage_configs(SPEC.replace(":smoke", ""), str(tmp_path)))
  short = dict(stage_configs(SPEC.replace(":smoke", ":short"), str(tmp_path)))
  assert [(full[n].train.steps, short[n].train.steps) for n in ("pretrain", "sft")] == [(1200, 1000), (600, 500)]
  assert (full["sft"].data.pretrain_mix, short["sft"].data.pretrain_mix) == (0.05, 0.0)
  for name in STAGES:
    a, b = full[name].to_dict(), short[name].to_dict()
    if name in ("pretrain", "sft"):
      for key in ("steps", "eval_every", "checkpoint_every"):
        del a["train"][key], b["train"][key]
    if name == "sft":
      del a["data"]["pretrain_mix"], b["data"]["pretrain_mix"]
    assert a == b, name
  assert short["pretrain"].train.eval_every == 1000 and short["sft"].train.eval_every == 500
  with pytest.raises(UserError, match="two budgets"):
    stage_configs(SPEC + ",short", str(tmp_path))


def test_pipeline_preempted_in_the_reward_stage_resumes_there(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "quickstart"
  argv = ["--config", SPEC, "--workdir", str(workdir), "--config.train.batch_size=8"]
  stages = dict(stage_configs(SPEC, str(workdir), ["train.batch_size=8"]))
  original = MetricsWriter.write

  def preempt_in_reward(self, step, metrics):
    original(self, step, metrics)
    if os.path.basename(os.path.dirname(self.path)) == "reward" and step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(MetricsWriter, "write", preempt_in_reward)
  assert main_lib.main(argv) == 128 + signal.SIGTERM
  monkeypatch.setattr(MetricsWriter, "write", original)
  finished = {name: os.path.getmtime(workdir / name / "summary.json") for name in ("pretrain", "sft", "comparisons")}
  assert not (workdir / "reward" / "summary.json").exists() and not (workdir / "ppo").exists()
  checkpoints = Checkpointer(str(workdir / "reward" / "checkpoints"))
  preempted_at = checkpoints.latest_step()
  checkpoints.close()
  capsys.readouterr()

  assert main_lib.main(argv) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  for name, mtime in finished.items():
    assert os.path.getmtime(workdir / name / "summary.json") == mtime, name
  assert f"pretrain: already finished at step {stages['pretrain'].train.steps} ({workdir / 'pretrain'})" in out
  assert f"sft: already finished at step {stages['sft'].train.steps} ({workdir / 'sft'})" in out
  assert f"comparisons: already written in {workdir / 'comparisons'}" in out
  # It goes on from the checkpoint the preempted run saved, not from the start.
  assert preempted_at and f"reward: resuming from the checkpoint at step {preempted_at}" in lines
  banners = [line for line in lines if line.startswith("[")]
  assert banners == [f"[{i + 1}/{len(STAGES)}] {name} ({stages[name].stage}) -> {workdir / name}"
                     for i, name in enumerate(STAGES)]

  # Every stage finished: a complete summary (the stages with their own) or the last step (training loops).
  runs = {name: json.loads((workdir / name / "summary.json").read_text()) for name in STAGES}
  for name in ("comparisons", "reward", "ppo"):
    assert runs[name]["complete"] is True, name
  for name in ("pretrain", "sft", "ppo"):
    assert runs[name]["step"] == stages[name].train.steps, name
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["complete"] is True
  assert [(row["name"], row["stage"]) for row in summary["stages"]] == [(n, stages[n].stage) for n in STAGES]
  assert [row["wall_time_s"] for row in summary["stages"]] == [runs[name]["wall_time_s"] for name in STAGES]
  # The report's numbers are the finished stages' own (the resumed reward model's, the new PPO run's).
  for key in ("pretrain/eval/loss", "reward/eval/label_accuracy", "ppo/eval/win_rate_gold", "ppo/eval/kl"):
    stage, _, name = key.partition("/")
    assert summary[key] == runs[stage][name], key

  # The final table: a row per stage, in order, the PPO row with its gold win rate and 95% half-width; then
  # the line naming the report.
  assert lines[-1] == f"pipeline done: {workdir / 'report.md'}"
  header = max(i for i, line in enumerate(lines) if line.split() == ["stage", "wall", "s", "result"])
  rows = lines[header + 1:-1]
  assert [row.split()[0] for row in rows] == STAGES
  ppo = runs["ppo"]
  assert f"win rate vs SFT (gold) {ppo['eval/win_rate_gold']:.3f} +- {ppo['eval/win_rate_gold_ci']:.3f}" in rows[-1]
  assert f"held-out loss {runs['pretrain']['eval/loss']:.3f}" in rows[0]

  # The report: a section per reported stage in pipeline order, PPO's win rate row against SFT's 0.5, each
  # plot it names on disk, and every LM stage's answers to the same held-out prompts with their gold scores.
  report = (workdir / "report.md").read_text()
  sections = [line for line in report.splitlines() if line.startswith("## ")]
  assert sections == ["## Pretraining", "## Instruction tuning (SFT)", "## Reward model", "## PPO",
                      "## Sample answers"]
  win = f"{ppo['eval/win_rate_gold']:.4g} ± {ppo['eval/win_rate_gold_ci']:.2g}"
  assert f"| win rate vs SFT, by gold (± 95% CI) | {win} | 0.5 |" in report
  assert {"plots/ppo_scores.png", "plots/gold_vs_kl.png", "plots/rm_calibration.png"} <= set(summary["plots"])
  for name in summary["plots"]:
    assert f"]({name})" in report and (workdir / name).stat().st_size > 0, name
  samples = report.split("## Sample answers")[1].splitlines()
  table = [line for line in samples if line.startswith("| <code>")]
  assert "| prompt | Pretraining (gold) | Instruction tuning (SFT) (gold) | PPO (gold) |" in samples
  assert len(table) == NUM_SAMPLE_PROMPTS and all(line.count(") |") == 3 for line in table), table
  for stage in ("pretrain", "sft", "ppo"):
    assert 0.0 <= summary[f"samples/{stage}/gold"] <= 1.0, stage
