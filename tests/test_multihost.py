"""Two processes on localhost (jax.distributed, 2 CPU devices each) run a sharded train step and get the
single-process losses."""

import json
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from multihost_common import build, global_batch
from rlhf_jax import mesh as mesh_lib

HERE = os.path.dirname(__file__)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two(command, env, timeout, cwd=None) -> list[str]:
  """Starts `command(i)` for processes i = 0, 1 together, waits for both, asserts each exited 0 (with its
  stderr's tail), and returns their stdouts."""
  procs = [subprocess.Popen(command(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
    finally:
      p.kill()
    assert p.returncode == 0, err[-3000:]
    outputs.append(out)
  return outputs


def test_two_processes_match_one_process():
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  outs = _run_two(lambda i: [sys.executable, os.path.join(HERE, "multihost_worker.py"), str(port), str(i)], env,
                  timeout=240)
  outputs = [json.loads(out.strip().splitlines()[-1]) for out in outs]

  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  state, step = build(mesh)
  reference = []
  for i in range(2):
    state, metrics = step(state, mesh_lib.shard_batch(global_batch(i), mesh), jax.random.PRNGKey(1))
    reference.append(float(metrics["train/loss"]))
  for out in outputs:
    np.testing.assert_allclose(out["losses"], reference, atol=1e-5)
  # The second step's loss depends on the first update: a wrong gradient all-reduce would show here.
  assert reference[0] != reference[1]


SWEEP_FILE = '''
import os
from rlhf_jax.config import load_module
pretrain = load_module(os.path.join({root!r}, "experiments", "toyworld_pretrain.py"))
COLUMNS = ("eval/loss",)

def sweep(arg, workdir):
  runs = []
  for seed in (0, 1):
    config = pretrain.get_config("smoke")
    config.seed, config.data.tokenizer = seed, "char"
    runs.append((f"seed_{{seed}}", config))
  return runs
'''


def test_two_process_sweep_of_two_runs(tmp_path):
  """`python -m rlhf_jax.sweep` on two processes (jax.distributed on localhost, one CPU device each): both
  runs finish on both processes -- jax.distributed is started once, not once a run -- each run has one
  config.json, and the held-out loss covers the whole validation split (every process evaluates the same
  global batches and feeds its half), the same token count as one process evaluating alone."""
  root = os.path.dirname(HERE)
  ablation = tmp_path / "two_seeds.py"
  ablation.write_text(SWEEP_FILE.format(root=root))
  port = _free_port()
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
  command = lambda i: [sys.executable, "-m", "rlhf_jax.sweep", str(ablation), "--workdir", str(tmp_path / "out"),
                       f"--config.mesh.coordinator_address=127.0.0.1:{port}", "--config.mesh.num_processes=2",
                       f"--config.mesh.process_id={i}"]
  _run_two(command, env, timeout=300, cwd=root)
  for seed in (0, 1):
    run = tmp_path / "out" / f"seed_{seed}"
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == seed and config["mesh"]["num_processes"] == 2
    assert not [f for f in os.listdir(run) if f.startswith("config.json.")]  # No stray temporary copies.
  rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
  assert [row.split(",")[0] for row in rows[1:]] == ["seed_0", "seed_1"]

  single = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config",
                           os.path.join(root, "experiments", "toyworld_pretrain.py:smoke"), "--workdir",
                           str(tmp_path / "single"), "--config.data.tokenizer=char"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  tokens = lambda run: json.loads((run / "summary.json").read_text())["eval/tokens"]
  assert tokens(tmp_path / "out" / "seed_0") == tokens(tmp_path / "single") > 0
