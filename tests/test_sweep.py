"""`python -m rlhf_jax.sweep` on an ablation file: one run and one table row per variant, resumable."""

import csv
import os

import pytest

from conftest import BATCH, ROOT

from rlhf_jax import sweep
from rlhf_jax.config import load_module


def test_kl_coef_sweep_writes_one_row_per_variant(toyworld_smoke, toyworld_reward_smoke, tmp_path, capsys):
  """Every variant of ablations/kl_coef.py sets the beta it names (beta 0 without the KL in the loss, the
  adaptive one from 0.1); the smoke sweep (beta 0 and adaptive) runs each into its own directory and writes
  results.csv, results.md and results.png; running it again redoes nothing and gives the same table."""
  path = os.path.join(ROOT, "experiments", "ablations", "kl_coef.py")
  module = load_module(path, "ablation")
  configs = dict(module.sweep(None, str(tmp_path)))
  assert list(configs) == [name for name, _, _ in module.VARIANTS]
  default_kl_loss = module.toyworld_ppo.get_config().ppo.kl_loss_coef
  assert default_kl_loss > 0
  for name, beta, adaptive in module.VARIANTS:
    ppo = configs[name].ppo
    assert (ppo.kl_coef, ppo.adaptive_kl) == (beta, adaptive)
    assert ppo.kl_loss_coef == (0.0 if beta == 0 else default_kl_loss)
  variants = [v for v in module.VARIANTS if v[0] in ("beta_0", "adaptive")]
  # Two iterations: the second logs the beta the first update left. Without a critic (as the full experiment
  # runs) and without PPO-ptx, neither of which the table reads: each run builds and compiles less.
  argv = [f"{path}:smoke", "--workdir", str(tmp_path), BATCH, "--config.train.steps=2", "--config.ppo.critic_free=True",
          "--config.ppo.ptx_coef=0", f"--config.init_from={toyworld_smoke['sft'][0]}",
          f"--config.ppo.reward_from={toyworld_reward_smoke[0]}"]
  assert sweep.main(argv) == 0
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["run"] for row in rows] == [name for name, _, _ in variants]
  for row, (name, beta, adaptive) in zip(rows, variants):
    assert (tmp_path / name / "summary.json").exists()
    if not adaptive:  # A fixed beta stays what the variant set; the adaptive one moves.
      assert float(row["ppo/kl_coef"]) == pytest.approx(beta, abs=1e-7)
    assert 0.0 <= float(row["eval/gold/all"]) <= 1.0
  assert (tmp_path / "results.md").read_text().count("\n") == len(variants) + 2
  assert (tmp_path / "results.png").stat().st_size > 0
  capsys.readouterr()
  assert sweep.main(argv) == 0
  assert capsys.readouterr().out.count("already finished") == len(variants)
  with open(tmp_path / "results.csv") as f:
    assert list(csv.DictReader(f)) == rows


def test_rm_data_sweep_trains_one_epoch_per_size(toyworld_smoke, tmp_path):
  """ablations/rm_data.py:smoke: a comparisons run and a reward model per size, each reward model trained for
  one epoch of its own comparisons (reward.epochs 1: ceil(kept prompts / batch) steps), one row each."""
  path = os.path.join(ROOT, "experiments", "ablations", "rm_data.py")
  sizes = load_module(path, "ablation").SMOKE_SIZES
  argv = [f"{path}:smoke", "--workdir", str(tmp_path), BATCH, "--config.reward.epochs=1",
          f"--config.init_from={toyworld_smoke['sft'][0]}"]
  assert sweep.main(argv) == 0
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["run"] for row in rows] == [f"rm_{n}" for n in sizes]
  for row in rows:
    kept = int(float(row["comparisons/train_prompts"]))
    assert 0 < kept <= int(row["run"].split("_")[1])
    assert int(float(row["reward/steps"])) == -(-kept // 8)  # BATCH: 8 prompts a step.
    assert 0.0 <= float(row["best_of_n/4/gold"]) <= 1.0
