"""Every ablation file's sweeps load and finalise (no training), and the smoke sweeps of the ablations that no
other test runs -- rm_variants.py and ptx.py -- run through `python -m rlhf_jax.sweep`, both in the slow tier
(`python -m pytest -m slow`): every PPO smoke run already takes the ptx loss, each reward loss has its own
stage test (tests/test_reward.py), and a reward-stage sweep runs in tests/test_sweep.py (rm_data.py).

The other smoke sweeps run in tests/test_sweep.py (kl_coef.py, rm_data.py) and tests/test_seeds.py
(sft_error_rate.py).
"""

import csv
import glob
import json
import os

import pytest

from conftest import BATCH, ROOT
from rlhf_jax import orchestrate, sweep
from rlhf_jax.config import load_module
from rlhf_jax.train.metrics import read_metrics

ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "experiments", "ablations", "*.py")))
# The variants each file takes besides the full sweep (None) and "smoke".
EXTRA_VARIANTS = {"kl_coef.py": ("pair",)}
SWEEPS = [(os.path.basename(path), arg) for path in ABLATIONS
          for arg in (None, "smoke", *EXTRA_VARIANTS.get(os.path.basename(path), ()))]


def test_every_ablation_file_is_checked():
  assert {"kl_coef.py", "ptx.py", "rm_data.py", "rm_variants.py", "sft_error_rate.py"} <= {s[0] for s in SWEEPS}


@pytest.mark.parametrize("name,arg", SWEEPS, ids=[f"{name[:-3]}:{arg or 'full'}" for name, arg in SWEEPS])
def test_ablation_sweep_configs_load_and_finalise(tmp_path, name, arg):
  """sweep(arg, workdir) gives uniquely named runs of known stages, each of whose configs finalises as the
  sweep command finalises it (with the batch the tests run smoke sweeps at); a run that reads another's
  output (data.path inside the workdir) names an earlier comparisons run; COLUMNS names summary keys."""
  module = load_module(os.path.join(ROOT, "experiments", "ablations", name), "ablation")
  assert module.COLUMNS and all(isinstance(c, str) and c for c in module.COLUMNS)
  runs = module.sweep(arg, str(tmp_path))
  names = [run_name for run_name, _ in runs]
  assert names and len(set(names)) == len(names), names
  overrides = [BATCH[len("--config."):]] if arg == "smoke" else []
  stages = {}
  for run_name, config in runs:
    config = orchestrate.prepare(config, overrides)
    assert config.stage in orchestrate.STAGES, (run_name, config.stage)
    if str(config.data.path).startswith(str(tmp_path)):
      source = os.path.relpath(config.data.path, tmp_path)
      assert stages.get(source) == "comparisons", (run_name, config.data.path, stages)
    stages[run_name] = config.stage


def _table(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # 65 s in CI, which the AI-feedback smoke runs (tests/test_judge.py) took over.
def test_rm_variants_smoke_sweep(toyworld_smoke, tmp_path):
  """ablations/rm_variants.py:smoke: one comparisons run, then a reward model per loss on exactly those
  comparisons -- the four losses on the plain head, and the pairwise loss with the likelihood term -- each a
  row with the loss and head it trained with, evaluated on the same held-out pairs. (Best-of-n is switched
  off: the stage's own tests cover it, and it would sample the same SFT answers five times.)"""
  path = os.path.join(ROOT, "experiments", "ablations", "rm_variants.py")
  argv = [f"{path}:smoke", "--workdir", str(tmp_path), BATCH, "--config.reward.best_of_n=0",
          f"--config.init_from={toyworld_smoke['sft'][0]}"]
  assert sweep.main(argv) == 0
  rows = _table(tmp_path)
  losses = load_module(path, "ablation").LOSSES
  assert [row["run"] for row in rows] == [*losses, "pairwise_likelihood"]
  for row in rows:
    likelihood = row["run"] == "pairwise_likelihood"
    assert row["reward_loss"] == ("pairwise" if likelihood else row["run"])
    assert float(row["reward/likelihood_weight"]) == (1.0 if likelihood else 0.0)
    assert 0.0 <= float(row["eval/label_accuracy"]) <= 1.0
    config = json.loads((tmp_path / row["run"] / "config.json").read_text())
    assert config["data"]["path"] == str(tmp_path / "comparisons")
    assert not (tmp_path / row["run"] / "comparisons").exists()  # Nobody sampled comparisons of their own.
  pairs = {json.loads((tmp_path / row["run"] / "summary.json").read_text())["eval/label_pairs"] for row in rows}
  assert len(pairs) == 1 and pairs.pop() > 0  # The same held-out comparisons for every loss.


@pytest.mark.slow  # 71 s in CI; the PPO smoke runs take the ptx loss (toyworld_ppo.py:smoke, gamma_ptx 0.5).
def test_ptx_smoke_sweep(toyworld_smoke, toyworld_reward_smoke, tmp_path):
  """ablations/ptx.py:smoke: PPO with gamma_ptx 0 and 1, one iteration each: only the second takes the
  pretraining loss (ppo/ptx_loss); both report the held-out pretraining loss after PPO, next to the SFT
  model's on the same windows (the same figure in both rows)."""
  path = os.path.join(ROOT, "experiments", "ablations", "ptx.py")
  argv = [f"{path}:smoke", "--workdir", str(tmp_path), BATCH, "--config.train.steps=1",
          f"--config.init_from={toyworld_smoke['sft'][0]}", f"--config.ppo.reward_from={toyworld_reward_smoke[0]}"]
  assert sweep.main(argv) == 0
  rows = _table(tmp_path)
  variants = load_module(path, "ablation").VARIANTS
  assert [row["run"] for row in rows] == [name for name, _ in variants]
  for row, (name, coef) in zip(rows, variants):
    assert json.loads((tmp_path / name / "config.json").read_text())["ppo"]["ptx_coef"] == coef
    logged = [r for r in read_metrics(str(tmp_path / name)) if "ppo/kl" in r]
    assert len(logged) == 1 and ("ppo/ptx_loss" in logged[0]) == (coef > 0), name
    assert float(row["eval/pretrain/loss"]) > 0
  assert rows[0]["sft/pretrain/loss"] == rows[1]["sft/pretrain/loss"]
  assert float(rows[0]["sft/pretrain/loss"]) > 0
