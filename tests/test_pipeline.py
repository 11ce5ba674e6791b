"""The one command: every stage of experiments/quickstart.py:smoke into its own directory, a report at the end,
and a preempted pipeline that resumes without redoing the stages it had finished."""

import json
import os
import signal

from rlhf_jax import main as main_lib
from rlhf_jax.stages.pipeline import stage_configs
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


def test_pipeline_preempted_in_the_reward_stage_resumes_there(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "quickstart"
  argv = ["--config", SPEC, "--workdir", str(workdir), "--config.train.batch_size=8"]
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
  capsys.readouterr()

  assert main_lib.main(argv) == 0
  out = capsys.readouterr().out
  for name, mtime in finished.items():
    assert os.path.getmtime(workdir / name / "summary.json") == mtime, name
  assert "pretrain: already finished" in out and "sft: already finished" in out
  assert "reward: resuming from the checkpoint at step" in out
  assert "win rate vs SFT (gold)" in out.split("pipeline done")[0].splitlines()[-1] or "win rate vs SFT" in out
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["complete"] is True and [row["name"] for row in summary["stages"]] == STAGES
  for name in STAGES:
    assert json.loads((workdir / name / "summary.json").read_text()).get("complete", True)
  report = (workdir / "report.md").read_text()
  assert "ppo" in report.lower() and "sft" in report.lower()
