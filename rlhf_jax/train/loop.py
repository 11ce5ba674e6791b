"""The one training loop, shared by pretraining, SFT and the reward model.

  for step in start..total:  batch = next(data); state, metrics = step_fn(state, batch, rng)
    (steps_per_call K > 1: one call per K steps, on the K next batches stacked, its metrics per step)
    every log_every:          average the window's metrics (fetched from the device only now), stop on NaN/inf
    every eval_every:         evaluate(state)
    every checkpoint_every:   save state + data-iterator position (asynchronously)

Resuming: if the workdir has a checkpoint, the state and the data iterator are restored from the newest intact
one (a damaged step is skipped with a warning: train/checkpoint.py) and the loop continues from its step; a
run that already reached `total_steps` and wrote its summary is not redone, and one that reached it but lost
its summary (killed between its last checkpoint and summary.json) runs its final evaluation again and writes
the same summary. Because the step folds the step number into the root key and the data iterator is
restored exactly, a resumed run ends with the same parameters as one that was never interrupted. Nothing is
written into the workdir -- config.json included -- before the checkpoint has been found to fit the config.

Preemption: SIGTERM or SIGINT (TPU VMs are preempted with SIGTERM) finishes the current step, saves a
checkpoint at it and raises `Preempted` -- also when it comes during the last step's evaluation, whose summary
is then left to the re-run; a second SIGINT aborts at once. Divergence: a non-finite loss raises `Diverged`
before any checkpoint of the bad state is written, so the last good checkpoint stays intact.

Seeds: a step over N stacked replicas (`train.seeds`, stages/common.py:train_lm) returns metrics of shape
(N,); the loop logs their means and the loss's spread, `train/loss/seed_std`, and stops if any replica's
loss is not finite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from rlhf_jax import config as config_lib
from rlhf_jax.data.pipelines import stack_rows
from rlhf_jax.errors import Preempted, UserError
from rlhf_jax.train.checkpoint import Checkpointer
from rlhf_jax.train.metrics import MetricsWriter, read_metrics

SUMMARY_FILE = "summary.json"


class Diverged(UserError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass
class LoopConfig:
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  tokens_per_step: int
  keep_checkpoints: int = 2
  desc: str = "train"
  # K > 1: each step_fn call runs K steps (a compiled scan: rl/iteration.py) on the K next batches stacked on
  # a leading axis, and returns metrics with that leading axis; total_steps and the log, evaluation and
  # checkpoint intervals are multiples of K.
  steps_per_call: int = 1


def write_summary(workdir: str, summary: dict) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, SUMMARY_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(_finite(summary), f, indent=2, sort_keys=True, allow_nan=False)
    f.write("\n")
  os.replace(path + ".tmp", path)


def _finite(value):
  """NaN and infinities become null: summary.json stays strict JSON that any parser reads."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def read_summary(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


class _SignalGuard:
  """Turns the first SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    tqdm.write(f"received {signal.Signals(signum).name}: saving a checkpoint after this step "
               "(press Ctrl-C again to abort without saving)")

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. a notebook worker): no signal handling there.
        pass
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def stop_requested(self) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    # Every host must stop at the same step to write one consistent checkpoint.
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and flags.max() > 0:
      self.signum = int(flags.max())
    return bool(flags.max() > 0)


def seed_std(values) -> float:
  """The spread of one figure over the replicas of a `train.seeds` run: the sample standard deviation."""
  values = np.asarray(values, np.float64)
  return float(values.std(ddof=1)) if values.size > 1 else 0.0


def combine_seeds(runs: list[dict]) -> dict:
  """Metrics of N replicas (one dict each) -> each numeric key's mean, `<key>/seed_std` and `<key>/seeds`
  (the N values, in seed order); other values are taken from the first replica."""
  out = {}
  for key, first in runs[0].items():
    if isinstance(first, (int, float, np.number)) and not isinstance(first, bool):
      values = [float(run[key]) for run in runs]
      out[key] = float(np.mean(values))
      out[f"{key}/seed_std"] = seed_std(values)
      out[f"{key}/seeds"] = values
    else:
      out[key] = first
  return out


def _mean_metrics(window: list[dict], steps_per_call: int = 1) -> dict:
  """Averages a window of per-step device metrics (fetched here, once); sums token counts.

  Metrics of a `train.seeds` = N run have shape (N,): each replica's window is reduced alone, then the
  replicas are averaged, and the loss gets its spread over them too (`train/loss/seed_std`). The mean is
  NaN when any replica's loss is, so one diverging replica stops the run. With `steps_per_call` K > 1 each
  entry holds K steps' metrics on a leading axis.
  """
  fetched = jax.device_get(window)
  out = {}
  keys = dict.fromkeys(key for m in fetched for key in m)  # Some metrics come only on some steps.
  for key in keys:
    per_call = [np.asarray(m[key], np.float64) for m in fetched if key in m]
    # (steps,) or (steps, N)
    values = np.concatenate(per_call) if steps_per_call > 1 else np.stack(per_call)
    per_run = values.sum(0) if key.endswith("/tokens") else values.mean(0)
    out[key] = float(np.mean(per_run))
    if per_run.ndim and key == "train/loss":
      out[f"{key}/seed_std"] = seed_std(per_run)
  return out


def _describe(metrics: dict) -> str:
  """The progress line of an evaluation: scalars, with their spread over seeds where there is one."""
  parts = []
  for key, value in metrics.items():
    if isinstance(value, (list, tuple, str)) or key.endswith("/seed_std"):
      continue
    std = metrics.get(f"{key}/seed_std")
    parts.append(f"{key} {value:.4f}" + (f" +- {std:.4f}" if std is not None else ""))
  return ", ".join(parts)


def last_logged(workdir: str, step: int) -> dict:
  """The last training metrics that metrics.jsonl holds at or before `step` (what the loop logged last)."""
  rows = [row for row in read_metrics(workdir) if "train/loss" in row and row.get("step", 0) <= step]
  return {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}


def train_loop(loop: LoopConfig, *, workdir: str, state: Any, shardings: Any, step_fn: Callable,
               rng: jax.Array, data: Iterator, make_batch: Callable[[Any], Any],
               evaluate: Optional[Callable[[Any], dict]] = None, extra_summary: Optional[dict] = None,
               config: Any = None):
  """Runs (or resumes, or skips if finished) a training run. Returns (state, summary).

  `config` (the stage's resolved config) is written to workdir/config.json once the run is known to start:
  after the checkpoint it resumes from, if any, has been read and found to fit -- so a re-run that is refused
  leaves the record of the earlier run as it was."""
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), keep=loop.keep_checkpoints)
  try:
    start, state = checkpoints.restore_latest(state, shardings, data)
  except BaseException:
    checkpoints.close()
    raise
  if start % loop.steps_per_call:
    checkpoints.close()
    raise UserError(f"{loop.desc}: the checkpoint in {checkpoints.directory} is at step {start}, which is not a "
                    f"multiple of the {loop.steps_per_call} steps each call runs (ppo.iterations_per_call); "
                    "resume with the setting the run was started with")
  if start:
    summary = read_summary(workdir)
    if start >= loop.total_steps and summary is not None:
      print(f"{loop.desc}: already finished at step {start} ({workdir}); nothing to do")
      checkpoints.close()
      return state, summary
    if start >= loop.total_steps:
      print(f"{loop.desc}: finished at step {start}, but {os.path.join(workdir, SUMMARY_FILE)} is missing; "
            "running the final evaluation again")
    else:
      print(f"{loop.desc}: resuming from the checkpoint at step {start}")
  if config is not None and jax.process_index() == 0:
    config_lib.write_config(config, workdir)
  writer = MetricsWriter(workdir, resume_step=start)
  window, last, eval_metrics = [], {}, {}
  last_good = start
  started = time.time()
  window_start, window_steps = time.time(), 0
  try:
    with _SignalGuard() as guard, tqdm(total=loop.total_steps, initial=min(start, loop.total_steps),
                                       desc=loop.desc, unit="step", dynamic_ncols=True,
                                       disable=jax.process_index() != 0) as bar:
      if start >= loop.total_steps:  # Finished, but its summary was lost: the same figures again.
        last = last_logged(workdir, start)
        if evaluate is not None:
          eval_metrics = evaluate(state)
          logged = [row for row in read_metrics(workdir) if row.get("step") == start]
          if not any(set(eval_metrics) <= set(row) for row in logged):
            writer.write(start, eval_metrics)
          bar.write(f"{loop.desc} step {start}: " + _describe(eval_metrics))
        if guard.stop_requested():
          raise Preempted(start, guard.signum)
      per_call = loop.steps_per_call
      for step in range(start, loop.total_steps, per_call):
        rows = next(data) if per_call == 1 else stack_rows([next(data) for _ in range(per_call)])
        state, metrics = step_fn(state, make_batch(rows), rng)
        window.append(metrics)
        window_steps += per_call
        done = step + per_call
        bar.update(per_call)
        if jax.process_count() > 1:  # Agreeing across hosts costs a collective: only on log steps.
          stopping = (done % loop.log_every == 0 or done == loop.total_steps) and guard.stop_requested()
        else:
          stopping = guard.stop_requested()
        save = done % loop.checkpoint_every == 0 or done == loop.total_steps or stopping
        if done % loop.log_every == 0 or save:
          last = _mean_metrics(window, per_call)
          loss = last.get("train/loss", 0.0)
          if not math.isfinite(loss):
            raise Diverged(f"{loop.desc}: loss is {loss} in steps {done - window_steps + 1}..{done}; stopped. The "
                           f"last good checkpoint (step {last_good}) in {checkpoints.directory} is intact; "
                           "lower optim.lr or raise optim.warmup_steps")
          elapsed = time.time() - window_start
          last["perf/steps_per_s"] = window_steps / elapsed
          last["perf/tokens_per_s"] = window_steps * loop.tokens_per_step / elapsed
          writer.write(done, last)
          bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{last['perf/tokens_per_s']:,.0f}")
          window, window_start, window_steps = [], time.time(), 0
        if evaluate is not None and (done % loop.eval_every == 0 or done == loop.total_steps):
          eval_metrics = evaluate(state)
          writer.write(done, eval_metrics)
          bar.write(f"{loop.desc} step {done}: " + _describe(eval_metrics))
          window_start = time.time()  # Evaluation time is not training throughput.
        if save:
          checkpoints.save(done, state, data, meta={"step": done})
          last_good = done
        if stopping:
          checkpoints.wait()
          raise Preempted(done, guard.signum)
      checkpoints.wait()
      # A signal during the last step's evaluation or save: its checkpoint is written, its summary is left to
      # the re-run (which evaluates again), and the run ends as a preempted one.
      if start < loop.total_steps and guard.stop_requested():
        raise Preempted(loop.total_steps, guard.signum)
  finally:
    writer.close()
    checkpoints.close()
  wall = time.time() - started
  steps_run = max(loop.total_steps - start, 0)
  summary = {"step": loop.total_steps, "wall_time_s": wall, "steps_per_s": steps_run / wall if wall else 0.0,
             **{k: v for k, v in last.items()}, **eval_metrics, **(extra_summary or {})}
  write_summary(workdir, summary)
  return state, summary
