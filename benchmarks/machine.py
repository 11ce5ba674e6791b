"""What the benchmarks need to know about the machine they share: which CPU it is and how busy the other
processes keep it."""

import os
import resource
import time


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
