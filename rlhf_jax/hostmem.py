"""Host memory: keep the memory freed between XLA CPU calls mapped, instead of giving it back to the kernel.

XLA's CPU runtime allocates each call's scratch buffer ("preallocated temp": 364 MB for a toyworld pretraining
step, B 32 x T 128) with `posix_memalign` from one of its worker threads, and frees it when the call ends.
glibc serves a request that large from a thread's arena with a fresh `mmap` (a thread arena's heaps are at
most 64 MB) and returns it with `munmap`, so every call writes into newly mapped pages: 93,000 minor page
faults and 0.15-0.22 s of kernel time in a 0.33-0.44 s toyworld pretraining step on a 2-core Xeon
(/proc and strace, 2026-12-06). With one arena (the main one, grown by `brk`), no `mmap` for large blocks and
no trimming of the heap's top, the buffer freed by one call is the buffer the next call gets: no faults, no
kernel time: 289 ms a step against 371 ms (`python benchmarks/hostmem.py`, medians of 3 alternating
processes each, alone). The numerics are untouched (the same programs on the same values; only where their
scratch memory comes from changes): the losses agree to the last bit.

`keep_freed_memory()` sets that with glibc's `mallopt`; `rlhf_jax/__init__.py` calls it on import, before
jax starts its CPU client (a thread keeps the arena it first allocated from, so later calls help less).
RLHF_JAX_KEEP_FREED_MEMORY=0 leaves the allocator alone. What it costs: memory. Freed blocks are reused only
where the next request fits, so the heap grows until fragmentation settles and never shrinks: for the toyworld
pretraining step it grew to 1.8 GB within 100 steps and stayed there (400 steps), a peak resident set of
2.2 GB against 0.83 GB with glibc's defaults (/work/runs/s19/growth.py). Turn it off for a model whose
scratch buffer is a large share of the machine's memory. All threads share one arena's lock, which XLA's
compute threads, allocating per call and not per operation, do not contend for.
Other C libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_ENV = "RLHF_JAX_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
  """One malloc arena, no mmap'd blocks, no heap trimming below 2 GiB (glibc on Linux only; see the module
  docstring). Returns whether the settings were applied; safe to call more than once."""
  if os.environ.get(_ENV, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc's own symbol: the parameter numbers below are glibc's.
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
