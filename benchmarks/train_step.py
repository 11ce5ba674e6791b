"""Throughput and model FLOPs utilisation (MFU) of our LM train step on this machine.

Command:  python benchmarks/train_step.py [--quick] [--repeats N]

What it times is the step a pretraining or SFT run executes: `make_optimizer`, `create_train_state`,
`make_lm_step` and `jit_step` (donated state), the batch placed with `shard_batch`, on a one-device mesh.
1. Matmul peak: a jitted float32 N x N `jnp.dot` (N = 2048 and 4096), `--repeats` times (default 8) 4 products
   back to back, before and after the steps; the peak is the best timing, so the MFU is conservative.
2. Two GPT-2 models (`model_config("gpt2", ...)`: float32, no remat, unscanned layers, XLA attention):
     small  L=4  D=128 H=4  F=512  V=1024   B=16 T=128 (2048 tokens a step)
     base   L=12 D=768 H=12 F=3072 V=50304  B=8  T=128 (1024 tokens a step)  GPT-2 small, 124M parameters
   After compile and warm-up, each timed step is blocked on (state, metrics); the median counts. Compile s =
   first call minus the median step; tokens/s = B T / step time; MFU = model FLOPs a step / step time / peak.
   The loss must stay finite. Model FLOPs follow PaLM's appendix B (`model_flops_per_token`): 6 N a token plus
   12 L T D for attention, over the full T x T square.
The step time is the median of the steps during which other processes used under 0.1 cores (/proc/stat), or
of all steps, flagged "contended", when fewer than three were that quiet: rerun those, do not compare them.
B=8 T=128 (~4.9 s a step) is where throughput has plateaued (B T = 512 already) at the lowest cost.

Hardware: 2 vCPUs of an AMD EPYC (Zen 4: 32 float32 FLOPs a cycle a core, ~210 GFLOP/s at 3.3 GHz). Runtime
~2.3 min idle; `--quick` (two steps of each, base at B=2) ~27 s, a smoke test, not steady state.
Measured November 2026 on it: matmul peak 181-211 GFLOP/s at N=2048; the base step 154-160 GFLOP/s, 75-85%
of the peak of the same run. Other measurements and the method in full: benchmarks/README.md.

The last line printed is machine-readable: `BENCH train_step key=value ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import ForeignLoad
from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import LMBatch
from rlhf_jax.model.transformer import Transformer, TransformerConfig
from rlhf_jax.train.state import count_params, create_train_state, make_optimizer
from rlhf_jax.train.steps import jit_step, make_lm_step

# Other processes' average cores below which a timing counts as undisturbed (background daemons use ~0.01).
QUIET_CORES = 0.1


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked model: its `model` config overrides and the batch it steps on."""
  name: str
  model: dict
  batch_size: int
  seq_len: int
  warmup: int  # Steps after the compiling one, before timing starts.
  steps: int  # Timed steps.


# n_kv_heads is set explicitly: GPT-2 has one key/value head per query head, and `model_config` defaults it
# to 4, which would silently make the 12-head model grouped-query attention.
SMALL = dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, vocab_size=1024, max_len=256)
# GPT-2 small, its vocabulary 50257 padded to a multiple of 64 (as nanoGPT does) so the output matmul tiles.
BASE = dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=3072, vocab_size=50304, max_len=1024)

CASES = (Case("small", SMALL, batch_size=16, seq_len=128, warmup=3, steps=30),
         Case("base", BASE, batch_size=8, seq_len=128, warmup=1, steps=10))
QUICK_CASES = (Case("small", SMALL, batch_size=16, seq_len=128, warmup=1, steps=2),
               Case("base", BASE, batch_size=2, seq_len=128, warmup=0, steps=2))


def model_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs a token for one forward and backward pass (PaLM, Chowdhery et al. 2022, appendix B).

    flops/token = 6 N + 12 L T H K        (H K = D for GPT-2)

  N counts the parameters that take part in matmuls: per layer the q, k, v projections D (H + 2 G) K, the
  attention output H K D and the MLP (2 D F dense, 3 D F gated), plus the output projection V D, a matmul
  whether or not it shares the embedding table. Embedding and position lookups are gathers and do not count,
  nor do biases, norms and activations (elementwise). A matmul parameter costs 2 FLOPs a token forward and 4
  backward: 6 N. Attention adds Q K^T and the weighted sum of V, 2 T H K each a token and layer forward,
  times 3 with the backward: 12 L T H K. Causal masking leaves half of the T x T square unused, but PaLM
  counts all of it, and so do we, to stay comparable with published MFU figures.
  """
  d, hk, gk = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  mlp = (3 if cfg.mlp == "gated" else 2) * d * cfg.d_ff
  n_matmul = cfg.n_layers * (d * (hk + 2 * gk) + hk * d + mlp) + cfg.vocab_size * d
  return 6.0 * n_matmul + 12.0 * cfg.n_layers * seq_len * hk


def matmul_param_count(params) -> int:
  """N counted from the parameter tree instead: every `kernel`, plus the token embedding (the tied output
  projection), not the position table. Checks that `model_flops_per_token` describes the model we built."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = [getattr(p, "key", str(p)) for p in path]
    if keys[-1] == "kernel" or (keys[-1] == "embedding" and keys[0] == "embed"):
      total += int(leaf.size)
  return total


def steady_time(times, foreign) -> tuple[float, int, bool]:
  """(median seconds, samples used, contended): the median over quiet samples, or over all of them (and
  contended=True) when fewer than three were quiet or the load could not be read."""
  quiet = [t for t, f in zip(times, foreign) if f is not None and f < QUIET_CORES]
  if len(quiet) >= min(3, len(times)):
    return statistics.median(quiet), len(quiet), False
  return statistics.median(times), len(times), True


def measure_matmul_peak(sizes, repeats: int, products: int = 4) -> dict:
  """Float32 matmul rates per size in FLOP/s: the best of `repeats` timings and their median, each timing
  `products` products dispatched back to back and blocked once (a sustained rate, not one call's)."""
  rates = {}
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()  # Compile and warm up.
    times, foreign = [], []
    for _ in range(repeats):
      load = ForeignLoad()
      start = time.perf_counter()
      jax.block_until_ready([dot(a, b) for _ in range(products)])
      times.append((time.perf_counter() - start) / products)
      foreign.append(load.cores())
    flops = 2.0 * n**3
    rates[n] = dict(best=flops / min(times), median=flops / statistics.median(times),
                    foreign=_mean(foreign))
    print(f"  matmul {n}x{n}: best {rates[n]['best'] / 1e9:6.1f} GFLOP/s, median {rates[n]['median'] / 1e9:6.1f}"
          f" over {repeats} x {products} products{_foreign_note(rates[n]['foreign'])}", flush=True)
  return rates


def machine_limits(quick: bool) -> list[str]:
  """Prints the machine, its float32 matmul peak (best over 1024 and 2048 squares) and its streaming bandwidth;
  returns them as BENCH fields (peak_gflops, bandwidth_gbs). `quick`: fewer repeats, a 64 MiB stream."""
  from machine import cpu_model, measure_bandwidth
  print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; jax {jax.__version__}", flush=True)
  peak = max(r["best"] for r in measure_matmul_peak((1024, 2048), repeats=3 if quick else 10).values())
  bandwidth = measure_bandwidth(64 if quick else 256)["best"] / 1e9
  print(f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s, streaming bandwidth {bandwidth:.1f} GB/s", flush=True)
  return [f"peak_gflops={peak / 1e9:.1f}", f"bandwidth_gbs={bandwidth:.1f}"]


def _mean(values):
  values = [v for v in values if v is not None]
  return statistics.mean(values) if values else None


def _foreign_note(cores) -> str:
  return "" if cores is None else f"; other processes used {cores:.2f} cores meanwhile"


def random_batch(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int) -> LMBatch:
  """Uniform random tokens, one sequence a row (plain causal attention, every target counted)."""
  return LMBatch.from_sequences(rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32))


def run_case(case: Case) -> dict:
  """Builds the real state and step for `case`, compiles, warms up and times it; returns the numbers (MFU is
  added by the caller, once the peak is known)."""
  config = config_lib.base_config()
  config.model = config_lib.model_config("gpt2", **case.model)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  config.train.batch_size, config.train.seq_len = case.batch_size, case.seq_len
  config.train.steps = 1 + case.warmup + case.steps
  config_lib.finalize(config)

  model_cfg = TransformerConfig.from_config(config.model)
  model = Transformer(model_cfg, heads=("lm",))
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  state, shardings = create_train_state(model, tx, mesh, jax.random.PRNGKey(config.seed))

  n_params = count_params(state.params)
  flops_per_token = model_flops_per_token(model_cfg, case.seq_len)
  n_matmul = matmul_param_count(state.params)
  attention = 12.0 * model_cfg.n_layers * case.seq_len * model_cfg.n_heads * model_cfg.head_dim
  if 6.0 * n_matmul + attention != flops_per_token:
    raise AssertionError(f"model_flops_per_token counts {(flops_per_token - attention) / 6:.0f} matmul "
                         f"parameters, the {case.name} model has {n_matmul}")

  host_batch = random_batch(np.random.default_rng(config.seed), case.batch_size, case.seq_len,
                            model_cfg.vocab_size)
  batch = mesh_lib.shard_batch(host_batch, mesh)
  step = jit_step(make_lm_step(model, tx, schedule, config.optim.grad_accum_steps), shardings, batch, mesh)
  rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), mesh_lib.replicated(mesh))

  print(f"  {case.name}: {n_params / 1e6:.1f}M parameters ({n_matmul / 1e6:.1f}M in matmuls), "
        f"B={case.batch_size} T={case.seq_len}, {flops_per_token / 1e6:.1f} MFLOP a token; compiling...",
        flush=True)
  start = time.perf_counter()
  state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  first_s = time.perf_counter() - start
  first_loss = float(metrics["train/loss"])
  for _ in range(case.warmup):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))

  times, foreign = [], []
  for i in range(case.steps):
    load = ForeignLoad()
    start = time.perf_counter()
    state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    foreign.append(load.cores())
    print(f"\r  {case.name}: timed step {i + 1}/{case.steps}, {times[-1] * 1e3:.0f} ms", end="", flush=True)
  last_loss = float(metrics["train/loss"])
  if not (np.isfinite(first_loss) and np.isfinite(last_loss)):
    raise FloatingPointError(f"{case.name}: the loss went from {first_loss} to {last_loss}; the step is broken")

  step_s, used, contended = steady_time(times, foreign)
  print(f"{_foreign_note(_mean(foreign))}", flush=True)
  tokens = case.batch_size * case.seq_len
  return dict(name=case.name, params=n_params, batch=case.batch_size, seq=case.seq_len,
              compile_s=max(first_s - step_s, 0.0), step_ms=step_s * 1e3, min_ms=min(times) * 1e3,
              max_ms=max(times) * 1e3, used=used, steps=case.steps, contended=contended,
              tokens_per_s=tokens / step_s, gflops=flops_per_token * tokens / step_s / 1e9,
              loss=(first_loss, last_loss), foreign=_mean(foreign))


def main():
  parser = argparse.ArgumentParser(description="Train-step throughput and MFU of our LM step.")
  parser.add_argument("--quick", action="store_true", help="a couple of steps of each model (smoke test)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed steps per model (default 30 small, 10 base; 2 with --quick) and matmul "
                           "timings (default 8; 3 with --quick)")
  args = parser.parse_args()
  if args.repeats is not None and args.repeats < 1:
    parser.error("--repeats must be >= 1")
  cases = QUICK_CASES if args.quick else CASES
  if args.repeats is not None:
    cases = tuple(dataclasses.replace(c, steps=args.repeats) for c in cases)

  wall = time.perf_counter()
  platform = jax.devices()[0].platform
  print(f"train_step benchmark{' --quick (smoke numbers, not steady state)' if args.quick else ''}: "
        f"jax {jax.__version__}, {platform} x{jax.device_count()}, {os.cpu_count()} CPUs", flush=True)
  sizes = (2048,) if args.quick else (2048, 4096)
  repeats = args.repeats or (3 if args.quick else 8)
  print("matmul peak (float32), before the steps:", flush=True)
  rates = [measure_matmul_peak(sizes, repeats)]
  print("train steps:", flush=True)
  results = {case.name: run_case(case) for case in cases}
  if not args.quick:
    # Measured again because this CPU's rate drifts by ~10% over minutes (a shared host); the better of the
    # two is the peak, so drift can only lower the MFU.
    print("matmul peak (float32), after the steps:", flush=True)
    rates.append(measure_matmul_peak(sizes, repeats))
  peak, peak_n = max((r["best"], n) for rs in rates for n, r in rs.items())
  for r in results.values():
    r["mfu"] = r["gflops"] * 1e9 / peak

  print()
  spread = ", ".join(f"{max(r['best'] for r in rs.values()) / 1e9:.1f}" for rs in rates)
  print(f"peak {peak / 1e9:.1f} GFLOP/s (best float32 matmul, {peak_n}x{peak_n}; before/after the steps: {spread});"
        " MFU = model FLOPs / step time / peak")
  header = (f"{'model':<6} {'params':>7} {'B':>3} {'T':>4} {'step ms':>8} {'min-max ms':>13} {'steps':>7} "
            f"{'tokens/s':>9} {'GFLOP/s':>8} {'MFU':>6} {'compile s':>9} {'others':>6}  loss first->last")
  print(header)
  print("-" * len(header))
  for r in results.values():
    others = "?" if r["foreign"] is None else f"{r['foreign']:.2f}"
    print(f"{r['name']:<6} {r['params'] / 1e6:6.1f}M {r['batch']:>3} {r['seq']:>4} {r['step_ms']:8.1f} "
          f"{r['min_ms']:6.0f}-{r['max_ms']:<6.0f} {r['used']:>3}/{r['steps']:<3} {r['tokens_per_s']:9.0f} "
          f"{r['gflops']:8.1f} {r['mfu']:6.1%} {r['compile_s']:9.1f} {others:>6}  "
          f"{r['loss'][0]:.3f}->{r['loss'][1]:.3f}")
  print("steps: timed steps the median is over (those with other processes under "
        f"{QUIET_CORES} cores); others: cores other processes used meanwhile")
  contended = [r["name"] for r in results.values() if r["contended"]]
  if contended:
    print(f"WARNING: other processes kept the CPU busy while {', '.join(contended)} ran: the step times include "
          "their share and are not comparable; rerun on an idle machine")
  print(f"total {time.perf_counter() - wall:.0f} s")
  small, base = results["small"], results["base"]
  foreign = _mean([r["foreign"] for r in results.values()])
  print("BENCH train_step "
        f"peak_gflops={peak / 1e9:.1f} "
        f"small_tokens_per_s={small['tokens_per_s']:.0f} small_mfu={small['mfu']:.3f} "
        f"small_step_ms={small['step_ms']:.1f} small_compile_s={small['compile_s']:.1f} "
        f"base_tokens_per_s={base['tokens_per_s']:.1f} base_mfu={base['mfu']:.3f} "
        f"base_step_ms={base['step_ms']:.1f} base_compile_s={base['compile_s']:.1f} "
        f"base_gflops={base['gflops']:.1f} base_batch={base['batch']} base_seq={base['seq']} "
        f"quick={int(args.quick)} contended={int(bool(contended))} "
        f"others_cores={'nan' if foreign is None else f'{foreign:.2f}'} device={platform}")


if __name__ == "__main__":
  main()
