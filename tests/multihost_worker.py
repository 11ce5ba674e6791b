"""One process of the two-process test in test_multihost.py (not a test module itself).

  python tests/multihost_worker.py PORT PROCESS_ID

Joins a 2-process jax.distributed run on 127.0.0.1 with 2 CPU devices per process, builds a (data=2, fsdp=2)
mesh over the 4 global devices, feeds this process's half of the global batch, runs two train steps and
prints the losses as one JSON line.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from multihost_common import build, global_batch  # noqa: E402
from rlhf_jax import mesh as mesh_lib  # noqa: E402


def main(port: int, process_id: int) -> None:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  assert jax.device_count() == 4 and jax.local_device_count() == 2
  mesh_cfg = dict(data=2, fsdp=2, tensor=1)
  mesh = mesh_lib.make_mesh(mesh_cfg)
  state, step = build(mesh)
  losses = []
  for i in range(2):
    batch = global_batch(i)
    rows = mesh_lib.process_batch_slice(batch.tokens.shape[0])
    local = jax.tree.map(lambda x: x[rows], batch)
    state, metrics = step(state, mesh_lib.shard_batch(local, mesh), jax.random.PRNGKey(1))
    losses.append(float(metrics["train/loss"]))
  print(json.dumps({"process": process_id, "losses": losses}), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]))
