"""XLA's persistent compilation cache for the command line: a program compiled once is read back, not compiled
again, by every later run on the machine.

Every run of a command compiles all of its programs afresh: in the quickstart (world 0, 2026-12-06, alone on
a 2-core Xeon) XLA's backend compiled for 41 s, tracing and lowering took 12 s more, and a py-spy profile put
57 s of the main thread in them. With this cache, a second run of the same command read back the 15
programs that had taken over a second to compile (3.5 MB on disk; other commands reuse whichever programs
they share with earlier runs): backend compilation 6.9 s, plus 3.0 s reading; 645 s wall against the
first run's 736 s, at matmul peaks of 312-321 against 267-353 GFLOP/s; the smoke variant 22 s against 64 s.
Within one run no program repeats (each stage's distinct programs compile once, in memory), so a first run
gains nothing.

`enable()` points JAX's persistent cache (`jax_compilation_cache_dir`) at RLHF_JAX_COMPILE_CACHE, by default
$XDG_CACHE_HOME/rlhf_jax/xla (~/.cache/rlhf_jax/xla); RLHF_JAX_COMPILE_CACHE=0 turns it off. It leaves a
cache directory that is already set alone (JAX_COMPILATION_CACHE_DIR, or a notebook's own setting). Programs
whose compilation took under `jax_persistent_cache_min_compile_time_secs` (JAX's default, 1 s) are not
written. The directory is capped at CAP_BYTES with least-recently-used eviction, which makes JAX take a file
lock around every read and write (the `filelock` package): runs started side by side may share one cache.
JAX keys an entry by the program, the compile options, XLA's flags and the versions of jax and jaxlib, so an
entry is only read by an identical compilation and the results do not change: both quickstart runs above
gave the same figures to every digit.

`main`, `sweep` and `evaluate` call it; a library user (a notebook) calls it or sets JAX's option directly.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "RLHF_JAX_COMPILE_CACHE"
CAP_BYTES = 4 << 30  # 4 GiB; the quickstart writes 3.5 MB.


def default_directory() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "rlhf_jax", "xla")


def directory_from_environment() -> Optional[str]:
  """The cache directory RLHF_JAX_COMPILE_CACHE names (unset or empty: `default_directory()`), or None when it
  is 0 / off / false / no."""
  value = os.environ.get(ENV, "").strip()
  if value.lower() in ("0", "off", "false", "no"):
    return None
  return os.path.expanduser(value) if value else default_directory()


def enable(directory: Optional[str] = None) -> Optional[str]:
  """Turns on JAX's persistent compilation cache in `directory` (default: `directory_from_environment()`)
  unless a cache directory is set already. Returns the directory in use, or None when there is none.
  Call it before the first compilation: JAX opens the cache once."""
  import jax

  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  directory = directory or directory_from_environment()
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:  # A read-only home, say: run without the cache rather than not at all.
    print(f"warning: compilation cache off: cannot create {directory} ({e.strerror}); set {ENV} to a "
          f"writable directory or to 0", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_max_size", CAP_BYTES)
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory
