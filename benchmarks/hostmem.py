"""A toyworld training step with XLA's freed scratch memory kept mapped (rlhf_jax/hostmem.py) against glibc's
defaults, which map and fault in every call's scratch buffer afresh.

Command:  python benchmarks/hostmem.py [--rounds N] [--steps N]

What it times: the toyworld pretraining step (experiments/toyworld_pretrain.py's model: L=4 D=128 H=4 F=512
V=1024; B=32 x T=128 packed rows with segment ids, as the pretraining stage feeds it; built by
benchmarks/seeds.py's `build` on a one-device mesh), in fresh processes that alternate between RLHF_JAX_KEEP_FREED_MEMORY=1
(the default: one malloc arena, no mmap'd blocks, no heap trimming) and =0 (glibc as it comes), `--rounds`
times each. Each process compiles, warms up 5 steps, then times `--steps` steps; it reports the median step,
and the minor page faults and kernel (system) CPU seconds a step from getrusage over the timed steps. The two
sides compute the same programs on the same values: their losses must agree to the last bit.
Hardware: 2-core Intel Xeon, jax 0.10.2; ~1.5 min alone. Measured 2026-12-06 alone: see benchmarks/README.md.
Last line: `BENCH hostmem key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from machine import cpu_model


def worker(steps: int) -> dict:
  import jax
  from seeds import build, experiment_config  # The toy case of benchmarks/seeds.py, one seed.

  from rlhf_jax import mesh as mesh_lib
  from rlhf_jax.model.transformer import Transformer, TransformerConfig

  config = experiment_config("toyworld_pretrain.py", 1024)
  model = Transformer(TransformerConfig.from_config(config.model))
  step, state, batch, key = build(config, model, mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1]), 1)
  for _ in range(6):
    state, metrics = step(state, batch, key)
  jax.block_until_ready(state)
  times = []
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return dict(step_ms=statistics.median(times) * 1e3, faults=(after.ru_minflt - before.ru_minflt) / steps,
              sys_s=(after.ru_stime - before.ru_stime) / steps, loss=float(metrics["train/loss"]).hex())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3, help="processes on each side, alternating (default 3)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps in each process (default 20)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.steps)))
    return
  print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs", flush=True)
  runs = {"kept": [], "default": []}
  for round_ in range(args.rounds):
    for side in (("kept", "default") if round_ % 2 == 0 else ("default", "kept")):
      env = {**os.environ, "RLHF_JAX_KEEP_FREED_MEMORY": "1" if side == "kept" else "0", "JAX_PLATFORMS": "cpu"}
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps)],
                           env=env, capture_output=True, text=True, check=True)
      r = json.loads(out.stdout.strip().splitlines()[-1])
      runs[side].append(r)
      print(f"  round {round_ + 1} {side:>7}: step {r['step_ms']:6.1f} ms, {r['faults']:8.0f} page faults and "
            f"{r['sys_s']:.3f} s of kernel time a step", flush=True)
  losses = {r["loss"] for rs in runs.values() for r in rs}
  if len(losses) != 1:
    raise AssertionError(f"the two sides computed different losses: {sorted(losses)}")
  med = {side: statistics.median(r["step_ms"] for r in rs) for side, rs in runs.items()}
  faults = {side: statistics.median(r["faults"] for r in rs) for side, rs in runs.items()}
  ratio = med["kept"] / med["default"]
  print(f"median step: kept {med['kept']:.1f} ms, default {med['default']:.1f} ms: {ratio:.2f}x the time; "
        f"losses identical ({losses.pop()})")
  print(f"BENCH hostmem kept_ms={med['kept']:.1f} default_ms={med['default']:.1f} ratio={ratio:.3f} "
        f"kept_faults={faults['kept']:.0f} default_faults={faults['default']:.0f}")


if __name__ == "__main__":
  main()
