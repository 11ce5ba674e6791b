"""The quickstart's pretraining and SFT stages at two commits, side by side: wall time and results.

Command:  python benchmarks/stages.py [--base REV] [--new REV] [--rounds N] [--smoke]

What it runs: each stage's own command at the budgets `experiments/quickstart.py:short` gives them (world 0;
`toyworld_pretrain.py` 1,000 steps, evaluated at the end, checkpoints at 500 and 1,000; then `toyworld_sft.py`
from it, 500 steps, evaluated at the end, without pretraining documents in its rows where the commit has that
setting), from `git worktree` checkouts of --base (default 0245a54, the commit issue 17 measures against) and
--new (default HEAD), each in fresh processes importing its own checkout, the compilation cache off. The sides
alternate base, new, new, base for each of --rounds rounds, so a machine that drifts one way favours neither.
Reported: each run's pretraining and SFT seconds (process start to exit), the ratio new / base of the sums, and
whether the results (validation loss after each stage, held-out gold and token accuracies) agree to the last
digit. `--smoke` runs 20 + 10 steps, a check of the script itself. The float32 matmul peak is measured before
the rounds and after each run.
Hardware: 2-core AMD EPYC (AVX-512), jax 0.10.2. Runtime ~22 min a round alone (four runs of 5-9 min).
Measured 2026-12-07 alone, `python benchmarks/stages.py` (new b51ef14), one round: base 478 and 444 s, new 279
and 275 s: 0.60x, every result identical to the last digit (a shell script of the same commands before it,
new d927654: 0.64x). benchmarks/README.md.
Last line: `BENCH stages key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from train_step import measure_matmul_peak

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"pt": ("eval/loss", "eval/accuracy", "train/accuracy"),
        "sft": ("eval/loss", "eval/gold/all", "eval/accuracy", "train/accuracy")}


def peak() -> float:
  return measure_matmul_peak([2048], 5)[2048]["best"] / 1e9


def run_side(checkout: str, workdir: str, steps: tuple[int, int]) -> dict:
  """Pretraining, then SFT from it, in `checkout`'s own code; seconds and results of each."""
  env = dict(os.environ, PYTHONPATH=checkout, RLHF_JAX_COMPILE_CACHE="0")
  has_mix = "pretrain_mix" in open(os.path.join(checkout, "rlhf_jax", "config.py")).read()
  pt, sft = os.path.join(workdir, "pt"), os.path.join(workdir, "sft")
  commands = {
      "pt": ["--config", "experiments/toyworld_pretrain.py", "--workdir", pt, f"--config.train.steps={steps[0]}",
             f"--config.train.eval_every={steps[0]}", f"--config.train.checkpoint_every={steps[0] // 2}"],
      "sft": ["--config", "experiments/toyworld_sft.py", "--workdir", sft, f"--config.init_from={pt}",
              f"--config.train.steps={steps[1]}", f"--config.train.eval_every={steps[1]}",
              *(["--config.data.pretrain_mix=0"] if has_mix else [])]}
  out = {}
  for stage, args in commands.items():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax.main", *args], cwd=checkout, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
      sys.exit(f"{checkout}: {stage} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.load(open(os.path.join(workdir, stage, "summary.json")))
    out[stage] = {"s": seconds, **{k: summary.get(k) for k in KEYS[stage]}}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", default="0245a54", help="the commit measured against (default 0245a54)")
  parser.add_argument("--new", default="HEAD", help="the commit measured (default HEAD)")
  parser.add_argument("--rounds", type=int, default=1, help="rounds of base, new, new, base (default 1)")
  parser.add_argument("--smoke", action="store_true", help="20 pretraining and 10 SFT steps: a check of the script")
  args = parser.parse_args()
  steps = (20, 10) if args.smoke else (1000, 500)
  with tempfile.TemporaryDirectory(prefix="stages_") as tmp:
    checkouts = {}
    for side in ("base", "new"):
      rev = getattr(args, side)
      checkouts[side] = os.path.join(tmp, side)
      subprocess.run(["git", "-C", REPO, "worktree", "add", "-q", "--detach", checkouts[side], rev], check=True)
    try:
      print(f"stages: base {args.base}, new {args.new}; pretraining {steps[0]} and SFT {steps[1]} steps; "
            f"matmul peak {peak():.0f} GFLOP/s", flush=True)
      runs = []
      for r in range(args.rounds):
        for side in ("base", "new", "new", "base"):
          result = run_side(checkouts[side], os.path.join(tmp, f"run{len(runs)}"), steps)
          runs.append((side, result))
          print(f"  round {r + 1} {side:4s}: pretraining {result['pt']['s']:6.1f} s, SFT {result['sft']['s']:6.1f} s; "
                f"validation loss {result['pt']['eval/loss']!r} / {result['sft']['eval/loss']!r}, gold "
                f"{result['sft']['eval/gold/all']!r}; then matmul peak {peak():.0f} GFLOP/s", flush=True)
    finally:
      for path in checkouts.values():
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", path], check=False)
  total = {side: sum(r["pt"]["s"] + r["sft"]["s"] for s, r in runs if s == side) for side in ("base", "new")}
  results = {json.dumps({stage: {k: v for k, v in r[stage].items() if k != "s"} for stage in r}, sort_keys=True)
             for _, r in runs}
  ratio = total["new"] / total["base"]
  print(f"pretraining + SFT: base {total['base']:.0f} s, new {total['new']:.0f} s: {ratio:.3f}x; results "
        f"{'identical in every run' if len(results) == 1 else 'DIFFER between runs'}")
  print(f"BENCH stages base_s={total['base']:.1f} new_s={total['new']:.1f} ratio={ratio:.3f} "
        f"identical={int(len(results) == 1)} rounds={args.rounds} smoke={int(args.smoke)}")


if __name__ == "__main__":
  main()
