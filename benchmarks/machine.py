"""What the benchmarks need to know about the machine they share: which CPU it is, how busy the other
processes keep it, and how fast it streams memory (its float32 matmul peak: train_step.py)."""

import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp


class ForeignLoad:
  """Cores that other processes kept busy since construction: /proc/stat's busy time minus our own.

  The machine has 2 cores and is shared; a neighbour running one thread halves our rate, so every timing
  says how much of the machine it had. None where /proc/stat does not exist.
  """

  def __init__(self):
    self._start = self._sample()

  @staticmethod
  def _sample():
    try:
      with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal, less idle and iowait (guest is inside user).
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime, time.perf_counter()

  def cores(self):
    end = self._sample()
    if self._start is None or end is None:
      return None
    (busy0, ours0, t0), (busy1, ours1, t1) = self._start, end
    return max((busy1 - busy0) - (ours1 - ours0), 0.0) / max(t1 - t0, 1e-9)


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo ("unknown CPU" elsewhere): results differ between machines."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
  except OSError:
    return "unknown CPU"


def measure_bandwidth(mib: int = 256, repeats: int = 8) -> dict:
  """Streaming memory bandwidth in bytes/s: a jitted `x + 1` over a float32 array of `mib` MiB, donated so
  that it runs in place (without donation every call writes a fresh buffer and pays its page faults: ~8 GB/s
  instead of ~49 on the Intel Xeon), counted as read once and written once, 2 x `mib` MiB a call. Returns the
  best of `repeats` calls and their median, and the cores other processes used meanwhile. 256 MiB streams as
  fast as 1-2 GiB there (16-64 MiB: up to ~2x faster, from the caches), so it measures main memory."""
  x = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
  step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  x = step(x).block_until_ready()  # Compile, and touch every page.
  times, foreign = [], []
  for _ in range(repeats):
    load = ForeignLoad()
    start = time.perf_counter()
    x = step(x).block_until_ready()
    times.append(time.perf_counter() - start)
    foreign.append(load.cores())
  moved = 2.0 * x.size * 4
  foreign = [f for f in foreign if f is not None]
  result = dict(best=moved / min(times), median=moved / statistics.median(times),
                foreign=statistics.mean(foreign) if foreign else None)
  print(f"  stream x + 1 over {mib} MiB: best {result['best'] / 1e9:5.1f} GB/s, median "
        f"{result['median'] / 1e9:5.1f} over {repeats} calls (read + write)"
        + ("" if result["foreign"] is None else f"; other processes used {result['foreign']:.2f} cores meanwhile"),
        flush=True)
  return result
