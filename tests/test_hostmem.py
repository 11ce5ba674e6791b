"""rlhf_jax.hostmem: importing the package keeps the scratch memory XLA frees after a call mapped, so the next
call does not fault its pages in again; RLHF_JAX_KEEP_FREED_MEMORY=0 leaves glibc's defaults (the faults)."""

import json
import os
import subprocess
import sys

import pytest

# A program whose scratch buffer (float32 intermediates of 128 MB each, kept apart by optimization barriers;
# the output a scalar) is far above glibc's largest mmap threshold (32 MB) and a thread arena's heap (64 MB):
# by default each call maps it afresh and faults every page of it in. Kept, a call faults pages in only when
# the heap has to grow (the freed blocks do not fit yet, which happens a few times before the heap settles).
_PROBE = r"""
import ctypes, json, resource
import rlhf_jax
import jax, jax.numpy as jnp
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
x = jnp.ones((8192, 4096), jnp.float32)
@jax.jit
def f(x):
  ys = [jax.lax.optimization_barrier(jnp.tanh(x * (i + 1.0))) for i in range(4)]
  return sum(jnp.sum(y * ys[0]) for y in ys)
f(x).block_until_ready()
calls = []
for _ in range(16):
  faults, top = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, libc.sbrk(0)
  f(x).block_until_ready()
  calls.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, libc.sbrk(0) - top))
print(json.dumps({"calls": calls, "applied": rlhf_jax._hostmem.keep_freed_memory()}))
"""


def _calls(keep: bool) -> dict:
  env = {**os.environ, "RLHF_JAX_KEEP_FREED_MEMORY": "1" if keep else "0", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # One device, as a training run on a CPU host has.
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_scratch_memory_is_reused_without_page_faults():
  kept, default = _calls(keep=True), _calls(keep=False)
  assert kept["applied"] and not default["applied"]
  page = os.sysconf("SC_PAGE_SIZE")
  # By default every call faults its 128 MB scratch buffer in again.
  assert all(faults * page >= 128 * 2**20 for faults, _ in default["calls"]), default
  # Kept, a call faults in no more than the heap grew by (plus 1 MB of slack): freed memory is reused, and
  # new pages are touched only while the heap grows to hold what fragmentation leaves (for the toyworld
  # pretraining step it settles at 1.8 GB within 100 steps); some calls fault nothing at all.
  assert all(faults * page <= growth + 2**20 for faults, growth in kept["calls"]), kept
  assert any(faults == 0 for faults, _ in kept["calls"]), kept
