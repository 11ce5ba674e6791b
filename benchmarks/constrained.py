"""Constrained decoding (rlhf_jax/constrain.py): decode speed with the automaton's logits mask against without,
side by side in one run, and the time to compile a pattern to its token table.

Command:  python benchmarks/constrained.py [--workdir RUN] [--quick]

Speed, on random weights of two sizes (toy L=4 D=128 F=512 V=1024, and GPT-2 small L=12 D=768 F=3072
V=50304): new tokens/s of `make_generate` (batch 64, prompts of 16 random tokens, temperature 0.7, stop ids
none, so every row runs the full 128 steps; median of 6 (toy) or 3 (base) alternating timed calls, compiled
ahead) without a constraint and with one. The constraint is an automaton of 32 states over the model's
vocabulary allowing a random half of the tokens in each state, every state accepting: the sampler's cost does
not depend on what the pattern says, only on S x V, and this one never forces an early stop. The per-step
overhead is (1/with - 1/without) / 128 steps of a call.
Compile time: `compile_regex` of three patterns against a vocabulary of 50,000 random lower-case pieces of
1-8 characters (GPT-2 sized) and, with `--workdir` (a toyworld run), against its own tokenizer, where the run's
model also answers 100 held-out arithmetic and 100 list prompts, free and constrained to the task's answer
format ("-?\\d{1,2} \\." and "[a-z]+(?: , [a-z]+)* \\."), with the share of answers that match and their gold.
The float32 matmul peak and streaming bandwidth are measured in the same run.
`--quick` (toy only, 2 repeats, no workdir): a smoke test.

Last line: `BENCH constrained key=value ...`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine import ForeignLoad
from rlhf_jax import config as config_lib
from rlhf_jax import constrain
from rlhf_jax.model.transformer import Transformer, TransformerConfig, unbox
from rlhf_jax.sampling import make_generate
from rlhf_jax.tokenizer import NUM_SPECIAL, Tokenizer
from train_step import machine_limits

BATCH, PROMPT_LEN, NEW_TOKENS, STATES = 64, 16, 128, 32
SIZES = {"toy": dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, vocab_size=1024, max_len=256),
         "base": dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=3072, vocab_size=50304,
                      max_len=256)}
PATTERNS = (r"-?\d{1,2} \.", r"(?:yes|no|maybe)", r"[a-z]+(?: [a-z]+){0,5} \.")


class PieceTokenizer(Tokenizer):
  """Ordinary ids decode to fixed pieces, concatenated: a stand-in for a large BPE vocabulary."""

  def __init__(self, pieces):
    self._pieces = list(pieces)

  @property
  def vocab_size(self):
    return NUM_SPECIAL + len(self._pieces)

  def encode(self, text):
    raise NotImplementedError

  def save(self, directory):
    raise NotImplementedError

  def _decode_pieces(self, ids):
    return "".join(self._pieces[i - NUM_SPECIAL] for i in ids)


def random_automaton(vocab: int, rng: np.random.Generator) -> constrain.TokenAutomaton:
  allowed = rng.random((STATES, vocab)) < 0.5
  nxt = np.where(allowed, rng.integers(0, STATES, (STATES, vocab)), -1).astype(np.int32)
  return constrain.TokenAutomaton(next_state=nxt, accepting=np.ones(STATES, bool),
                                  distance=np.zeros(STATES, np.int32), start=0, pattern="(random)")


def time_decode(name: str, cfg: TransformerConfig, repeats: int) -> dict:
  model = Transformer(cfg)
  params = jax.jit(lambda r: unbox(model.init(r, jnp.zeros((1, 1), jnp.int32))["params"]))(jax.random.PRNGKey(0))
  prompt = jax.random.randint(jax.random.PRNGKey(1), (BATCH, PROMPT_LEN), NUM_SPECIAL, cfg.vocab_size)
  mask = jnp.ones_like(prompt, bool)
  automaton = random_automaton(cfg.vocab_size, np.random.default_rng(0))
  runs = {k: make_generate(model, max_new_tokens=NEW_TOKENS, temperature=0.7, stop_ids=(), constraint=c)
          for k, c in (("free", None), ("masked", automaton))}
  compiled = {k: run.lower(params, prompt, mask, jax.random.PRNGKey(0)).compile() for k, run in runs.items()}
  for k in compiled:
    out = jax.block_until_ready(compiled[k](params, prompt, mask, jax.random.PRNGKey(0)))  # Warm-up.
  tokens = np.asarray(out.tokens)
  assert all(automaton.accepts(row) for row in tokens[:8]), "a masked sample left its automaton"
  times = {k: [] for k in compiled}
  load = ForeignLoad()
  for i in range(repeats):
    for k in (list(compiled) if i % 2 == 0 else list(compiled)[::-1]):
      start = time.perf_counter()
      out = jax.block_until_ready(compiled[k](params, prompt, mask, jax.random.PRNGKey(i + 1)))
      times[k].append(time.perf_counter() - start)
      assert int(out.num_steps) == NEW_TOKENS
  foreign = load.cores()
  s = {k: statistics.median(v) for k, v in times.items()}
  result = dict(free_tok_s=BATCH * NEW_TOKENS / s["free"], masked_tok_s=BATCH * NEW_TOKENS / s["masked"],
                step_overhead_ms=1e3 * (s["masked"] - s["free"]) / NEW_TOKENS, foreign=foreign)
  print(f"  {name}: without {result['free_tok_s']:,.0f} tok/s, with the mask {result['masked_tok_s']:,.0f} tok/s "
        f"({result['masked_tok_s'] / result['free_tok_s']:.3f}x; {result['step_overhead_ms']:+.2f} ms a step)"
        + ("" if foreign is None else f" (other processes used {foreign:.2f} cores)"), flush=True)
  return result


def compile_times(tokenizer: Tokenizer, label: str) -> list[float]:
  out = []
  for pattern in PATTERNS:
    constrain.compile_regex.cache_clear()
    start = time.perf_counter()
    automaton = constrain.compile_regex(pattern, tokenizer)
    out.append(time.perf_counter() - start)
    print(f"  compile {pattern!r} against {label} ({tokenizer.vocab_size} ids): {out[-1]:.2f} s, "
          f"{automaton.num_states} states", flush=True)
  return out


TASK_PATTERNS = {"arithmetic": r"-?\d{1,2} \.", "list": r"[a-z]+(?: , [a-z]+)* \."}


def toyworld_answers(workdir: str) -> dict:
  """For 100 held-out prompts of each of two tasks: the share of answers that match the task's answer
  format (`TASK_PATTERNS`: a number; items separated by commas, nothing else) and their gold, sampled free and
  constrained to the format (the evaluators' `sampling.regex`)."""
  from rlhf_jax import mesh as mesh_lib
  from rlhf_jax.artifacts.models import load_pretrained
  from rlhf_jax.data import toyworld
  from rlhf_jax.eval.gold import gold_evaluation
  model, params, tokenizer = load_pretrained(workdir, mesh_lib.single_device_mesh())
  world = toyworld.make_world(0)
  out = {}
  for task, pattern in TASK_PATTERNS.items():
    instances = [i for i in toyworld.eval_instances(world, 1000) if i.task == task][:100]
    for regex in ("", pattern):
      sampling = config_lib.base_config().sampling
      sampling.regex = regex
      metrics, texts = gold_evaluation(model, params, tokenizer, world, instances, sampling)
      key = f"{task}_{'masked' if regex else 'free'}"
      out[f"{key}_match"] = float(np.mean([re.fullmatch(pattern, t) is not None for t in texts]))
      out[f"{key}_gold"] = metrics[f"gold/{task}"]
      print(f"  {workdir} {task}, {'constrained' if regex else 'free'}: {100 * out[f'{key}_match']:.0f}% of "
            f"{len(texts)} answers match {pattern!r}, gold {out[f'{key}_gold']:.3f}", flush=True)
  out["compile_s"] = compile_times(tokenizer, "the run's tokenizer")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="a toyworld run: compile against its tokenizer, sample with its model")
  parser.add_argument("--quick", action="store_true", help="the toy size only, 2 repeats (a smoke test)")
  args = parser.parse_args()
  fields = machine_limits(args.quick)
  for name in (("toy",) if args.quick else ("toy", "base")):
    cfg = TransformerConfig.from_config(config_lib.model_config("gpt2", **SIZES[name]))
    r = time_decode(name, cfg, 2 if args.quick else {"toy": 6, "base": 3}[name])
    fields += [f"{name}_free_tok_s={r['free_tok_s']:.0f}", f"{name}_masked_tok_s={r['masked_tok_s']:.0f}",
               f"{name}_speed={r['masked_tok_s'] / r['free_tok_s']:.3f}",
               f"{name}_step_overhead_ms={r['step_overhead_ms']:.3f}"]
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789 .,"))
  pieces = ["".join(rng.choice(letters, int(rng.integers(1, 9)))) for _ in range(2000 if args.quick else 50_000)]
  times = compile_times(PieceTokenizer(pieces), f"{len(pieces)} random pieces")
  fields += [f"compile_s_{i}={t:.2f}" for i, t in enumerate(times)]
  if args.workdir:
    r = toyworld_answers(args.workdir)
    fields += [f"{k}={v:.3f}" for k, v in r.items() if k != "compile_s"]
  print("BENCH constrained " + " ".join(fields))


if __name__ == "__main__":
  main()
