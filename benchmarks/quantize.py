"""int8 weight-only sampling (model/quant.py) against float32, side by side in one run.

Command:  python benchmarks/quantize.py [--workdir RUN ...] [--quick]

Speed, on random weights of two sizes (toy L=4 D=128 F=512 V=1024, and GPT-2 small L=12 D=768 F=3072
V=50304): parameter bytes, and new tokens/s of `make_generate` (batch 64, prompts of 16 random tokens, exactly
128 new tokens, temperature 0.7; median of 6 (toy) or 3 (base) alternating timed calls, compiled ahead) with
float32 weights and with int8 weights; the float32 matmul peak and streaming bandwidth are measured in the
same run.
Quality, for each `--workdir` (a toyworld SFT or PPO run): the int8 model's logits against float32's on the 400
held-out SFT conversations (max and mean |difference|, top-1 agreement over their tokens), and held-out gold
of 250 prompts by the one evaluator (eval/gold.py) sampled with float32 and with int8 weights, same keys.
`--quick` (toy only, 2 repeats, no workdir): a smoke test.

Last line: `BENCH quantize key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import ForeignLoad
from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.model import lora, quant
from rlhf_jax.model.transformer import Transformer, TransformerConfig, unbox
from rlhf_jax.sampling import make_generate
from train_step import machine_limits

BATCH, PROMPT_LEN, NEW_TOKENS = 64, 16, 128
SIZES = {"toy": dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, vocab_size=1024, max_len=256),
         "base": dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=3072, vocab_size=50304,
                      max_len=256)}


def time_decode(name: str, cfg: TransformerConfig, repeats: int) -> dict:
  model = Transformer(cfg)
  params = jax.jit(lambda r: unbox(model.init(r, jnp.zeros((1, 1), jnp.int32))["params"]))(jax.random.PRNGKey(0))
  variants = {"float32": params, "int8": quant.for_sampling(params, "int8")}
  prompt = jax.random.randint(jax.random.PRNGKey(1), (BATCH, PROMPT_LEN), 3, cfg.vocab_size)
  mask = jnp.ones_like(prompt, bool)
  run = make_generate(model, max_new_tokens=NEW_TOKENS, temperature=0.7, top_k=0, top_p=1.0, stop_ids=())
  compiled = {k: run.lower(p, prompt, mask, jax.random.PRNGKey(0)).compile() for k, p in variants.items()}
  for k, p in variants.items():
    jax.block_until_ready(compiled[k](p, prompt, mask, jax.random.PRNGKey(0)))  # Warm-up.
  times = {k: [] for k in variants}
  load = ForeignLoad()
  for i in range(repeats):
    for k in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
      start = time.perf_counter()
      out = jax.block_until_ready(compiled[k](variants[k], prompt, mask, jax.random.PRNGKey(i + 1)))
      times[k].append(time.perf_counter() - start)
      assert int(out.num_steps) == NEW_TOKENS
  foreign = load.cores()
  result = {"foreign": foreign}
  for k, p in variants.items():
    s = statistics.median(times[k])
    result[k] = dict(bytes=lora.nbytes(p), tokens_per_s=BATCH * NEW_TOKENS / s, call_s=s)
  print(f"  {name}: float32 {result['float32']['bytes'] / 1e6:.1f} MB {result['float32']['tokens_per_s']:,.0f} "
        f"tok/s; int8 {result['int8']['bytes'] / 1e6:.1f} MB {result['int8']['tokens_per_s']:,.0f} tok/s"
        + ("" if foreign is None else f" (other processes used {foreign:.2f} cores)"), flush=True)
  return result


def quality(workdir: str) -> dict:
  """Logits and held-out gold of a toyworld run's model, float32 against int8."""
  from rlhf_jax.artifacts.models import load_pretrained
  from rlhf_jax.data import pipelines, toyworld
  from rlhf_jax.eval.gold import gold_evaluation
  mesh = mesh_lib.single_device_mesh()
  model, params, tokenizer = load_pretrained(workdir, mesh)
  run = json.load(open(os.path.join(workdir, "config.json")))
  config = config_lib.base_config()
  for section in ("toyworld", "sampling"):  # The run's own world and evaluation settings.
    for key, value in run.get(section, {}).items():
      if key in config[section]:
        config[section][key] = value
  tw = config.toyworld
  world = toyworld.make_world(tw.seed)
  q = quant.for_sampling(params, "int8")
  convs = toyworld.sft_examples(world, tw.num_val_sft, tw.seed + 1, tw.error_rate, split="heldout",
                                **toyworld.demonstrator_rates(tw))
  logits = jax.jit(lambda p, t: model.apply({"params": p}, t).logits)
  seqs = [np.asarray(pipelines.conversation_ids(tokenizer, ex["messages"])[0], np.int32) for ex in convs]
  width = max(len(x) for x in seqs)
  diffs, agree, count = [], 0, 0
  for start in range(0, len(seqs), 50):  # Rows right-padded to one width: one compiled shape.
    chunk = seqs[start:start + 50]
    ids = np.zeros((len(chunk), width), np.int32)
    real = np.zeros((len(chunk), width), bool)
    for i, x in enumerate(chunk):
      ids[i, :len(x)], real[i, :len(x)] = x, True
    a, b = np.asarray(logits(params, ids))[real], np.asarray(logits(q, ids))[real]
    diffs.append(np.abs(a - b).reshape(-1))
    agree += int((a.argmax(-1) == b.argmax(-1)).sum())
    count += int(real.sum())
  diffs = np.concatenate(diffs)
  heldout = toyworld.eval_instances(world, tw.num_eval_prompts)
  sampling = config.sampling
  gold = {}
  for mode in quant.MODES:
    sampling.quantize = mode
    gold[mode] = gold_evaluation(model, params, tokenizer, world, heldout, sampling, mesh=mesh)[0]["gold/all"]
  out = dict(max_abs_diff=float(diffs.max()), mean_abs_diff=float(diffs.mean()), top1_agreement=agree / count,
             tokens=count, gold_float32=gold["none"], gold_int8=gold["int8"], bytes_float32=lora.nbytes(params),
             bytes_int8=lora.nbytes(q))
  print(f"  {workdir}: logits |diff| max {out['max_abs_diff']:.4f} mean {out['mean_abs_diff']:.5f}, top-1 "
        f"agreement {out['top1_agreement']:.4f} over {count} held-out tokens; held-out gold float32 "
        f"{out['gold_float32']:.3f}, int8 {out['gold_int8']:.3f}", flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", nargs="*", default=[], help="toyworld runs whose models' int8 quality to measure")
  parser.add_argument("--quick", action="store_true", help="the toy size only, 2 repeats (a smoke test)")
  args = parser.parse_args()
  fields = machine_limits(args.quick)
  for name in (("toy",) if args.quick else ("toy", "base")):
    cfg = TransformerConfig.from_config(config_lib.model_config("gpt2", **SIZES[name]))
    r = time_decode(name, cfg, 2 if args.quick else {"toy": 6, "base": 3}[name])
    fields += [f"{name}_f32_mb={r['float32']['bytes'] / 1e6:.2f}", f"{name}_int8_mb={r['int8']['bytes'] / 1e6:.2f}",
               f"{name}_f32_tok_s={r['float32']['tokens_per_s']:.0f}",
               f"{name}_int8_tok_s={r['int8']['tokens_per_s']:.0f}",
               f"{name}_int8_speed={r['int8']['tokens_per_s'] / r['float32']['tokens_per_s']:.3f}"]
  for i, workdir in enumerate(args.workdir):
    q = quality(workdir)
    fields += [f"run{i}_logits_max_diff={q['max_abs_diff']:.4f}", f"run{i}_logits_mean_diff={q['mean_abs_diff']:.5f}",
               f"run{i}_top1={q['top1_agreement']:.4f}", f"run{i}_gold_f32={q['gold_float32']:.4f}",
               f"run{i}_gold_int8={q['gold_int8']:.4f}", f"run{i}_mb_f32={q['bytes_float32'] / 1e6:.3f}",
               f"run{i}_mb_int8={q['bytes_int8'] / 1e6:.3f}"]
  print("BENCH quantize " + " ".join(fields))


if __name__ == "__main__":
  main()
