"""The one metrics writer: `metrics.jsonl` and TensorBoard event files in the workdir, written by process 0.

Keys are slash-namespaced (`train/loss`, `eval/loss`, `perf/tokens_per_s`); one JSON object per logged step,
`{"step": N, ...}`. When a run resumes from a checkpoint at step S, rows after S (logged before the crash,
then lost with the state) are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Optional

import jax

METRICS_FILE = "metrics.jsonl"


def _plain(value):
  if isinstance(value, (list, tuple)):  # One value per seed (`train.seeds`).
    return [_plain(v) for v in value]
  value = float(value) if not isinstance(value, (int, str, bool)) else value
  return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends metric rows; `resume_step` truncates rows logged after the checkpoint being resumed."""

  def __init__(self, workdir: str, resume_step: Optional[int] = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      rows = [row for row in read_metrics(workdir) if row.get("step", 0) <= resume_step]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
      os.replace(tmp, self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # Writes event files without TensorFlow.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled or not metrics:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in sorted(metrics.items())}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
