"""Re-runs against an existing workdir, as a user makes them: with a config that is refused, with a damaged
checkpoint, after a lost summary, and stopped by SIGTERM. Each case runs the real command line (in-process) on
a copy of one finished toyworld pretraining smoke run, and checks the one line it prints, its exit status and
the workdir's files byte for byte before and after.
"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from rlhf_jax import main as main_lib
from rlhf_jax.stages import pretrain
from rlhf_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "experiments", "toyworld_pretrain.py") + ":smoke"  # 6 steps, checkpoints 3 and 6.
SFT = os.path.join(ROOT, "experiments", "toyworld_sft.py") + ":smoke"
BATCH = "--config.train.batch_size=8"  # Splits over conftest's 8 fake devices.
TIMING = ("wall_time_s", "steps_per_s")  # The only summary figures a re-run may change.


def _run(workdir, *extra, spec=PRETRAIN) -> int:
  return main_lib.main(["--config", spec, "--workdir", str(workdir), BATCH, *extra])


def _files(directory) -> dict:
  """Every file under `directory`, by relative path, with its bytes."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def _stderr_lines(capsys) -> list:
  """stderr's lines without the progress bar's redraws, which also go to stderr."""
  err = capsys.readouterr().err
  assert "Traceback" not in err, err
  return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("pretrain")]


def _one_error(capsys) -> str:
  lines = _stderr_lines(capsys)
  errors = [line for line in lines if line.startswith("error: ")]
  assert errors == lines[-1:] and len(errors) == 1, lines
  return errors[0]


def _params(workdir, step=None):
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = step or checkpoints.latest_step()
  meta = checkpoints._manager.item_metadata(step)["state"]
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta["params"])
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  params = checkpoints.restore_params(step, abstract, shardings)
  checkpoints.close()
  return jax.device_get(params)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One finished pretraining smoke run: (workdir, its summary, its final params). Tests work on copies."""
  workdir = tmp_path_factory.mktemp("finished") / "pretrain"
  assert _run(workdir) == 0
  return workdir, json.loads((workdir / "summary.json").read_text()), _params(workdir)


@pytest.fixture
def copy(finished, tmp_path):
  workdir = tmp_path / "pretrain"
  shutil.copytree(finished[0], workdir)
  return workdir


def _damage(step_dir, kind: str) -> None:
  """What a full disk, an interrupted copy or a stray `rm` leave behind in one step's directory."""
  state = os.path.join(step_dir, "state")
  if kind == "truncated":  # Every data file of the arrays' store cut to half its length.
    for root, _, names in os.walk(state):
      for name in names if os.path.basename(root) == "d" else ():
        path = os.path.join(root, name)
        os.truncate(path, os.path.getsize(path) // 2)
  elif kind == "metadata missing":
    os.remove(os.path.join(state, "_METADATA"))
  elif kind == "manifest damaged":
    with open(os.path.join(state, "manifest.ocdbt"), "wb") as f:
      f.write(b"garbage")
  elif kind == "empty step directory":
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)


# What the warning or error line says of each kind of damage. A cut data file shows wherever tensorstore first
# reads past its end: the b-tree when listing the arrays, or an array's value.
DAMAGE = {
    "truncated": ("state/: ", "OUT_OF_RANGE", "is not valid for value of size"),
    "metadata missing": ("state/_METADATA is missing",),
    "manifest damaged": ('state/: cannot list its arrays (DATA_LOSS: Error decoding file "manifest.ocdbt": '
                         "Error decoding manifest",),
    "empty step directory": ("the step directory is empty",),
}


# Re-runs with a config that does not fit the run in the workdir: (overrides, what the error line says).
REFUSED = {
    "wider model": (("--config.model.d_model=64",),
                    "checkpoints/6: ['params']['embed']['embedding'] has shape (400, 32) in the checkpoint but "
                    "(400, 64) in the config"),
    "more layers": (("--config.model.n_layers=3",),
                    "checkpoints/6: checkpoint has no entry ['params']['layers_2']"),
    "other architecture": (("--config.model.position=rope", "--config.model.norm=rmsnorm",
                            "--config.model.mlp=gated", "--config.model.activation=silu",
                            "--config.model.use_bias=false", "--config.model.tie_embeddings=false"),
                           "checkpoints/6: checkpoint has no entry ['params']['layers_0']['mlp']['down']['kernel']; "
                           "it was written by a different model or optimizer config"),
    "data file missing": (("--config.data.source=text", "--config.data.path={tmp}/nope.jsonl"),
                          "nope.jsonl: cannot open: No such file or directory"),
    "data file malformed": (("--config.data.source=text", "--config.data.path={tmp}/bad.jsonl"),
                            "bad.jsonl:2: bad JSON"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_rerun_leaves_the_workdir_as_it_was(copy, tmp_path, capsys, case):
  overrides, says = REFUSED[case]
  (tmp_path / "bad.jsonl").write_text('{"text": "a document"}\n{"text": \n')
  before = _files(copy)
  assert _run(copy, *[o.format(tmp=tmp_path) for o in overrides]) == 2
  assert says in _one_error(capsys)
  assert _files(copy) == before  # config.json included: it still records the run that ran.


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_checkpoint_is_skipped(finished, copy, capsys, kind):
  """The run resumes from step 3, says why step 6 was skipped, and ends with the uninterrupted run's params."""
  _damage(copy / "checkpoints" / "6", kind)
  damaged = _files(copy / "checkpoints" / "6")
  capsys.readouterr()
  assert _run(copy) == 0
  lines = _stderr_lines(capsys)
  warnings = [line for line in lines if line.startswith("warning: ")]
  assert len(warnings) == 1 and warnings[0].startswith(f"warning: {copy}/checkpoints/6: damaged checkpoint: "), lines
  assert all(says in warnings[0] for says in DAMAGE[kind])
  assert warnings[0].endswith(f"; resuming from step 3, the newest intact one (the damaged directory is kept as "
                              f"{copy}/checkpoints/6.damaged)")
  assert _files(copy / "checkpoints" / "6.damaged") == damaged  # Set aside as it was, not deleted.
  jax.tree.map(np.testing.assert_array_equal, _params(copy, 6), finished[2])
  summary = json.loads((copy / "summary.json").read_text())
  assert {k: v for k, v in summary.items() if k not in TIMING and not k.startswith("perf/")} == {
      k: v for k, v in finished[1].items() if k not in TIMING and not k.startswith("perf/")}


def test_no_intact_checkpoint_is_one_error(copy, capsys):
  _damage(copy / "checkpoints" / "6", "truncated")
  _damage(copy / "checkpoints" / "3", "metadata missing")
  before = _files(copy)
  assert _run(copy) == 2
  error = _one_error(capsys)
  assert error.startswith(f"error: {copy}/checkpoints: no intact checkpoint to resume from (step 6: ")
  assert "step 3: state/_METADATA is missing); move the directory away to start this run afresh" in error
  assert _files(copy) == before


@pytest.mark.parametrize("kind", DAMAGE)
def test_init_from_a_damaged_checkpoint_is_one_error(copy, tmp_path, capsys, kind):
  _damage(copy / "checkpoints" / "6", kind)
  before = _files(copy)
  sft = tmp_path / "sft"
  assert _run(sft, f"--config.init_from={copy}", spec=SFT) == 2
  error = _one_error(capsys)
  assert error.startswith(f"error: {copy}/checkpoints/6: damaged checkpoint: {DAMAGE[kind][0]}"), error
  assert all(says in error for says in DAMAGE[kind])
  assert error.endswith(f"it holds the final model of {copy}: re-run the command that wrote {copy} and it resumes "
                        "from step 3, the newest intact one")
  assert _files(copy) == before and not sft.exists()


def test_a_lost_summary_is_written_again_with_the_same_figures(finished, copy, capsys):
  os.remove(copy / "summary.json")
  before = _files(copy)
  assert _run(copy) == 0
  assert "finished at step 6, but" in capsys.readouterr().out
  summary = json.loads((copy / "summary.json").read_text())
  assert "eval/loss" in summary and "train/loss" in summary
  assert {k: v for k, v in summary.items() if k not in TIMING} == {
      k: v for k, v in finished[1].items() if k not in TIMING}
  # Nothing else changes but TensorBoard's new event file (each writer opens one).
  after = {k: v for k, v in _files(copy).items() if not k.startswith("tensorboard")}
  assert after == {**{k: v for k, v in before.items() if not k.startswith("tensorboard")},
                   "summary.json": (copy / "summary.json").read_bytes()}


def test_sigterm_during_the_final_evaluation_exits_143(finished, copy, capsys, monkeypatch):
  """Killed during the last step's evaluation, a run exits 143 with its checkpoint saved and no summary; the
  re-run writes the summary the uninterrupted run wrote."""
  shutil.rmtree(copy / "checkpoints" / "6")  # The run resumes at step 3: its last evaluation is after step 6.
  os.remove(copy / "summary.json")
  original = pretrain.make_lm_evaluator

  def signalled(*args, **kwargs):
    evaluate = original(*args, **kwargs)

    def evaluate_and_signal(state):
      os.kill(os.getpid(), signal.SIGTERM)
      return evaluate(state)
    return evaluate_and_signal

  monkeypatch.setattr(pretrain, "make_lm_evaluator", signalled)
  assert _run(copy) == 128 + signal.SIGTERM
  lines = _stderr_lines(capsys)
  assert lines[-1] == "stopped by SIGTERM at step 6; checkpoint saved. Re-run the same command to resume.", lines
  assert Checkpointer(os.path.join(copy, "checkpoints")).latest_step() == 6
  assert not (copy / "summary.json").exists()
  monkeypatch.setattr(pretrain, "make_lm_evaluator", original)
  assert _run(copy) == 0
  summary = json.loads((copy / "summary.json").read_text())
  assert {k: v for k, v in summary.items() if k not in TIMING and not k.startswith("perf/")} == {
      k: v for k, v in finished[1].items() if k not in TIMING and not k.startswith("perf/")}


def test_sigterm_before_training_exits_143_and_writes_nothing(copy, capsys, monkeypatch):
  original = pretrain.load_documents

  def signalled(config):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(config)

  monkeypatch.setattr(pretrain, "load_documents", signalled)
  os.remove(copy / "summary.json")
  before = _files(copy)
  assert _run(copy) == 128 + signal.SIGTERM
  assert _stderr_lines(capsys) == ["stopped by SIGTERM outside the training loop; the workdir's checkpoints are "
                                   "intact. Re-run the same command to resume."]
  assert _files(copy) == before
