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


def test_two_processes_match_one_process():
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(port), str(i)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=240)
    finally:
      p.kill()
    assert p.returncode == 0, err[-3000:]
    outputs.append(json.loads(out.strip().splitlines()[-1]))

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
