"""`train.seeds`: N independent runs as one compiled program (vmap over seeds), and what reads their workdir.

The runs are the Shakespeare smoke config over test_loop.py's small text file, in-process through the CLI.
"""

import csv
import json
import os

import jax
import numpy as np
import pytest
from conftest import BATCH, ROOT
from test_loop import _args, _final_params

from rlhf_jax import config as config_lib
from rlhf_jax import main as main_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax import sweep
from rlhf_jax.errors import UserError
from rlhf_jax.artifacts.models import load_pretrained
from rlhf_jax.train import loop as loop_lib
from rlhf_jax.train.metrics import read_metrics

SEED = 1337  # shakespeare_char.py's.


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, text_file):
  """A finished smoke pretraining run with train.seeds=2: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("seeds") / "two"
  assert main_lib.main(_args(workdir, text_file, "--config.train.seeds=2")) == 0
  return workdir, json.load(open(workdir / "summary.json"))


def test_replica_i_is_the_run_with_seed_plus_i(two_seeds, tmp_path, text_file):
  """The vmapped program is N independent runs: replica i ends with the parameters (and held-out loss) of a
  plain run with seed + i, although the replicas differ from each other."""
  workdir, summary = two_seeds
  step, stacked = _final_params(workdir)
  assert step == 6
  for i in range(2):
    single = tmp_path / f"seed{i}"
    assert main_lib.main(_args(single, text_file, f"--config.seed={SEED + i}")) == 0
    _, params = _final_params(single)
    jax.tree.map(lambda s, p: np.testing.assert_allclose(s[i], p, rtol=0, atol=1e-5), stacked, params)
    assert summary["eval/loss/seeds"][i] == pytest.approx(json.load(open(single / "summary.json"))["eval/loss"],
                                                          abs=1e-5)
  assert max(float(np.abs(x[0] - x[1]).max()) for x in jax.tree.leaves(stacked)) > 1e-3
  losses = summary["eval/loss/seeds"]
  assert summary["eval/loss"] == pytest.approx(np.mean(losses))
  assert summary["eval/loss/seed_std"] == pytest.approx(np.std(losses, ddof=1)) and losses[0] != losses[1]
  assert summary["train/loss/seed_std"] > 0
  logged = [row for row in read_metrics(str(workdir)) if "train/loss" in row]
  assert logged and all(row["train/loss/seed_std"] > 0 for row in logged)


def test_crash_then_resume_ends_with_the_same_stacked_parameters(
    two_seeds, tmp_path, text_file, monkeypatch, capsys):
  """Killed after step 5 (checkpoints at 3 and 6), the re-run resumes from step 3 -- both replicas' states
  and their data iterators -- and ends where the uninterrupted run did."""
  calls = []

  def crash_at_step_5(guard):
    calls.append(1)
    if len(calls) == 5:
      raise RuntimeError("simulated crash")
    return False

  workdir = tmp_path / "crashed"
  with monkeypatch.context() as patch:
    patch.setattr(loop_lib._SignalGuard, "stop_requested", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
      main_lib.main(_args(workdir, text_file, "--config.train.seeds=2"))
  capsys.readouterr()
  assert main_lib.main(_args(workdir, text_file, "--config.train.seeds=2")) == 0
  assert "resuming from the checkpoint at step 3" in capsys.readouterr().out
  _, expected = _final_params(two_seeds[0])
  _, resumed = _final_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, expected, resumed)
  logged = lambda run: [row["step"] for row in read_metrics(str(run)) if "train/loss" in row]
  assert logged(workdir) == logged(two_seeds[0])  # Rows after step 3 were logged again, once.


def test_a_workdir_of_several_seeds_is_not_a_starting_point(two_seeds):
  workdir, _ = two_seeds
  with pytest.raises(UserError, match=f"{workdir}: this workdir holds 2 models .*train.seeds=2") as e:
    load_pretrained(str(workdir), mesh_lib.make_mesh(config_lib.mesh_config()))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, key", [
    (["train.seeds=0"], "train.seeds"), (["stage=reward", "train.seeds=2"], "train.seeds"),
    (["stage=ppo", "train.seeds=2"], "train.seeds"),  # PPO seeds run only in the compiled iteration.
    (["stage=ppo", "ppo.iterations_per_call=-1"], "ppo.iterations_per_call"),
    (["stage=ppo", "ppo.iterations_per_call=4", "train.log_every=4", "train.eval_every=4",
      "train.checkpoint_every=4"], "train.steps"),
    (["stage=ppo", "ppo.iterations_per_call=2", "train.log_every=5"], "train.log_every"),
    (["stage=ppo", "data.source=toyworld", "ppo.iterations_per_call=2", "ppo.reward=gold"], "ppo.iterations_per_call"),
    (["stage=ppo", "ppo.iterations_per_call=2", "ppo.round_every=10"], "ppo.iterations_per_call")])
def test_bad_seeds_name_the_key(overrides, key):
  """Bad `train.seeds` and `ppo.iterations_per_call` (K must divide the loop's counts: steps 6, log 2, eval 3,
  checkpoint 3 here; the gold reward and iterated rounds need the host) name the key, in a line."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", "shakespeare_char.py") + ":smoke")
  config_lib.apply_overrides(config, overrides)
  with pytest.raises(UserError, match=f"'{key}'") as e:
    config_lib.finalize(config)
  assert "\n" not in str(e.value)


def test_sft_error_rate_sweep_reports_spreads_over_seeds(toyworld_smoke, tmp_path):
  """The smoke sweep of ablations/sft_error_rate.py: a row per error rate, each SFT run holding 2 replicas,
  with a `/seed_std` column after every column the seeds measure (not after the demonstrators' score)."""
  path = os.path.join(ROOT, "experiments", "ablations", "sft_error_rate.py")
  argv = [f"{path}:smoke", "--workdir", str(tmp_path), BATCH, f"--config.init_from={toyworld_smoke['pretrain'][0]}"]
  assert sweep.main(argv) == 0
  with open(tmp_path / "results.csv") as f:
    reader = csv.DictReader(f)
    rows, columns = list(reader), reader.fieldnames
  assert [row["run"] for row in rows] == ["error_0.0", "error_0.2", "error_0.4"]
  assert columns[1:5] == ["eval/gold/all", "eval/gold/all/seed_std", "demonstrator/all",
                          "eval/gold/end_of_turn_rate"]
  assert "eval/loss/seed_std" in columns and "demonstrator/all/seed_std" not in columns
  for row in rows:
    assert json.load(open(tmp_path / row["run"] / "config.json"))["train"]["seeds"] == 2
    assert float(row["eval/gold/all/seed_std"]) >= 0 and float(row["eval/loss/seed_std"]) > 0
  assert float(rows[0]["demonstrator/all"]) == 1.0  # Error rate 0: the demonstrators are perfect.
  assert (tmp_path / "results.png").stat().st_size > 0


def test_table_rows_put_each_spread_next_to_its_mean():
  """A sweep mixing runs of one seed and of several: every row gets the `/seed_std` column (NaN where a run
  had one seed), right after its mean; a column no run measured over seeds gets none; a run without the
  first column is no row."""
  summaries = [("one", {"a": 1.0, "b": 2.0, "wall_time_s": 3.0}),
               ("four", {"a": 1.5, "a/seed_std": 0.1, "b": 2.5, "wall_time_s": 4.0}),
               ("data", {"b": 0.0})]
  rows = sweep.table_rows(summaries, ("a", "b"))
  assert [list(row) for row in rows] == [["run", "a", "a/seed_std", "b", "wall_time_s"]] * 2
  assert np.isnan(rows[0]["a/seed_std"]) and rows[1]["a/seed_std"] == 0.1 and rows[1]["b"] == 2.5
