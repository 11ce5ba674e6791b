"""The training loop as a user meets it: killed and resumed, preempted, diverging, re-run when finished.

These run the real CLI on the Shakespeare smoke config over a small generated text file; the last calls the
loop directly, with a state of one number, for calls of several steps (`LoopConfig.steps_per_call`).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from rlhf_jax import main as main_lib
from rlhf_jax.train.checkpoint import Checkpointer
from rlhf_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "shakespeare_char.py") + ":smoke"


def _args(workdir, text_file, *extra):
  # Batch 8: in-process runs see the 8 fake devices of conftest, and the batch must split over them.
  return ["--config", EXPERIMENT, "--workdir", str(workdir), f"--config.data.path={text_file}",
          "--config.train.batch_size=8", *extra]


def _command(workdir, text_file, *extra):
  return [sys.executable, "-m", "rlhf_jax.main", *_args(workdir, text_file, *extra)]


def _final_params(workdir):
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = checkpoints.latest_step()
  meta = checkpoints._manager.item_metadata(step)["state"]
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta["params"])
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  params = checkpoints.restore_params(step, abstract, shardings)
  checkpoints.close()
  return step, jax.device_get(params)


def _wait_for_step(workdir, proc, step, timeout=180):
  deadline = time.time() + timeout
  while time.time() < deadline:
    rows = read_metrics(str(workdir)) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    if rows and rows[-1]["step"] >= step:
      return rows[-1]["step"]
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.01)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def _committed(workdir):
  """The latest checkpoint step orbax has finished writing (its directory is renamed into place)."""
  directory = os.path.join(workdir, "checkpoints")
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()] if os.path.isdir(directory) else []
  return max(steps, default=None)


# Long enough (about 0.1 s a step) that a signal lands mid-run; a checkpoint every 5 steps.
SLOW = ("--config.train.steps=40", "--config.train.log_every=1", "--config.train.checkpoint_every=5",
        "--config.train.eval_every=40", "--config.train.batch_size=32", "--config.model.d_model=64",
        "--config.model.d_ff=256")


# The step the SIGKILL test aims at is drawn from this seed (default 0): a failure names its seed and step, and
# RLHF_JAX_TEST_KILL_SEED=N reruns that draw (the step the kill lands on also depends on timing).
KILL_SEED = int(os.environ.get("RLHF_JAX_TEST_KILL_SEED", "0"))


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, text_file):
  reference = tmp_path / "reference"
  assert subprocess.run(_command(reference, text_file, *SLOW), capture_output=True, cwd=ROOT).returncode == 0

  killed = tmp_path / "killed"
  kill_at = int(np.random.default_rng(KILL_SEED).integers(7, 33))
  print(f"SIGKILL aimed at step {kill_at} (RLHF_JAX_TEST_KILL_SEED={KILL_SEED})")
  proc = subprocess.Popen(_command(killed, text_file, *SLOW), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
  reached = _wait_for_step(killed, proc, kill_at)
  # Checkpoints are written asynchronously: make sure one has been committed, so the re-run must resume.
  deadline = time.time() + 60
  while _committed(killed) is None and time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  where = (f"killed at step >= {reached} (aimed at {kill_at}, RLHF_JAX_TEST_KILL_SEED={KILL_SEED}), last committed "
           f"checkpoint {_committed(killed)}")
  resumed = subprocess.run(_command(killed, text_file, *SLOW), capture_output=True, text=True, cwd=ROOT)
  assert resumed.returncode == 0, (where, resumed.stderr[-2000:])
  assert "resuming from the checkpoint at step" in resumed.stdout, (where, resumed.stdout[-1000:])

  step_a, params_a = _final_params(reference)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == 40, where
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=where), params_a, params_b)
  # The metrics read as one run: every step logged once.
  steps = [row["step"] for row in read_metrics(str(killed)) if "train/loss" in row]
  assert steps == list(range(1, 41)), where


def test_sigterm_saves_a_checkpoint_at_the_current_step(tmp_path, text_file):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_command(workdir, text_file, *SLOW), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
  _wait_for_step(workdir, proc, 7)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  message = err.strip().splitlines()[-1]
  assert message.startswith("stopped by SIGTERM at step ") and "Re-run the same command" in message
  stopped_at = int(message.split("at step ")[1].split(";")[0])
  assert 7 <= stopped_at < 40
  assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == stopped_at
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, text_file, capsys):
  workdir = tmp_path / "run"
  code = main_lib.main(_args(workdir, text_file, "--config.optim.lr=1e9", "--config.optim.grad_clip=0",
                             "--config.optim.warmup_steps=0", "--config.train.steps=30",
                             "--config.train.checkpoint_every=1", "--config.train.log_every=1"))
  # stderr also carries the progress bar; the error is one line, the last.
  err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
  errors = [line for line in err if line.startswith("error: ")]
  assert code == 2 and errors == [err[-1]] and "loss is" in err[-1] and "is intact" in err[-1]
  diverged_at = int(err[-1].split("in steps ")[1].split("..")[1].split(";")[0])
  step, params = _final_params(workdir)
  assert step < diverged_at
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert all(row["train/loss"] is not None for row in read_metrics(str(workdir)) if "train/loss" in row)


def test_a_finished_run_is_not_redone(tmp_path, text_file, capsys):
  workdir = tmp_path / "run"
  assert main_lib.main(_args(workdir, text_file)) == 0
  files = {name: os.path.getmtime(os.path.join(workdir, name)) for name in ("metrics.jsonl", "summary.json")}
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  capsys.readouterr()
  assert main_lib.main(_args(workdir, text_file)) == 0
  assert "already finished" in capsys.readouterr().out
  assert files == {name: os.path.getmtime(os.path.join(workdir, name)) for name in files}
  assert json.load(open(os.path.join(workdir, "summary.json"))) == summary
  for name in ("config.json", "tokenizer.json", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name))


def _counting_loop(workdir, per_call: int, total: int, checkpoint_every: int):
  """The loop over a one-number state: step i reads x = i and adds it (a call of K steps, K x's at once);
  the logged loss is x."""
  import grain
  from rlhf_jax import mesh as mesh_lib
  from rlhf_jax.config import mesh_config
  from rlhf_jax.train.loop import LoopConfig, train_loop
  mesh = mesh_lib.make_mesh(mesh_config(), jax.devices()[:1])
  shardings = {"w": mesh_lib.replicated(mesh)}
  state = jax.device_put({"w": np.float32(0)}, shardings)
  data = iter(grain.MapDataset.range(1000).map(lambda i: {"x": np.float32(i)}).to_iter_dataset())
  step = lambda state, batch, rng: ({"w": state["w"] + batch["x"].sum()}, {"train/loss": batch["x"]})
  loop = LoopConfig(total_steps=total, log_every=4, eval_every=total, checkpoint_every=checkpoint_every,
                    tokens_per_step=1, steps_per_call=per_call)
  return train_loop(loop, workdir=str(workdir), state=state, shardings=shardings, step_fn=step,
                    rng=jax.random.PRNGKey(0), data=data, make_batch=lambda rows: jax.tree.map(np.asarray, rows))


def test_calls_of_k_steps_see_the_same_batches_and_log_at_the_same_steps(tmp_path):
  """LoopConfig.steps_per_call K (the compiled PPO iteration's K iterations a call): each call gets the K next
  batches stacked and returns K steps' metrics; the state, the logged steps and their means are those of a
  loop of one step a call. A checkpoint at a step K does not divide is refused by name."""
  from rlhf_jax.errors import UserError
  one_state, _ = _counting_loop(tmp_path / "one", per_call=1, total=8, checkpoint_every=4)
  two_state, _ = _counting_loop(tmp_path / "two", per_call=2, total=8, checkpoint_every=4)
  assert float(one_state["w"]) == float(two_state["w"]) == sum(range(8))
  logged = lambda name: [(r["step"], r["train/loss"]) for r in read_metrics(str(tmp_path / name)) if "train/loss" in r]
  assert logged("two") == [(4, 1.5), (8, 5.5)]  # Steps 1-4 read x = 0..3; 5-8 read 4..7.
  assert logged("one") == logged("two")
  # The K axis is steps, not seeds: no spread over "replicas" is logged.
  assert not any("train/loss/seed_std" in r for r in read_metrics(str(tmp_path / "two")))
  _counting_loop(tmp_path / "odd", per_call=1, total=3, checkpoint_every=3)
  try:
    _counting_loop(tmp_path / "odd", per_call=2, total=8, checkpoint_every=4)
  except UserError as e:
    assert "step 3" in str(e) and "multiple" in str(e) and "\n" not in str(e)
  else:
    raise AssertionError("a checkpoint at step 3 was resumed with 2 steps a call")
