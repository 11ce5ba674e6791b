"""Test set-up: 8 fake CPU devices for the sharding tests (must be set before jax is first imported), and
small model configs shared by the tests."""

import os

# RLHF_JAX_TEST_DEVICES=1 runs the full-size (slow) experiments on one device, as they are configured.
DEVICES = int(os.environ.get("RLHF_JAX_TEST_DEVICES", "8"))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The command line's own compilation cache (rlhf_jax/compile_cache.py) stays off in the tests and in the
# processes they start: nothing is written under the home directory, and no test reads another run's programs.
os.environ["RLHF_JAX_COMPILE_CACHE"] = "0"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlhf_jax.config import model_config  # noqa: E402
from rlhf_jax.model.transformer import TransformerConfig  # noqa: E402

# One persistent XLA compilation cache for this process's session: the suite launches the same smoke stages
# many times, and each launch builds fresh jitted functions that would otherwise compile the same programs
# again. A new directory per session, so nothing outlives the run; every program is cached, however quick its
# compile. Set here rather than in the environment, so the processes a test starts (the two-process runs)
# do not share it: JAX writes cache files without a lock. Tests that check that nothing compiles count cache
# hits as compiles (test_sharded_steps._no_compilation).
if not jax.config.jax_compilation_cache_dir:
  import atexit
  import shutil
  import tempfile
  _XLA_CACHE = tempfile.mkdtemp(prefix="rlhf_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def tiny_model(family: str = "gpt2", **overrides) -> TransformerConfig:
  """A 2-layer, 32-wide model of either family (Llama with grouped-query attention)."""
  defaults = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=48,
                  n_kv_heads=2 if family == "llama" else 4)
  defaults.update(overrides)
  return TransformerConfig.from_config(model_config(family, **defaults))


@pytest.fixture(params=["gpt2", "llama"])
def family(request):
  return request.param


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = "--config.train.batch_size=8"  # Splits over the 8 fake devices.


def run_smoke(experiment, workdir, *extra):
  """Runs `experiments/EXPERIMENT:smoke` in-process as the CLI would; returns its summary."""
  import json

  from rlhf_jax import main as main_lib
  argv = ["--config", os.path.join(ROOT, "experiments", experiment) + ":smoke", "--workdir", str(workdir), BATCH,
          *extra]
  assert main_lib.main(argv) == 0
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def run_preempted(monkeypatch, argv, step=2, key="train/loss"):
  """Runs the command line `argv` in-process with a SIGTERM sent as soon as the metrics of `step` holding `key`
  are written (the loop stops after the step it is in); returns its exit code, MetricsWriter restored."""
  import signal

  from rlhf_jax import main as main_lib
  from rlhf_jax.train.metrics import MetricsWriter
  original = MetricsWriter.write

  def write_then_preempt(self, logged_step, metrics):
    original(self, logged_step, metrics)
    if logged_step == step and key in metrics:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(MetricsWriter, "write", write_then_preempt)
  try:
    return main_lib.main(argv)
  finally:
    monkeypatch.setattr(MetricsWriter, "write", original)


def checkpoint_state(workdir):
  """(step, the state of a run's latest checkpoint as host arrays), restored onto one device whatever mesh
  saved it: what resume tests compare to the last bit."""
  import jax
  import orbax.checkpoint as ocp

  from rlhf_jax.train.checkpoint import Checkpointer
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = checkpoints.latest_step()
  meta = checkpoints._manager.item_metadata(step)["state"]
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored = checkpoints._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=abstract, restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract))))
  checkpoints.close()
  return step, jax.device_get(restored["state"])


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
  """A small text file of random words: the Shakespeare smoke runs' data."""
  rng = np.random.default_rng(0)
  words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "mind"]
  lines = [" ".join(rng.choice(words, size=8)) for _ in range(600)]
  path = tmp_path_factory.mktemp("text") / "tiny.txt"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


@pytest.fixture(scope="session")
def toyworld_smoke(tmp_path_factory):
  """The smoke toyworld pretraining and SFT runs, made once per session: {"pretrain": (dir, summary),
  "sft": (dir, summary)}. Later stages start from them; nobody may write into them."""
  base = tmp_path_factory.mktemp("toyworld")
  pretrain, sft = base / "pretrain", base / "sft"
  return {"pretrain": (pretrain, run_smoke("toyworld_pretrain.py", pretrain)),
          "sft": (sft, run_smoke("toyworld_sft.py", sft, f"--config.init_from={pretrain}"))}


@pytest.fixture(scope="session")
def toyworld_reward_smoke(toyworld_smoke, tmp_path_factory):
  """The smoke reward run on the smoke SFT model, made once per session: (dir, summary, its extra args)."""
  workdir = tmp_path_factory.mktemp("reward") / "reward"
  extra = (f"--config.init_from={toyworld_smoke['sft'][0]}",)
  return workdir, run_smoke("toyworld_reward.py", workdir, *extra), extra


@pytest.fixture(scope="session")
def toyworld_ppo_smoke(toyworld_smoke, toyworld_reward_smoke, tmp_path_factory):
  """The smoke PPO run from the smoke SFT and reward runs, made once per session: (dir, summary)."""
  workdir = tmp_path_factory.mktemp("ppo_session") / "ppo"
  return workdir, run_smoke("toyworld_ppo.py", workdir, f"--config.init_from={toyworld_smoke['sft'][0]}",
                            f"--config.ppo.reward_from={toyworld_reward_smoke[0]}")
