"""The notebooks run top to bottom (nbclient, a fresh kernel each) against the session's smoke runs, and each
produces what it is for."""

import json
import os
import shutil
import sys

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra is not installed")

KERNEL = "rlhf-jax-tests"


@pytest.fixture(scope="module")
def runs(toyworld_smoke, toyworld_reward_smoke, toyworld_ppo_smoke, tmp_path_factory):
  """A pipeline-shaped base directory, RUNS/{pretrain,sft,reward,ppo}, linking to the session's smoke runs
  (the notebooks only read them)."""
  base = tmp_path_factory.mktemp("notebook_runs")
  dirs = {"pretrain": toyworld_smoke["pretrain"][0], "sft": toyworld_smoke["sft"][0],
          "reward": toyworld_reward_smoke[0], "ppo": toyworld_ppo_smoke[0]}
  for stage, path in dirs.items():
    os.symlink(path, base / stage)
  return base


@pytest.fixture
def execute(tmp_path, monkeypatch):
  """execute(name, **env) runs notebooks/NAME in a kernel of this interpreter, with `env` set and the working
  directory tmp_path; returns the printed lines of its code cells."""
  # A kernel spec naming this very interpreter: a "python3" found on PATH might be another environment.
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": KERNEL, "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("XLA_FLAGS", "")  # One CPU device in the kernel, as on a laptop.

  def run(name, **env):
    for key, value in env.items():
      monkeypatch.setenv(key, str(value))
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return [line for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
            if out.get("name") == "stdout" for line in out["text"].splitlines()]

  return run


def _result(lines, tag):
  found = [line[len(tag) + 1:] for line in lines if line.startswith(tag + ":")]
  assert found, f"no '{tag}:' line in {lines}"
  return json.loads(found[-1])


def test_quickstart(execute, runs, tmp_path):
  """Opens the four stages (nothing is re-run), plots, samples every LM stage and writes the report."""
  out = tmp_path / "quickstart"
  lines = execute("01_quickstart.ipynb", RLHF_JAX_RUNS=runs, RLHF_JAX_NOTEBOOK_OUT=out)
  result = _result(lines, "quickstart")
  assert result["report"] == str(out / "report.md") and (out / "report.md").exists()
  assert all((out / name).stat().st_size > 0 for name in result["plots"])
  assert set(result["gold"]) == {"pretrain", "sft", "ppo"}
  assert all(0.0 <= g <= 1.0 for g in result["gold"].values())


def test_custom_loss_dpo(execute, runs):
  """DPO written in the notebook and trained with make_step: it starts at log 2 with margin 0 (policy =
  reference), and the loss falls while the preference margin on the training pairs grows."""
  result = _result(execute("02_custom_loss.ipynb", RLHF_JAX_RUNS=runs, RLHF_JAX_DPO_STEPS=8), "dpo")
  loss, margin = result["loss"], result["margin"]
  assert len(loss) == 9
  assert loss[0] == pytest.approx(0.6931472, abs=1e-5) and margin[0] == pytest.approx(0.0, abs=1e-6)
  assert loss[-1] < loss[0] - 1e-3 and margin[-1] > margin[0] + 1e-3
  assert all(b <= a + 1e-6 for a, b in zip(loss, loss[1:]))  # Full-batch Adam at a small rate: monotone here.


def test_overoptimization(execute, runs, tmp_path):
  """One line per run: the PPO run itself, and a sweep directory holding a copy of it."""
  sweep_dir = tmp_path / "sweep"
  (sweep_dir / "copy").mkdir(parents=True)
  for name in ("metrics.jsonl", "summary.json"):
    shutil.copy(runs / "ppo" / name, sweep_dir / "copy" / name)
  lines = execute("03_overoptimization.ipynb", RLHF_JAX_PPO_RUNS=f"{runs / 'ppo'}{os.pathsep}{sweep_dir}",
                  RLHF_JAX_NOTEBOOK_OUT=tmp_path / "out")
  result = _result(lines, "overoptimization")
  assert set(result) == {"ppo", "copy"}
  # SFT at KL 0 plus the smoke run's two evaluations (eval_every 2 of 4 iterations).
  assert result["ppo"]["points"] == 3 and result["ppo"] == result["copy"]
  assert (tmp_path / "out" / "overoptimization.png").stat().st_size > 0
  # Best-of-n from the reward run the PPO run was trained against (its ppo.reward_from).
  bon = _result(lines, "best_of_n")
  assert os.path.samefile(bon["reward_run"], runs / "reward")
  reward_summary = json.load(open(runs / "reward" / "summary.json"))
  assert sorted(bon["rows"], key=int) == ["1", "2", "4"]
  for n, row in bon["rows"].items():
    assert row["gold"] == reward_summary[f"best_of_n/{n}/gold"] and row["gold"] <= row["oracle_gold"] + 1e-12
  assert (tmp_path / "out" / "best_of_n.png").stat().st_size > 0
