"""rlhf_jax.hostmem: importing the package keeps the scratch memory XLA frees after a call mapped, so the next
call does not fault its pages in again; RLHF_JAX_KEEP_FREED_MEMORY=0 leaves glibc's defaults (the faults)."""

import json
import os
import subprocess
import sys

import pytest

# A program whose scratch buffer (about 100 MB of float32 intermediates, the output a scalar) is far above
# glibc's largest mmap threshold (32 MB): by default each call maps it afresh and faults every page of it in.
_PROBE = r"""
import json, resource, sys
import rlhf_jax
import jax, jax.numpy as jnp
x = jnp.ones((2048, 2048), jnp.float32) / 2048
@jax.jit
def f(x):
  ys = [jnp.tanh(x * (i + 1.0)) for i in range(6)]
  return sum(jnp.sum(y @ y) for y in ys)
f(x).block_until_ready(); f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"faults": faults, "applied": rlhf_jax._hostmem.keep_freed_memory()}))
"""


def _faults_per_call(keep: bool) -> dict:
  env = {**os.environ, "RLHF_JAX_KEEP_FREED_MEMORY": "1" if keep else "0", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # One device, as a training run on a CPU host has.
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_scratch_memory_is_reused_without_page_faults():
  kept, default = _faults_per_call(keep=True), _faults_per_call(keep=False)
  assert kept["applied"] and not default["applied"]
  page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
  # By default every call faults its scratch buffer in again (tens of MB: thousands of pages); kept, almost
  # nothing is faulted in after the first calls.
  assert default["faults"] * page_mb > 20, default
  assert kept["faults"] * page_mb < 2, kept
