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


def test_methods_sweep_draws_the_frontier(toyworld_smoke, toyworld_reward_smoke, tmp_path):
  """ablations/methods.py: the full sweep's runs are the methods as their files define them (PPO's two KL
  weights scaled together, GRPO's settings, 3 seeds in one program for the RL methods, DPO's seeds as runs of
  their own); the smoke sweep (PPO, GRPO, DPO, one seed each) writes frontier.png and frontier.md with a
  row per method and the SFT baselines; DPO's seed runs pool into one method with their sd."""
  path = os.path.join(ROOT, "experiments", "ablations", "methods.py")
  module = load_module(path, "ablation")
  configs = dict(module.sweep(None, str(tmp_path)))
  assert [n for n in configs if n.startswith("dpo_beta0.1")] == ["dpo_beta0.1_s0", "dpo_beta0.1_s1", "dpo_beta0.1_s2"]
  assert [configs[f"ipo_beta0.1_s{i}"].seed for i in range(3)] == [0, 1, 2]
  assert configs["ipo_beta0.1_s0"].dpo.loss == "ipo" and configs["ipo_beta0.1_s0"].stage == "dpo"
  default = configs["ppo"].ppo
  for name, scale in (("ppo_kl0.3x", 0.3), ("ppo_kl3x", 3.0)):
    assert configs[name].ppo.kl_coef == pytest.approx(scale * default.kl_coef)
    assert configs[name].ppo.kl_loss_coef == pytest.approx(scale * default.kl_loss_coef)
  grpo = configs["grpo"].ppo
  assert (grpo.group_std, grpo.critic_free, grpo.whiten_advantages, grpo.kl_coef, grpo.kl_loss,
          grpo.loss_aggregation) == (True, True, False, 0.0, "k3", "sequence_mean")
  assert all(configs[n].train.seeds == 3 and configs[n].ppo.iterations_per_call == 5 for n in ("ppo", "grpo", "rloo"))
  with pytest.raises(ValueError, match="at most one"):
    module.toyworld_ppo.get_config("grpo,rloo")

  argv = [f"{path}:smoke", "--workdir", str(tmp_path), BATCH, "--config.train.steps=2",
          "--config.train.eval_every=2", "--config.train.checkpoint_every=2", "--config.ppo.ptx_coef=0",
          f"--config.init_from={toyworld_smoke['sft'][0]}", f"--config.ppo.reward_from={toyworld_reward_smoke[0]}",
          f"--config.dpo.reward_from={toyworld_reward_smoke[0]}",
          f"--config.data.path={toyworld_reward_smoke[0] / 'comparisons'}"]
  assert sweep.main(argv) == 0
  table = (tmp_path / "frontier.md").read_text().splitlines()
  assert [line.split(" | ")[0].lstrip("| ") for line in table[2:5]] == ["ppo", "grpo", "dpo_beta0.1"]
  assert any(line.startswith("| SFT |") for line in table) and any("SFT at T 0.5" in line for line in table)
  assert (tmp_path / "frontier.png").stat().st_size > 0
  pooled = module.method_figures([("dpo_b_s0", {"eval/gold/all": 0.5}), ("dpo_b_s1", {"eval/gold/all": 0.7}),
                                  ("ppo", {"eval/gold/all": 0.6, "eval/gold/all/seeds": [0.5, 0.6, 0.7]})])
  assert pooled["dpo_b"]["eval/gold/all"] == pytest.approx((0.6, 0.1 * 2 ** 0.5, 2))
  assert pooled["ppo"]["eval/gold/all"] == pytest.approx((0.6, 0.1, 3))
