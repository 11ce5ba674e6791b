"""New tokens per second of batched sampling: ours (`make_generate`) against Hugging Face `model.generate`,
and ours against this machine's roofline, measured in the same run.

Command:  python benchmarks/generate.py [--quick] [--repeats N]

Same random weights on both sides (ours, written with `save_hf`, loaded as a `GPT2LMHeadModel`). Ours:
`make_generate(model, max_new_tokens=N, temperature=0.7, top_k=0, top_p=1.0, stop_ids=())`, compiled ahead of
time. HF: `model.generate(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, eos_token_id=None,
min_new_tokens=N, max_new_tokens=N)`, float32, 2 torch threads, OMP_WAIT_POLICY=PASSIVE. Batch 64, prompts of
16 random tokens, exactly N = 32 or 128 new tokens a row; tokens/s = 64 N / median s of a whole call (prefill
included); ratio = ours / HF; timed repeats alternate the sides. Models (float32): toy L=4 D=128 H=4 F=512
V=1024; base L=12 D=768 H=12 F=3072 V=50304 (GPT-2 small). Checks (a failure stops the run): N tokens a row,
HF's scores = logits / 0.7, greedy log-probs equal to 1e-4.
Roofline (`decode_step_cost`): a decode step needs its model FLOPs, 64 (2 N + 4 L S H K) for S keys, at the
float32 matmul peak, or its bytes, 4 N of weights + 8 L 64 G K S of K/V cache, at the streaming bandwidth (x + 1
over 256 MiB), whichever takes longer; both rates measured before and after the cases. The measured step is the
N=128 call less the N=32 one, over its 96 steps; a whole call's roofline adds the prefill's.
Hardware: 2-core Intel Xeon (AVX-512) VM, shared; jax 0.10.2, torch 2.13.0, transformers 5.23.0. Runtime ~3
min idle, 5-6 min with other jobs; `--quick` (toy only, one repeat) ~30 s, a smoke test.
Measured 2026-11-30 (the Intel Xeon with AMX, alone), ours/HF at N=32 / N=128: toy 4.19x / 3.93x, base 1.70x /
2.03x. 2026-12-05, not alone (others on 0.7-1 of the 2 cores): a base decode step 244 ms against a roofline of
113 ms, 46% (FLOP-bound: 16.0 GFLOP at 142 GFLOP/s; its 945 MB at 28 GB/s take 33 ms); toy 25% (bytes-bound).
More, and the method in full: benchmarks/README.md. Last line: `BENCH generate key=value ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

# Must be set before torch loads libgomp; see the docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from machine import ForeignLoad, cpu_model, measure_bandwidth  # noqa: E402
from rlhf_jax import config as config_lib  # noqa: E402
from rlhf_jax.model import hf  # noqa: E402
from rlhf_jax.model.transformer import Transformer, TransformerConfig, unbox  # noqa: E402
from rlhf_jax.sampling import make_generate, prompt_batch  # noqa: E402
from train_step import measure_matmul_peak, model_flops_per_token  # noqa: E402

BATCH = 64
PROMPT_LEN = 16
TEMPERATURE = 0.7
PAD = 0  # HF wants a pad id even when nothing is padded; no row is padded here.

# n_kv_heads is set explicitly: `model_config` defaults it to 4, which would make the 12-head model
# grouped-query attention, which GPT-2 (and so the HF side) cannot express.
TOY = dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, vocab_size=1024, max_len=256)
BASE = dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=3072, vocab_size=50304, max_len=256)


@dataclasses.dataclass(frozen=True)
class Case:
  """One model and the timed repeats per generation length (each side runs that many calls)."""
  name: str
  model: dict
  repeats: dict  # new tokens N -> timed repeats
  warmup: bool  # One untimed full-length call of each side before timing.


LENGTHS = (32, 128)
CASES = (Case("toy", TOY, {32: 7, 128: 5}, warmup=True), Case("base", BASE, {32: 3, 128: 2}, warmup=False))
QUICK_CASES = (Case("toy", TOY, {32: 1, 128: 1}, warmup=True),)


def build_models(case: Case, directory: str):
  """Our model and random parameters (the model's own init), and the same weights as an HF GPT2LMHeadModel."""
  cfg = TransformerConfig.from_config(config_lib.model_config("gpt2", **case.model))
  model = Transformer(cfg, heads=("lm",))
  params = unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
  hf.save_hf(directory, cfg, params, overwrite=True)
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32).eval()
  return model, params, hf_model


def hf_generate(hf_model, prompt_bp: np.ndarray, mask_bp: np.ndarray, new_tokens: int, seed: int, **kwargs):
  """HF generation of exactly `new_tokens` per row: no EOS, so nothing stops early."""
  torch.manual_seed(seed)
  with torch.inference_mode():
    return hf_model.generate(torch.from_numpy(prompt_bp.astype(np.int64)),
                             attention_mask=torch.from_numpy(mask_bp.astype(np.int64)),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                             pad_token_id=PAD, **kwargs)


HF_SAMPLING = dict(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0)


def check_hf_sampling(hf_model, prompt_bp: np.ndarray, mask_bp: np.ndarray):
  """Check 2: HF's processed scores are exactly the raw logits / T, at every step and row."""
  out = hf_generate(hf_model, prompt_bp[:4], mask_bp[:4], 4, seed=0, return_dict_in_generate=True,
                    output_scores=True, output_logits=True, **HF_SAMPLING)
  for scores, logits in zip(out.scores, out.logits):
    np.testing.assert_allclose(scores.numpy(), logits.numpy() / TEMPERATURE, rtol=1e-6, atol=0,
                               err_msg="HF processes the logits beyond temperature scaling (top-k 50?)")


def check_greedy(model, params, hf_model, prompt_bp: np.ndarray, mask_bp: np.ndarray, rows: int = 4,
                 new_tokens: int = 16) -> dict:
  """Check 3: arg-max decoding on both sides gives the same tokens, and our log-probs match HF's logits."""
  prompt, mask = prompt_bp[:rows], mask_bp[:rows]
  run = make_generate(model, max_new_tokens=new_tokens, greedy=True, stop_ids=())
  ours = jax.device_get(run(params, prompt, mask, jax.random.PRNGKey(0)))
  out = hf_generate(hf_model, prompt, mask, new_tokens, seed=0, do_sample=False, return_dict_in_generate=True,
                    output_logits=True)
  theirs = out.sequences[:, PROMPT_LEN:].numpy()
  same_b = (ours.tokens == theirs).all(-1)
  log_probs_bn = torch.log_softmax(torch.stack(out.logits, 1), -1).numpy()
  # HF's log-prob of the token we picked, up to the first disagreement of each row.
  agree_bn = np.cumprod(ours.tokens == theirs, axis=-1).astype(bool)
  theirs_lp = np.take_along_axis(log_probs_bn, ours.tokens[..., None], -1)[..., 0]
  lp_err = float(np.abs(np.where(agree_bn, ours.log_probs - theirs_lp, 0.0)).max())
  assert lp_err < 1e-4, f"greedy log-probs differ from HF's by {lp_err:.2e}: the two models disagree"
  return dict(rows=rows, same_rows=int(same_b.sum()), tokens=new_tokens, lp_err=lp_err)


def time_case(case: Case, model, params, hf_model, prompt_bp: np.ndarray, mask_bp: np.ndarray,
              new_tokens: int) -> dict:
  """Compile ours, warm up HF, then `case.repeats[N]` alternating timed calls of each; returns the numbers."""
  run = make_generate(model, max_new_tokens=new_tokens, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                      stop_ids=())
  tag = f"{case.name} N={new_tokens}"
  print(f"  {tag}: compiling ours...", end="", flush=True)
  start = time.perf_counter()
  run.lower(params, prompt_bp, mask_bp, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - start
  print(f" {compile_s:.1f} s; warming up HF...", end="", flush=True)
  start = time.perf_counter()
  hf_generate(hf_model, prompt_bp, mask_bp, 2, seed=0, **HF_SAMPLING)
  print(f" {time.perf_counter() - start:.1f} s", flush=True)

  def ours(i):
    rng = jax.random.PRNGKey(i)
    start = time.perf_counter()
    out = jax.device_get(run(params, prompt_bp, mask_bp, rng))
    return time.perf_counter() - start, out

  def theirs(i):
    start = time.perf_counter()
    out = hf_generate(hf_model, prompt_bp, mask_bp, new_tokens, seed=i, **HF_SAMPLING)
    return time.perf_counter() - start, out

  def check(side, out):
    """Check 1: exactly N new tokens per row on both sides."""
    if side == "ours":
      assert out.tokens.shape == (BATCH, new_tokens) and int(out.num_steps) == new_tokens and out.mask.all(), \
          f"{tag}: ours sampled {int(out.num_steps)} steps, mask sum {int(out.mask.sum())}"
    else:
      assert tuple(out.shape) == (BATCH, PROMPT_LEN + new_tokens), f"{tag}: HF returned {tuple(out.shape)}"

  if case.warmup:
    print(f"  {tag}: warm-up calls...", end="", flush=True)
    for side, call in (("ours", ours), ("hf", theirs)):
      check(side, call(0)[1])
    print(" done", flush=True)
  times = {"ours": [], "hf": []}
  load = ForeignLoad()
  repeats = case.repeats[new_tokens]
  for i in range(repeats):
    order = (("ours", ours), ("hf", theirs)) if i % 2 == 0 else (("hf", theirs), ("ours", ours))
    for side, call in order:
      seconds, out = call(i + 1)
      check(side, out)
      times[side].append(seconds)
    print(f"\r  {tag}: repeat {i + 1}/{repeats}, ours {times['ours'][-1]:.2f} s, HF {times['hf'][-1]:.2f} s",
          end="", flush=True)
  foreign = load.cores()
  print("" if foreign is None else f"; other processes used {foreign:.2f} cores meanwhile", flush=True)

  ours_s, hf_s = statistics.median(times["ours"]), statistics.median(times["hf"])
  tokens = BATCH * new_tokens
  return dict(ours=tokens / ours_s, hf=tokens / hf_s, ratio=hf_s / ours_s, ours_s=ours_s, hf_s=hf_s,
              ours_spread=(min(times["ours"]), max(times["ours"])), hf_spread=(min(times["hf"]), max(times["hf"])),
              compile_s=compile_s, foreign=foreign)


# ---------------------------------------------------------------------------------------------------------
# The roofline: model FLOPs against the float32 matmul peak, bytes against the streaming bandwidth, both
# measured in the same run.


def decode_step_cost(cfg: TransformerConfig, batch: int, context: int) -> tuple[float, float]:
  """(model FLOPs, bytes) of one decode step of `batch` rows, each new token attending to `context` keys (the
  prompt and the tokens so far, itself included: the causal prefix, not the empty slots of the loop's cache).

    FLOPs  batch (2 N + 4 L context H K)       = batch x `model_flops_per_token(cfg, context)` / 3
    bytes  4 N + 4 x 2 L batch G K context     the matmul weights read once for all rows, K and V read once

  N: the matmul parameters of `model_flops_per_token` (the tied LM head's V D included); float32, 4 bytes.
  Left out: biases, norms, activations and the sampler over V (elementwise FLOPs, few bytes) and the position
  row and the cache write (1/context of the cache read)."""
  n_matmul = model_flops_per_token(cfg, 0) / 6
  flops = batch * model_flops_per_token(cfg, context) / 3
  moved = 4.0 * (n_matmul + 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * context)
  return flops, moved


def prefill_cost(cfg: TransformerConfig, batch: int, prompt_len: int) -> tuple[float, float]:
  """(model FLOPs, bytes) of the prefill: `batch` x `prompt_len` tokens over `prompt_len` keys (the full
  square, as `model_flops_per_token` counts it), the LM head at the last column only; the weights read once
  and the K and V cache written once."""
  head = 2.0 * cfg.vocab_size * cfg.d_model
  flops = batch * (prompt_len * (model_flops_per_token(cfg, prompt_len) / 3 - head) + head)
  moved = 4.0 * (model_flops_per_token(cfg, 0) / 6
                 + 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * prompt_len)
  return flops, moved


def roofline(cost: tuple[float, float], peak: float, bandwidth: float) -> float:
  """Least seconds for `cost` (FLOPs, bytes): the longer of its FLOPs at the peak and its bytes at the
  bandwidth (each bound alone; a program that overlapped neither would need their sum)."""
  return max(cost[0] / peak, cost[1] / bandwidth)


def call_roofline(cfg: TransformerConfig, new_tokens: int, peak: float, bandwidth: float) -> dict:
  """A whole call's roofline seconds, FLOPs and bytes: the prefill, then decode steps 1 .. N-1 (step n
  attends to PROMPT_LEN + n keys; step 0 samples from the prefill's logits)."""
  costs = [prefill_cost(cfg, BATCH, PROMPT_LEN)]
  costs += [decode_step_cost(cfg, BATCH, PROMPT_LEN + n) for n in range(1, new_tokens)]
  return dict(seconds=sum(roofline(c, peak, bandwidth) for c in costs), flops=sum(c[0] for c in costs),
              bytes=sum(c[1] for c in costs))


def step_roofline(cfg: TransformerConfig, first: int, last: int, peak: float, bandwidth: float) -> dict:
  """Mean decode step of steps `first` .. `last - 1`: its FLOPs, bytes, the seconds each bound needs alone,
  the roofline seconds and which bound sets it."""
  costs = [decode_step_cost(cfg, BATCH, PROMPT_LEN + n) for n in range(first, last)]
  flops, moved = (statistics.mean(c[i] for c in costs) for i in (0, 1))
  seconds = statistics.mean(roofline(c, peak, bandwidth) for c in costs)
  return dict(flops=flops, bytes=moved, flops_s=flops / peak, bytes_s=moved / bandwidth, seconds=seconds,
              bound="flops" if flops / peak >= moved / bandwidth else "bytes")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="the toy model only, one repeat (smoke test)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed repeats per side for every case (default: 7/5 toy, 3/2 base; 1 with --quick)")
  args = parser.parse_args()
  cases = QUICK_CASES if args.quick else CASES
  if args.repeats is not None:
    if args.repeats < 1:
      parser.error("--repeats must be >= 1")
    cases = tuple(dataclasses.replace(c, repeats={n: args.repeats for n in LENGTHS}) for c in cases)

  torch.set_num_threads(2)
  transformers.utils.logging.disable_progress_bar()
  wall = time.perf_counter()
  load_start = os.getloadavg()[0]
  device = jax.devices()[0]
  print(f"generate benchmark: jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {device.platform}, {os.cpu_count()} CPUs ({cpu_model()}), torch threads "
        f"{torch.get_num_threads()} (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), load average "
        f"{load_start:.2f}{' (quick: smoke numbers)' if args.quick else ''}", flush=True)
  print(f"batch {BATCH}, prompt {PROMPT_LEN} tokens, temperature {TEMPERATURE}, full vocabulary, no stop token",
        flush=True)
  # The roofline's two rates, measured before the cases and again after them (the better of each counts).
  repeats = 3 if args.quick else 5
  print("float32 matmul peak and streaming bandwidth, before the cases:", flush=True)
  rates = [(measure_matmul_peak((2048,), repeats)[2048], measure_bandwidth(repeats=repeats))]

  results, checks, configs = {}, {}, {}
  prompts = np.random.default_rng(0)
  for case in cases:
    with tempfile.TemporaryDirectory() as scratch:
      model, params, hf_model = build_models(case, os.path.join(scratch, case.name))
    configs[case.name] = cfg = model.config
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    print(f"{case.name}: {n_params / 1e6:.1f}M parameters (L={cfg.n_layers} D={cfg.d_model} H={cfg.n_heads} "
          f"F={cfg.d_ff} V={cfg.vocab_size})", flush=True)
    # Full-width prompts: prompt_batch pads nothing, and the mask is all True.
    prompt_bp, mask_bp = prompt_batch(prompts.integers(0, cfg.vocab_size, (BATCH, PROMPT_LEN)).tolist(), PAD,
                                      PROMPT_LEN)
    check_hf_sampling(hf_model, prompt_bp, mask_bp)
    checks[case.name] = c = check_greedy(model, params, hf_model, prompt_bp, mask_bp)
    print(f"  greedy check: {c['same_rows']}/{c['rows']} rows identical over {c['tokens']} tokens, "
          f"max |log-prob ours - HF| {c['lp_err']:.1e}"
          f"{'' if c['same_rows'] == c['rows'] else '  WARNING: rows differ (a near-tie of the top logits?)'}",
          flush=True)
    for n in LENGTHS:
      results[case.name, n] = time_case(case, model, params, hf_model, prompt_bp, mask_bp, n)
    del model, params, hf_model

  print("float32 matmul peak and streaming bandwidth, after the cases:", flush=True)
  rates.append((measure_matmul_peak((2048,), repeats)[2048], measure_bandwidth(repeats=repeats)))
  peak, bandwidth = max(r[0]["best"] for r in rates), max(r[1]["best"] for r in rates)
  rate_foreign = [f for r in rates for f in (r[0]["foreign"], r[1]["foreign"]) if f is not None]
  rate_foreign = statistics.mean(rate_foreign) if rate_foreign else None
  for (name, n), r in results.items():
    r["roofline"] = call_roofline(configs[name], n, peak, bandwidth)
  steps = {}  # The mean decode step of steps N_short .. N_long - 1: the difference of the two calls.
  short, long = LENGTHS
  for name, cfg in configs.items():
    steps[name] = step = step_roofline(cfg, short, long, peak, bandwidth)
    step["measured"] = (results[name, long]["ours_s"] - results[name, short]["ours_s"]) / (long - short)
  load_end = os.getloadavg()[0]
  print()
  header = (f"{'model':<5} {'N':>4} {'ours tok/s':>10} {'HF tok/s':>9} {'ours/HF':>8} {'ours s':>14} "
            f"{'HF s':>14} {'compile s':>9} {'other load':>10}")
  print(header)
  print("-" * len(header))
  for (name, n), r in results.items():
    spread = lambda s, lo_hi: f"{s:5.2f} ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})".rjust(14)
    foreign = "" if r["foreign"] is None else f"{r['foreign']:.2f} cores"
    print(f"{name:<5} {n:>4} {r['ours']:10.0f} {r['hf']:9.0f} {r['ratio']:7.2f}x "
          f"{spread(r['ours_s'], r['ours_spread'])} {spread(r['hf_s'], r['hf_spread'])} {r['compile_s']:9.1f} "
          f"{foreign:>10}")
  print("(seconds: median (min-max) of a whole call of 64 rows, prefill included; compile s: ours, ahead of time)")
  below = [f"{name} N={n}" for (name, n), r in results.items() if r["ratio"] < 2.0]
  print(f"target ours >= 2x HF: {'met' if not below else 'NOT met for ' + ', '.join(below)}")

  print(f"\nours against the roofline: float32 matmul peak {peak / 1e9:.1f} GFLOP/s, streaming bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s (best 2048x2048 product, best x + 1 over 256 MiB; before/after the cases "
        f"{', '.join(format(r[0]['best'] / 1e9, '.1f') for r in rates)} GFLOP/s, "
        f"{', '.join(format(r[1]['best'] / 1e9, '.1f') for r in rates)} GB/s)")
  print(f"  {'model':<5} {'N':>4} {'GFLOP':>7} {'GB moved':>8} {'roofline s':>10} {'ours s':>7} "
        f"{'roofline/ours':>13}")
  for (name, n), r in results.items():
    roof = r["roofline"]
    print(f"  {name:<5} {n:>4} {roof['flops'] / 1e9:7.1f} {roof['bytes'] / 1e9:8.2f} {roof['seconds']:10.3f} "
          f"{r['ours_s']:7.3f} {roof['seconds'] / r['ours_s']:13.1%}")
  print(f"  a decode step, the mean of steps {short}..{long - 1} (measured: the N={long} call less the N={short} "
        f"one, over {long - short} steps):")
  print(f"  {'model':<5} {'GFLOP':>7} {'MB':>7} {'flops ms':>8} {'bytes ms':>8} {'roofline ms':>11} "
        f"{'measured ms':>11} {'roofline/measured':>17}  bound")
  for name, st in steps.items():
    print(f"  {name:<5} {st['flops'] / 1e9:7.3f} {st['bytes'] / 1e6:7.1f} {st['flops_s'] * 1e3:8.2f} "
          f"{st['bytes_s'] * 1e3:8.2f} {st['seconds'] * 1e3:11.2f} {st['measured'] * 1e3:11.2f} "
          f"{st['seconds'] / st['measured']:17.1%}  {st['bound']}")
  case_foreign = [r["foreign"] for r in results.values() if r["foreign"] is not None]
  if rate_foreign is not None and case_foreign and max(abs(f - rate_foreign) for f in case_foreign) > 0.25:
    print(f"  WARNING: other processes used {rate_foreign:.2f} cores while the peak and bandwidth were measured "
          f"and {min(case_foreign):.2f}-{max(case_foreign):.2f} during the cases: the fractions compare different "
          "shares of the machine")
  elapsed = time.perf_counter() - wall
  busy = max(load_start, load_end) > 0.5 and load_start > 0.5
  print(f"total {elapsed:.0f} s; load average {load_start:.2f} at start, {load_end:.2f} at end"
        + ("  WARNING: the machine was busy; absolute numbers are not comparable (ratios hold up better)"
           if busy else ""))

  fields = []
  for (name, n), r in results.items():
    key = f"{name}_n{n}"
    fields += [f"{key}_ours={r['ours']:.0f}", f"{key}_hf={r['hf']:.0f}", f"{key}_ratio={r['ratio']:.2f}",
               f"{key}_compile_s={r['compile_s']:.1f}"]
  fields += [f"{name}_greedy_rows_same={c['same_rows']}/{c['rows']}" for name, c in checks.items()]
  fields.append(f"ours_compile_s={max(r['compile_s'] for r in results.values()):.1f}")
  fields += [f"peak_gflops={peak / 1e9:.1f}", f"bandwidth_gbs={bandwidth / 1e9:.1f}",
             f"others_cores_rates={'nan' if rate_foreign is None else f'{rate_foreign:.2f}'}"]
  for (name, n), r in results.items():
    fields += [f"{name}_n{n}_roofline_s={r['roofline']['seconds']:.3f}",
               f"{name}_n{n}_frac_of_roofline={r['roofline']['seconds'] / r['ours_s']:.3f}"]
  for name, st in steps.items():
    fields += [f"{name}_step_ms={st['measured'] * 1e3:.2f}", f"{name}_step_roofline_ms={st['seconds'] * 1e3:.2f}",
               f"{name}_step_frac={st['seconds'] / st['measured']:.3f}", f"{name}_step_bound={st['bound']}",
               f"{name}_step_gflop={st['flops'] / 1e9:.3f}", f"{name}_step_mb={st['bytes'] / 1e6:.1f}"]
  fields += [f"quick={int(args.quick)}", f"load={load_start:.2f}", f"device={device.platform}"]
  print("BENCH generate " + " ".join(fields))


if __name__ == "__main__":
  main()
