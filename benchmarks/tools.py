"""Tool calls in the sampler (rlhf_jax/tools.py): decode speed with the calculator against without, side by side.

Command:  python benchmarks/tools.py --workdir RUN [--quick]

RUN is a toyworld SFT (or PPO) run trained with the calculator (experiments/quickstart.py:calculator), so its
answers to arithmetic questions really call it. The batch is 64 held-out arithmetic questions of the world (so
every row makes a call), temperature 0.7, 32 new tokens, stop ids none (every row runs all 32 steps); median
of 7 (`--quick`: 2) alternating timed calls of the compiled sampler, with the calculator and without. Without
it the rows write "[3+4=" and go on without a result, so both sample the same number of tokens and the
difference is the tool's cost: a `lax.cond` per step on whether a row closes a call, and the scan over the
call's characters at the steps where one does. The float32 matmul peak and streaming bandwidth are measured
in the same run. Last line: `BENCH tools key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from machine import ForeignLoad
from rlhf_jax import mesh as mesh_lib
from rlhf_jax import tools
from rlhf_jax.artifacts.models import load_pretrained
from rlhf_jax.data import toyworld
from rlhf_jax.data.pipelines import prompt_ids
from rlhf_jax.sampling import make_generate, prompt_batch
from train_step import machine_limits

BATCH, NEW_TOKENS = 64, 32


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a toyworld run trained with the calculator")
  parser.add_argument("--quick", action="store_true", help="2 repeats, a short machine measurement")
  args = parser.parse_args()
  limits = machine_limits(args.quick)
  with open(f"{args.workdir}/config.json") as f:
    world = toyworld.make_world(json.load(f)["toyworld"]["seed"])
  model, params, tokenizer = load_pretrained(args.workdir, mesh_lib.single_device_mesh())
  lm = model.clone(heads=("lm",))
  instances = toyworld.sample_instances(world, BATCH, world.seed + 2, split="heldout", tasks=("arithmetic",))
  prompt, mask = prompt_batch([prompt_ids(tokenizer, [{"role": "user", "content": i.prompt}]) for i in instances],
                              tokenizer.pad_id)
  calculator = tools.calculator(tokenizer)
  runs = {name: make_generate(lm, max_new_tokens=NEW_TOKENS, temperature=0.7, stop_ids=(), pad_id=tokenizer.pad_id,
                              tool=tool) for name, tool in (("plain", None), ("calculator", calculator))}
  compiled = {k: run.lower(params, prompt, mask, jax.random.PRNGKey(0)).compile() for k, run in runs.items()}
  out = jax.block_until_ready(compiled["calculator"](params, prompt, mask, jax.random.PRNGKey(0)))
  calls = int(np.asarray(out.tool_mask).any(-1).sum())
  print(f"rows that called the calculator: {calls} of {BATCH}", flush=True)
  times = {k: [] for k in compiled}
  load = ForeignLoad()
  for i in range(2 if args.quick else 7):
    for k in (list(compiled) if i % 2 == 0 else list(compiled)[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(compiled[k](params, prompt, mask, jax.random.PRNGKey(i + 1)))
      times[k].append(time.perf_counter() - start)
  foreign = load.cores()
  s = {k: statistics.median(v) for k, v in times.items()}
  tok_s = {k: BATCH * NEW_TOKENS / v for k, v in s.items()}
  overhead_ms = 1e3 * (s["calculator"] - s["plain"]) / NEW_TOKENS
  print(f"without the tool {tok_s['plain']:,.0f} new tok/s, with the calculator {tok_s['calculator']:,.0f} "
        f"({tok_s['calculator'] / tok_s['plain']:.3f}x; {overhead_ms:+.2f} ms a step)"
        + ("" if foreign is None else f" (other processes used {foreign:.2f} cores)"), flush=True)
  print(" ".join(["BENCH tools", f"calls={calls}", f"plain_tok_s={tok_s['plain']:.0f}",
                  f"calculator_tok_s={tok_s['calculator']:.0f}", f"ratio={tok_s['calculator'] / tok_s['plain']:.3f}",
                  f"step_overhead_ms={overhead_ms:.3f}", *limits]))


if __name__ == "__main__":
  main()
