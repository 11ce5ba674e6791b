"""What `train.seeds` buys: N seeds of an LM train step as one compiled program, against one seed at a time.

Command:  python benchmarks/seeds.py [--quick] [--seeds N]

It times the step `stages.common.train_lm` runs, built as it builds it, for two experiments' models and batch
shapes (configs loaded from experiments/, so a change there shows up here):
  toy          experiments/toyworld_pretrain.py  L=4 D=128 H=4 F=512 V=1024  B=32 T=128, packed rows
  shakespeare  experiments/shakespeare_char.py:nanogpt  L=4 D=128 H=4 F=512 V=74  B=12 T=64,  plain windows
               (the learned position table it was measured with; the file's default is now rotary)
On a one-device mesh: (a) one seed, `create_train_state` + `make_lm_step` + `jit_step` on (B, T+1) rows;
(b) N seeds (default 4), `create_seed_states` (keys seed..seed+N-1) + `jit_step(seed_axis=True)` on N random
batches stacked to (N, B, T+1). Rows go through `pipelines.to_lm_batch` and `mesh.shard_batch`; toy rows are
packed from random documents of ~70 tokens (toyworld's mean), with segment ids and positions.
Both programs are compiled and warmed up, then timed in alternating rounds (order flipped every round). A
step's time is the median of the steps during which other processes used under 0.1 cores
(`machine.ForeignLoad`), or of all, flagged "contended", when fewer than three were that quiet.
speedup = N step_s_1 / step_s_N; both do the same FLOPs, so near 1 means a single seed already keeps the
cores busy, above 1 that it left them idle. Compile s = first call minus the median step; every seed's loss
must stay finite.

Hardware: 2 vCPUs of an AMD EPYC (see benchmarks/train_step.py). Runtime (20 toy and 40 shakespeare rounds)
under two minutes idle; `--quick` (no warm-up, two timed rounds) is a smoke test, not steady state.
Measured: see README's benchmark table and benchmarks/README.md. Last line: `BENCH seeds key=value ...`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import ForeignLoad
from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.data import pipelines
from rlhf_jax.model.transformer import Transformer, TransformerConfig
from rlhf_jax.tokenizer import NUM_SPECIAL
from rlhf_jax.train.state import create_seed_states, create_train_state, make_optimizer
from rlhf_jax.train.steps import jit_step, make_lm_step

QUIET_CORES = 0.1  # As in train_step.py.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (experiment file, vocabulary size, (warm-up steps, timed rounds), the same with --quick)
CASES = {"toy": ("toyworld_pretrain.py", 1024, (2, 20), (0, 2)),
         "shakespeare": ("shakespeare_char.py:nanogpt", NUM_SPECIAL + 65, (3, 40), (0, 2))}


def experiment_config(filename: str, vocab_size: int):
  filename, _, variant = filename.partition(":")
  spec = importlib.util.spec_from_file_location("experiment", os.path.join(ROOT, "experiments", filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  config.model.vocab_size = vocab_size
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  config_lib.finalize(config)
  return config


def random_rows(rng: np.random.Generator, b: int, t: int, vocab: int, packed: bool, mean_doc: int = 70) -> dict:
  """Host rows of T+1 random ordinary tokens; `packed` adds documents' segment ids and positions."""
  tokens = rng.integers(NUM_SPECIAL, vocab, (b, t + 1), dtype=np.int32)
  if not packed:
    return {"tokens": tokens}
  starts = rng.random((b, t + 1)) < 1.0 / mean_doc
  starts[:, 0] = True
  idx = np.broadcast_to(np.arange(t + 1), (b, t + 1))
  positions = idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
  return {"tokens": tokens, "mask": np.ones((b, t + 1), bool), "tokens_segment_ids": np.cumsum(starts, axis=1),
          "tokens_positions": positions}


def build(config, model, mesh, n: int):
  """(step, state, batch, rng) as `train_lm` builds them for `train.seeds` = n (n = 1: the single path)."""
  train, rng, packed = config.train, np.random.default_rng(config.seed), config.data.layout == "packed"
  tx, schedule = make_optimizer(config.optim, train.steps)
  rows = [random_rows(rng, train.batch_size, train.seq_len, model.config.vocab_size, packed) for _ in range(n)]
  example = pipelines.to_lm_batch(rows[0])
  if n == 1:
    state, shardings = create_train_state(model, tx, mesh, jax.random.PRNGKey(config.seed))
    key = jax.random.PRNGKey(config.seed + 1)
  else:
    keys = lambda offset: jnp.stack([jax.random.PRNGKey(config.seed + i + offset) for i in range(n)])
    state, shardings = create_seed_states(model, tx, mesh, keys(0))
    key, rows = keys(1), [{k: np.stack([r[k] for r in rows]) for k in rows[0]}]
  batch = mesh_lib.shard_batch(pipelines.to_lm_batch(rows[0]), mesh, seed_axis=n > 1)
  step = jit_step(make_lm_step(model, tx, schedule, config.optim.grad_accum_steps), shardings, example, mesh,
                  seed_axis=n > 1)
  return step, state, batch, key


def steady_time(times, foreign) -> tuple[float, bool]:
  quiet = [t for t, f in zip(times, foreign) if f is not None and f < QUIET_CORES]
  if len(quiet) >= min(3, len(times)):
    return statistics.median(quiet), False
  return statistics.median(times), True


def run_case(name: str, n: int, quick: bool) -> dict:
  filename, vocab, full, short = CASES[name]
  warmup, rounds = short if quick else full
  config = experiment_config(filename, vocab)
  model = Transformer(TransformerConfig.from_config(config.model))
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  runs = {k: dict(zip(("step", "state", "batch", "key"), build(config, model, mesh, k))) for k in (1, n)}
  print(f"  {name}: B={config.train.batch_size} T={config.train.seq_len} V={vocab} "
        f"({config.data.layout}); compiling 1 and {n} seeds...", flush=True)

  def one_step(r):
    r["state"], metrics = r["step"](r["state"], r["batch"], r["key"])
    jax.block_until_ready((r["state"], metrics))
    r["losses"].append(np.ravel(metrics["train/loss"]))  # One per seed.

  for r in runs.values():
    r["losses"], r["times"], r["foreign"] = [], [], []
    start = time.perf_counter()
    one_step(r)
    r["first_s"] = time.perf_counter() - start
    for _ in range(warmup):
      one_step(r)
  for i in range(rounds):
    for k in ((1, n) if i % 2 == 0 else (n, 1)):
      r, load = runs[k], ForeignLoad()
      start = time.perf_counter()
      one_step(r)
      r["times"].append(time.perf_counter() - start)
      r["foreign"].append(load.cores())
    print(f"\r  {name}: round {i + 1}/{rounds}, {runs[1]['times'][-1] * 1e3:.0f} ms / "
          f"{runs[n]['times'][-1] * 1e3:.0f} ms", end="", flush=True)
  out = dict(name=name, rounds=rounds)
  for k, r in runs.items():
    losses = np.stack(r["losses"])
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f"{name}, {k} seed(s): a loss is not finite ({losses}); the step is broken")
    step_s, contended = steady_time(r["times"], r["foreign"])
    foreign = [f for f in r["foreign"] if f is not None]
    out[k] = dict(step_s=step_s, compile_s=max(r["first_s"] - step_s, 0.0), contended=contended,
                  foreign=statistics.mean(foreign) if foreign else float("nan"), loss=(losses[0], losses[-1]))
  out["speedup"] = n * out[1]["step_s"] / out[n]["step_s"]
  out["foreign"] = statistics.mean([out[1]["foreign"], out[n]["foreign"]])
  print(f"; other processes used {out['foreign']:.2f} cores; loss "
        + ", ".join(f"{k} seed(s) {out[k]['loss'][0].mean():.3f}->{out[k]['loss'][1].mean():.3f}" for k in (1, n)),
        flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description="N seeds vmapped in one program against one seed at a time.")
  parser.add_argument("--quick", action="store_true", help="two timed rounds of each model (smoke test)")
  parser.add_argument("--seeds", type=int, default=4, help="N, the seeds of the vmapped program (default 4)")
  args = parser.parse_args()
  if args.seeds < 2:
    parser.error("--seeds must be >= 2")
  n, wall = args.seeds, time.perf_counter()
  platform = jax.devices()[0].platform
  print(f"seeds benchmark{' --quick (smoke numbers, not steady state)' if args.quick else ''}: jax "
        f"{jax.__version__}, {platform} x{jax.device_count()}, {os.cpu_count()} CPUs, N={n}", flush=True)
  results = {name: run_case(name, n, args.quick) for name in CASES}

  print()
  header = (f"{'model':<12} {'step s 1':>9} {f'step s {n}':>9} {'speedup':>8} {'compile s 1':>11} "
            f"{f'compile s {n}':>11} {'rounds':>6} {'others':>6}")
  print(header)
  print("-" * len(header))
  for r in results.values():
    print(f"{r['name']:<12} {r[1]['step_s']:9.4f} {r[n]['step_s']:9.4f} {r['speedup']:8.2f} "
          f"{r[1]['compile_s']:11.1f} {r[n]['compile_s']:11.1f} {r['rounds']:>6} {r['foreign']:6.2f}")
  print(f"speedup = {n} x step s 1 / step s {n}: {n} seeds vmapped against {n} seeds one after another; "
        "others: cores other processes used meanwhile")
  contended = [r["name"] for r in results.values() if r[1]["contended"] or r[n]["contended"]]
  if contended:
    print(f"WARNING: other processes kept the CPU busy while {', '.join(contended)} ran (contended): the times "
          "include their share and are not comparable; rerun on an idle machine")
  print(f"total {time.perf_counter() - wall:.0f} s")
  fields = " ".join(f"{k}_speedup={r['speedup']:.2f}" for k, r in results.items())
  for k, r in results.items():
    fields += (f" {k}_step_s_1={r[1]['step_s']:.4f} {k}_step_s_{n}={r[n]['step_s']:.4f}"
               f" {k}_compile_s_1={r[1]['compile_s']:.1f} {k}_compile_s_{n}={r[n]['compile_s']:.1f}")
  print(f"BENCH seeds {fields} seeds={n} quick={int(args.quick)} contended={int(bool(contended))} device={platform}")


if __name__ == "__main__":
  main()
