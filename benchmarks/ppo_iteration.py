"""Seconds per PPO iteration: ours (generate -> collect -> update) against TRL's PPOTrainer, same setting, and
ours against the limit, the iteration's model FLOPs at the float32 matmul peak measured in the same run.

Command:  python benchmarks/ppo_iteration.py [--quick] [--iterations N] [--breakdown]
Needs TRL: pip install -c constraints.txt -r benchmarks/requirements-ppo.txt   (torch stays 2.13.0, CPU)

Setting (both sides): GPT-2 style policy, reference, value and reward models with random weights, each L=4
D=128 H=4 F=512 V=1024 (separate trunks); 64 prompts of 16 tokens (TRL gets the same ids), exactly 32 new
tokens a row at T=0.7 from the full vocabulary; KL 0.05 (k1), GAE gamma 1 lambda 0.95, whitened advantages,
clip 0.2 / value clip 0.2; 4 epochs of 1 minibatch (all 64 rows); float32, no gradient checkpointing.
  ours  `stages/ppo.py:build_ppo` on random-weight stand-ins (`write_models`): `generate` -> `collect` ->
        `update`, each timed to `block_until_ready` as `step_fn` times it; and `one`, the same iteration as
        one compiled program (`setup.iteration`, rl/iteration.py), on a state of its own.
  TRL   one pass of `PPOTrainer.train`'s loop (trl 1.12.0), torch 2.13.0, 2 threads, in its own process.
The sides alternate iteration by iteration, the first a warm-up; figures are medians; ratio = TRL's s / ours.
Limit = `iteration_flops` (157 GFLOP: generate 5.4, collect 21.8, update 129.7) / the best 2048^2 matmul rate
before and after the iterations. `--breakdown` times our pieces alone, each against its limit. Where the rest
goes: the update's forward+backward+AdamW steps run at ~31% of their limit (elementwise work: GELU, norms,
softmax and their backward), generation at ~22% (31 decode steps of 64-row matmuls, the sampler, the loop).
Hardware: 2-core AMD EPYC (AVX-512), jax 0.10.2, torch 2.13.0, trl 1.12.0. Runtime ~1.8 min alone; `--quick`
is a smoke test. Measured 2026-12-07 alone (others on 0.01 cores): ours 1.16 s (generate 0.079, collect 0.128,
update 0.944), as one program 1.15 s, TRL 3.16 s: 2.72x / 2.74x; 37% of the limit (0.433 s at 363 GFLOP/s).
On a 2-core Intel Xeon (2026-12-05): 1.32 s against 2.52 s, 1.90x. More: benchmarks/README.md.
Last line: `BENCH ppo_iteration key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from machine import ForeignLoad
from rlhf_jax import config as config_lib
from rlhf_jax import losses
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts import reward_model
from rlhf_jax.model.converted import save_converted
from rlhf_jax.model.transformer import Transformer, TransformerConfig
from rlhf_jax.rl import iteration as iteration_lib
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.stages.ppo import build_ppo, strip_value
from rlhf_jax.tokenizer import NUM_SPECIAL, CharTokenizer
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from train_step import measure_matmul_peak, model_flops_per_token

BATCH = 64
HELDOUT = 16  # Evaluation prompts: the setup needs some; nothing here evaluates.
PROMPT_LEN = 16
NEW_TOKENS = 32
TEMPERATURE = 0.7
EPOCHS = 4
MINIBATCHES = 1
KL_COEF = 0.05
MODEL = dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, vocab_size=1024, max_len=64)
VOCAB = MODEL["vocab_size"]
# The stand-in tokenizer: one character per ordinary id, so the random prompts cover the whole vocabulary.
CHARS = [chr(0x4E00 + i) for i in range(VOCAB - NUM_SPECIAL)]
STOP_LOGIT = -40.0  # The stand-in policy's logit of its stop tokens: never sampled (see `write_models`).
TARGET, GOAL = 1.5, 3.0  # Our iterations/s over TRL's.


# ---------------------------------------------------------------------------------------------------------
# Ours.


def write_models(directory: str, tokenizer: CharTokenizer, mesh) -> tuple[str, str]:
  """Random-weight stand-ins for an SFT run and a reward run, in the forms `build_ppo` reads them: a converted
  checkpoint with its tokenizer (init_from) and a reward workdir's reward_model/ with its reward.json (no
  likelihood term, no reward token). Returns (init_from, reward_from).

  The policy never samples the tokenizer's stop tokens (end of turn, EOS), so every row runs NEW_TOKENS tokens
  as on TRL's side, which has no stop token: its final norm holds coordinate 0 at exactly 1 (scale 0, bias 1)
  and the stop tokens' (tied) embedding rows read STOP_LOGIT there, so their logits sit near STOP_LOGIT while
  the others stay near 0 (p < 1e-25 a token at T=0.7). Same shapes and arithmetic as any weights."""
  cfg = TransformerConfig.from_config(config_lib.model_config("gpt2", **MODEL))
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  policy = jax.device_get(state_lib.init_params(Transformer(cfg, heads=("lm",)), keys[0], mesh)[0])
  scale, bias = policy["final_norm"]["scale"].copy(), policy["final_norm"]["bias"].copy()
  scale[0], bias[0] = 0.0, 1.0
  embedding = policy["embed"]["embedding"].copy()
  embedding[[tokenizer.end_of_turn_id, tokenizer.eos_id], 0] = STOP_LOGIT
  policy = {**policy, "final_norm": {"scale": scale, "bias": bias}, "embed": {"embedding": embedding}}
  scorer = jax.device_get(state_lib.init_params(Transformer(cfg, heads=("reward",)), keys[1], mesh)[0])
  init_from = os.path.join(directory, "sft")
  reward_from = os.path.join(directory, "reward")
  rm_dir = os.path.join(reward_from, reward_model.MODEL_DIR)
  for where, params in ((init_from, policy), (rm_dir, scorer)):
    save_converted(where, cfg, params)
    tokenizer.save(where)
  spec = reward_model.RewardModelSpec(loss="pairwise", reward_token=False, seq_len=PROMPT_LEN + NEW_TOKENS,
                                      likelihood_weight=0.0, normalization={"gain": 1.0, "bias": 0.0})
  spec.write(os.path.join(rm_dir, reward_model.SPEC_FILE))
  return init_from, reward_from


def write_prompts(path: str, tokenizer: CharTokenizer) -> None:
  """BATCH + HELDOUT user turns of PROMPT_LEN random characters (JSONL {"prompt"}): encoded, each is BOS, the
  user's role token, the text, the end of turn and the assistant's role token, cut to PROMPT_LEN tokens --
  BOS and the last PROMPT_LEN - 1 (13 characters, end of turn, assistant) -- so that no row is padded."""
  rng = np.random.default_rng(0)
  chars = np.asarray(tokenizer.chars)
  with open(path, "w") as f:
    for _ in range(BATCH + HELDOUT):
      f.write(json.dumps({"prompt": "".join(rng.choice(chars, PROMPT_LEN))}) + "\n")


def ppo_config(init_from: str, reward_from: str, prompts_path: str, total_iterations: int):
  """The benchmark's setting as a PPO config (the base config's defaults otherwise)."""
  config = config_lib.base_config()
  config.stage, config.init_from, config.ppo.reward_from = "ppo", init_from, reward_from
  config.ppo.prompts_path, config.data.val_fraction = prompts_path, HELDOUT / (BATCH + HELDOUT)
  config.ppo.prompt_len, config.ppo.max_new_tokens, config.ppo.temperature = PROMPT_LEN, NEW_TOKENS, TEMPERATURE
  config.ppo.epochs, config.ppo.minibatches, config.ppo.kl_coef = EPOCHS, MINIBATCHES, KL_COEF
  config.ppo.kl_estimator, config.ppo.unfinished_penalty = "k1", 0.0  # TRL: missing_eos_penalty=None.
  config.train.batch_size, config.train.steps = BATCH, total_iterations
  return config_lib.finalize(config)


class Ours:
  """Our PPO iteration: a `stages/ppo.py:build_ppo` setup on random-weight stand-ins (`write_models`), its
  `generate`, `collect` and `update` called as its `step_fn` calls them, on its own batches; `compile()`
  first, then `iteration()`."""

  def __init__(self, total_iterations: int):
    mesh = mesh_lib.make_mesh(config_lib.mesh_config(), devices=jax.devices()[:1])
    tokenizer = CharTokenizer(CHARS)
    with tempfile.TemporaryDirectory(prefix="ppo_iteration_") as directory:  # Read while building, not after.
      init_from, reward_from = write_models(directory, tokenizer, mesh)
      prompts_path = os.path.join(directory, "prompts.jsonl")
      write_prompts(prompts_path, tokenizer)
      config = ppo_config(init_from, reward_from, prompts_path, total_iterations)
      self.setup = setup = build_ppo(config, os.path.join(directory, "ppo"), mesh)
    self.state = setup.state
    # Every iteration's rows, drawn now: while a grain iterator lives, its prefetch threads keep a core busy.
    data = setup.data()
    self.rows = [next(data) for _ in range(1 + total_iterations)]  # The first for compile() and breakdown().
    data.close()
    self.prompt_bp = setup.train_prompts.tokens  # TRL's prompts: the same ids.
    assert self.prompt_bp.shape == (BATCH, PROMPT_LEN) and setup.train_prompts.mask.all(), \
        f"ours: {self.prompt_bp.shape} prompts, some padded; expected {BATCH} x {PROMPT_LEN} tokens, none padded"
    self.kl_ref = setup.ref_params if setup.settings.kl_needs_reference else None  # As `step_fn` passes it.
    self.compiled = None
    # The same iterations as one program each (rl/iteration.py: ppo.iterations_per_call=1), on a state of
    # their own (each call donates it).
    self.frozen = {"ref": setup.ref_params, "rm": setup.rm_params}
    self.one_program = iteration_lib.jit_iterations(
        setup.iteration, setup.shardings, jax.tree.map(lambda x: x.sharding, self.frozen), mesh, per_call=1, seeds=1)
    self.state_one = jax.tree.map(jnp.copy, self.state)
    for tree in (self.state.params, setup.ref_params, setup.rm_params):
      dtypes = {str(x.dtype) for x in jax.tree.leaves(tree)}
      assert dtypes == {"float32"}, f"ours: parameters in {dtypes}, not float32"

  def compile(self) -> dict:
    """Ahead-of-time compiles generate and collect; `update` (`steps.jit_ppo_update`) compiles at its first
    call, so it is called once here on a copy of the state (it donates it) and a real rollout. Returns the
    seconds each took (update: compile and one run)."""
    s, key = self.setup, jax.random.PRNGKey(0)
    params, batch = self.state.params, s.make_batch(self.rows[0])
    seconds = {}
    start = time.perf_counter()
    gen_args = (strip_value(params["actor"]), batch["prompt"], batch["prompt_mask"], key)
    generate = s.generate.lower(*gen_args).compile()
    seconds["generate"] = time.perf_counter() - start
    sample = jax.eval_shape(s.generate, *gen_args)
    start = time.perf_counter()
    collect_args = (params["actor"], params.get("critic"), s.ref_params, s.rm_params, batch["prompt"],
                    batch["prompt_mask"])
    collect = s.collect.lower(*collect_args, sample).compile()
    seconds["collect"] = time.perf_counter() - start
    rollout = collect(*collect_args, generate(*gen_args))
    start = time.perf_counter()
    jax.block_until_ready(s.update(jax.tree.map(jnp.copy, self.state), rollout, batch.get("ptx"), key,
                                   self.kl_ref))
    seconds["update"] = time.perf_counter() - start
    self.compiled = dict(generate=generate, collect=collect, update=s.update)
    start = time.perf_counter()
    jax.block_until_ready(self.one_program(jax.tree.map(jnp.copy, self.state_one), batch, key, self.frozen))
    seconds["one program"] = time.perf_counter() - start
    return seconds

  def iteration_one_program(self, i: int) -> float:
    """Iteration i as one compiled program (generation, rollout pass and update, no host step between);
    returns its seconds, outputs ready."""
    batch = self.setup.make_batch(self.rows[1 + i])
    start = time.perf_counter()
    self.state_one, metrics = jax.block_until_ready(
        self.one_program(self.state_one, batch, self.setup.rng, self.frozen))
    seconds = time.perf_counter() - start
    assert int(metrics["ppo/decode_steps"]) == NEW_TOKENS, "ours (one program): some row stopped early"
    assert np.isfinite(float(metrics["train/loss"])), "ours (one program): non-finite loss"
    return seconds

  def iteration(self, i: int) -> dict:
    """One PPO iteration; returns the seconds of each phase (outputs ready) and of the whole."""
    c, s, params = self.compiled, self.setup, self.state.params
    batch = s.make_batch(self.rows[1 + i])
    rng = jax.random.fold_in(s.rng, i)
    start = time.perf_counter()
    sample = jax.block_until_ready(c["generate"](strip_value(params["actor"]), batch["prompt"],
                                                 batch["prompt_mask"], jax.random.fold_in(rng, 0)))
    generated = time.perf_counter()
    rollout = jax.block_until_ready(c["collect"](params["actor"], params.get("critic"), s.ref_params, s.rm_params,
                                                 batch["prompt"], batch["prompt_mask"], sample))
    collected = time.perf_counter()
    self.state, metrics = jax.block_until_ready(c["update"](self.state, rollout, batch.get("ptx"),
                                                            jax.random.fold_in(rng, 1), self.kl_ref))
    end = time.perf_counter()
    steps_taken, in_mask = int(sample.num_steps), int(np.asarray(sample.mask).sum())
    assert steps_taken == NEW_TOKENS and in_mask == BATCH * NEW_TOKENS, \
        f"ours sampled {steps_taken} steps, {in_mask} tokens in the mask: some row stopped early"
    loss = float(metrics["train/loss"])
    assert np.isfinite(loss), f"ours: update loss {loss}"
    return dict(generate=generated - start, collect=collected - generated, update=end - collected,
                total=end - start)

  def breakdown(self, repeats: int) -> dict:
    """Median seconds of each piece of an iteration, each jitted alone (see the module docstring)."""
    setup = self.setup
    actor, critic, rm, s, txs = setup.actor, setup.critic, setup.reward_model, setup.settings, setup.txs
    ref_params, rm_params, tokenizer = setup.ref_params, setup.rm_params, setup.tokenizer
    params, opt = self.state.params, self.state.opt_state
    batch, key = setup.make_batch(self.rows[0]), jax.random.PRNGKey(7)
    p, m = batch["prompt"], batch["prompt_mask"]
    sample = self.compiled["generate"](strip_value(params["actor"]), p, m, key)
    rollout = self.compiled["collect"](params["actor"], params["critic"], ref_params, rm_params, p, m, sample)
    targets, _ = steps.ppo_targets(rollout, jnp.float32(KL_COEF), s)
    tokens, mask = rollout.tokens, rollout.mask

    def rm_forward(rm_params):
      inputs = rollout_lib.reward_inputs(p, m, tokens, mask, rollout.ended, end_of_turn_id=tokenizer.end_of_turn_id,
                                         reward_id=None, pad_id=tokenizer.pad_id)
      return rm.apply({"params": rm_params}, *inputs[:3]).rewards

    def actor_step(actor_params, opt_state):
      def loss_fn(q):  # As make_ppo_update's actor loss (separate critic, no ptx).
        log_probs, scaled, _ = rollout_lib.policy_outputs(actor, q, p, m, tokens, mask, s.temperature)
        pg_sum, count, aux = losses.ppo_policy_loss(log_probs, targets.old_log_probs, targets.advantages, mask,
                                                    s.clip_eps)
        ent_sum, _ = losses.entropy(scaled if s.ent_coef else jax.lax.stop_gradient(scaled), mask)
        return (pg_sum - s.ent_coef * ent_sum) / count, (ent_sum, aux)
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(actor_params)
      updates, opt_state = txs["actor"].update(grads, opt_state, actor_params)
      return optax.apply_updates(actor_params, updates), opt_state, aux

    def critic_step(critic_params, opt_state):
      def loss_fn(q):
        values = rollout_lib.critic_values(critic, q, p, m, tokens, mask)
        v_sum, count, aux = losses.ppo_value_loss(values, targets.old_values, targets.returns, mask,
                                                  s.value_clip_eps)
        return v_sum / count, aux
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(critic_params)
      updates, opt_state = txs["critic"].update(grads, opt_state, critic_params)
      return optax.apply_updates(critic_params, updates), opt_state, aux

    pieces = {
        "generate": (self.compiled["generate"], (strip_value(params["actor"]), p, m, key)),
        "collect: actor forward": (jax.jit(lambda q: rollout_lib.policy_outputs(
            actor, q, p, m, tokens, mask, s.temperature)[0]), (params["actor"],)),
        "collect: reference forward": (jax.jit(lambda q: rollout_lib.policy_outputs(
            actor, q, p, m, tokens, mask, s.temperature)[0]), (ref_params,)),
        "collect: critic forward": (jax.jit(lambda q: rollout_lib.critic_values(critic, q, p, m, tokens, mask)),
                                    (params["critic"],)),
        "collect: reward forward": (jax.jit(rm_forward), (rm_params,)),
        "update: actor fwd+bwd+AdamW (1 minibatch)": (jax.jit(actor_step), (params["actor"], opt["actor"])),
        "update: critic fwd+bwd+AdamW (1 minibatch)": (jax.jit(critic_step), (params["critic"], opt["critic"])),
    }
    for fn, args in pieces.values():
      jax.block_until_ready(fn(*args))
    times = {name: [] for name in pieces}
    for _ in range(repeats):  # Round-robin, so that load changes fall on every piece alike.
      for name, (fn, args) in pieces.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------------------
# Model FLOPs, against the float32 matmul peak measured in the same run.


def forward_flops(cfg: TransformerConfig, tokens: int, context: int, head_tokens: int, head_width: int) -> float:
  """Model FLOPs of a forward pass of `tokens` tokens, each attending to `context` keys, with an output head of
  `head_width` outputs (V for the LM head, 1 for a value or reward head) at `head_tokens` of them:

    tokens (2 N_trunk + 4 L context H K) + head_tokens 2 D head_width

  A third of `model_flops_per_token` (train_step.py: 6 N + 12 L T H K forward and backward, N the matmul
  parameters with the LM head's V D) less the LM head's 2 V D a token, put back where a head is applied.
  Gathers, norms, activations, softmaxes and the sampler are elementwise and do not count."""
  trunk = model_flops_per_token(cfg, context) / 3 - 2.0 * cfg.vocab_size * cfg.d_model
  return tokens * trunk + head_tokens * 2.0 * cfg.d_model * head_width


def iteration_flops(setup) -> dict:
  """Model FLOPs of one PPO iteration of `setup` (BATCH rows, P = PROMPT_LEN, N = NEW_TOKENS, S = P + N), by
  phase and by the pieces `Ours.breakdown` times:
    generate  the prefill (B P tokens over P keys, the LM head at the last column) and N - 1 decode steps
              (step n: B tokens over the P + n keys written so far -- the causal prefix, not the padded
              cache a loop reads -- and the LM head)
    collect   forwards over the S columns: actor and reference (LM head at the N response columns), critic
              (value head there), reward model (S + 2 columns: the appended end of turn and a pad column; its
              head at all of them)
    update    epochs x (forward + backward = 3 forwards) of the actor and the critic over all B rows; the
              old log-probs are the collect's actor forward, not recomputed here
  Attention counts the full S x S square in the full-sequence passes, as `model_flops_per_token` does."""
  actor, ref = setup.actor.config, setup.reference.config
  critic, rm = setup.critic.config, setup.reward_model.config
  b, p, n, v = BATCH, PROMPT_LEN, NEW_TOKENS, actor.vocab_size
  s = p + n
  prefill = forward_flops(actor, b * p, p, b, v)
  decode = sum(forward_flops(actor, b, p + i, b, v) for i in range(1, n))
  pieces = {
      "generate": prefill + decode,
      "collect: actor forward": forward_flops(actor, b * s, s, b * n, v),
      "collect: reference forward": forward_flops(ref, b * s, s, b * n, ref.vocab_size),
      "collect: critic forward": forward_flops(critic, b * s, s, b * n, 1),
      "collect: reward forward": forward_flops(rm, b * (s + 2), s + 2, b * (s + 2), 1),
  }
  pieces["update: actor fwd+bwd+AdamW (1 minibatch)"] = 3 * pieces["collect: actor forward"] / MINIBATCHES
  pieces["update: critic fwd+bwd+AdamW (1 minibatch)"] = 3 * pieces["collect: critic forward"] / MINIBATCHES
  phases = dict(generate=pieces["generate"],
                collect=sum(f for k, f in pieces.items() if k.startswith("collect")),
                update=EPOCHS * MINIBATCHES * sum(f for k, f in pieces.items() if k.startswith("update")))
  phases["total"] = sum(phases.values())
  return dict(phases=phases, pieces=pieces)


# ---------------------------------------------------------------------------------------------------------


def median(rows, key):
  return statistics.median(r[key] for r in rows)


class TRLWorker:
  """TRL's side in its own process (benchmarks/ppo_iteration_trl.py), in lockstep with this one: `wait()`
  returns the phases of the iteration it just finished (or None when it has finished training) and leaves
  it blocked until `go()`."""

  def __init__(self, prompt_bp: np.ndarray, iterations: int, threads: int = 2):
    setting = dict(model=MODEL, batch=BATCH, prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS, temperature=TEMPERATURE,
                   epochs=EPOCHS, minibatches=MINIBATCHES, kl_coef=KL_COEF, iterations=iterations, threads=threads,
                   prompts=prompt_bp.tolist())
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ppo_iteration_trl.py")
    self.proc = subprocess.Popen([sys.executable, script, json.dumps(setting)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, bufsize=1)
    self.info = self._receive()["ready"]

  def _receive(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(MARK):
        return json.loads(line[len(MARK):])
    raise RuntimeError(f"ppo_iteration_trl.py exited with status {self.proc.wait()} (its error is above)")

  def go(self):
    self.proc.stdin.write("next\n")
    self.proc.stdin.flush()

  def wait(self):
    message = self._receive()
    return message.get("phases")

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()


MARK = "@@ppo_iteration "


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="2 timed iterations a side (smoke test)")
  parser.add_argument("--iterations", type=int, default=None, help="timed iterations a side (default 7)")
  parser.add_argument("--breakdown", action="store_true", help="then time our pieces alone (see the docstring)")
  args = parser.parse_args()
  timed = args.iterations or (2 if args.quick else 7)
  if timed < 1:
    parser.error("--iterations must be >= 1")

  wall = time.perf_counter()
  load_start = os.getloadavg()[0]
  platform = jax.devices()[0].platform
  total = 1 + timed  # One warm-up iteration a side.
  ours = Ours(total)
  prompt_bp = ours.prompt_bp
  print(f"ppo_iteration benchmark{' --quick (smoke numbers)' if args.quick else ''}: jax {jax.__version__}, "
        f"{platform}, {os.cpu_count()} CPUs, load average {load_start:.2f}", flush=True)
  print(f"policy, reference, value and reward models L={MODEL['n_layers']} D={MODEL['d_model']} "
        f"H={MODEL['n_heads']} F={MODEL['d_ff']} V={VOCAB}; {BATCH} prompts x {PROMPT_LEN} tokens, {NEW_TOKENS} "
        f"new tokens at T={TEMPERATURE}; {EPOCHS} epochs x {MINIBATCHES} minibatch; float32", flush=True)
  print("ours: compiling...", end="", flush=True)
  compile_s = ours.compile()
  print(" " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()), flush=True)
  # The limit: the iteration's model FLOPs at the float32 matmul peak, measured before TRL's process starts
  # and again after it has ended (the better of the two counts; this CPU's rate drifts by ~10%).
  peak_repeats = 3 if args.quick else 5
  print("matmul peak (float32), before the iterations:", flush=True)
  rates = [measure_matmul_peak((2048,), peak_repeats)]
  print("TRL: starting its process...", end="", flush=True)
  worker = TRLWorker(prompt_bp, total)
  info = worker.info
  print(f" torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, torch threads "
        f"{info['threads']} (OMP_WAIT_POLICY={info['omp_wait_policy']})", flush=True)
  print("alternating iterations (TRL, then ours), the first of each a warm-up:", flush=True)

  results = {"ours": [], "trl": [], "one": []}
  try:
    worker.go()
    while (phases := worker.wait()) is not None:
      i = len(results["trl"])
      results["trl"].append(phases)
      load = ForeignLoad()
      mine = ours.iteration(i)
      mine["foreign"] = load.cores()
      results["ours"].append(mine)
      load = ForeignLoad()
      results["one"].append(dict(total=ours.iteration_one_program(i), foreign=load.cores()))
      label = "warm-up" if i == 0 else f"{i}/{timed}"
      print(f"  iteration {label}: TRL {phases['total']:.2f} s (generate {phases['generate']:.2f}, rollout "
            f"{phases['rollout']:.2f}, update {phases['update']:.2f}); ours {mine['total']:.2f} s (generate "
            f"{mine['generate']:.2f}, collect {mine['collect']:.2f}, update {mine['update']:.2f}); ours as one "
            f"program {results['one'][-1]['total']:.2f} s", flush=True)
      worker.go()
  finally:
    worker.close()
  if len(results["trl"]) != total:
    raise AssertionError(f"TRL ran {len(results['trl'])} iterations, expected {total}")
  warm = {side: rows[0]["total"] for side, rows in results.items()}
  rows = {side: rows[1:] for side, rows in results.items()}

  breakdown = ours.breakdown(repeats=3 if args.quick else 7) if args.breakdown else None
  print("matmul peak (float32), after the iterations:", flush=True)
  rates.append(measure_matmul_peak((2048,), peak_repeats))
  peak = max(r[2048]["best"] for r in rates)
  peak_foreign = [r[2048]["foreign"] for r in rates if r[2048]["foreign"] is not None]
  peak_foreign = statistics.mean(peak_foreign) if peak_foreign else None
  flops = iteration_flops(ours.setup)
  load_end = os.getloadavg()[0]

  ours_s, trl_s, one_s = median(rows["ours"], "total"), median(rows["trl"], "total"), median(rows["one"], "total")
  ratio, ratio_one = trl_s / ours_s, trl_s / one_s
  foreign = {side: [r["foreign"] for r in rs if r["foreign"] is not None] for side, rs in rows.items()}
  foreign = {side: statistics.mean(f) if f else None for side, f in foreign.items()}
  spread = lambda rs: f"{min(r['total'] for r in rs):.2f}-{max(r['total'] for r in rs):.2f}"
  fmt_foreign = lambda f: "?" if f is None else f"{f:.2f}"
  ph = {k: median(rows["ours"], k) for k in ("generate", "collect", "update")}
  tp = {k: median(rows["trl"], k) for k in ("generate", "rollout", "update")}
  print()
  header = f"{'side':<5} {'s/iter':>7} {'min-max':>11} {'iter/s':>7} {'others':>6}  phases (median s)"
  print(header)
  print("-" * 100)
  print(f"{'ours':<5} {ours_s:7.2f} {spread(rows['ours']):>11} {1 / ours_s:7.2f} {fmt_foreign(foreign['ours']):>6}  "
        f"generate {ph['generate']:.3f}, collect {ph['collect']:.3f}, update {ph['update']:.3f}")
  print(f"{'one':<5} {one_s:7.2f} {spread(rows['one']):>11} {1 / one_s:7.2f} {fmt_foreign(foreign['one']):>6}  "
        "ours as one compiled program (rl/iteration.py), no host step between the phases")
  print(f"{'TRL':<5} {trl_s:7.2f} {spread(rows['trl']):>11} {1 / trl_s:7.2f} {fmt_foreign(foreign['trl']):>6}  "
        f"rollout {tp['rollout']:.3f} (of which generate {tp['generate']:.3f}), update {tp['update']:.3f}")
  print(f"(median over {timed} timed iterations a side, alternating; others: cores other processes used "
        f"meanwhile; warm-up iteration ours {warm['ours']:.2f} s, TRL {warm['trl']:.2f} s; our compile "
        f"{sum(compile_s.values()):.1f} s, in no iteration)")
  verdict = "goal met" if ratio >= GOAL else "target met, goal not" if ratio >= TARGET else "target NOT met"
  print(f"ratio: ours {ratio:.2f}x TRL's iterations/s (target {TARGET}x, goal {GOAL}x: {verdict}); as one "
        f"program {ratio_one:.2f}x")

  measured = {**ph, "total": ours_s, "one program": one_s}
  limit = {k: f / peak for k, f in flops["phases"].items()}
  limit["one program"] = limit["total"]
  flops["phases"]["one program"] = flops["phases"]["total"]
  frac = {k: limit[k] / measured[k] for k in limit}
  before_after = ", ".join(f"{r[2048]['best'] / 1e9:.1f}" for r in rates)
  print(f"\nours against the limit: model FLOPs at the float32 matmul peak of this run, {peak / 1e9:.1f} GFLOP/s "
        f"(best 2048x2048 product; before/after the iterations {before_after})")
  print(f"  {'phase':<11} {'GFLOP':>7} {'measured s':>10} {'limit s':>8} {'limit/measured':>14} {'GFLOP/s':>8}")
  for k in ("generate", "collect", "update", "total", "one program"):
    print(f"  {k:<11} {flops['phases'][k] / 1e9:7.2f} {measured[k]:10.3f} {limit[k]:8.3f} {frac[k]:14.1%} "
          f"{flops['phases'][k] / measured[k] / 1e9:8.1f}")
  if peak_foreign is not None and foreign["ours"] is not None and abs(peak_foreign - foreign["ours"]) > 0.25:
    print(f"  WARNING: other processes used {peak_foreign:.2f} cores while the peak was measured and "
          f"{foreign['ours']:.2f} during our iterations: limit/measured compares different shares of the machine")
  if breakdown:
    print("\nour pieces, each jitted alone (median s; limit: its model FLOPs at the peak):")
    for name, seconds in breakdown.items():
      piece_limit = flops["pieces"][name] / peak
      print(f"  {name:<44} {seconds:.3f}  (limit {piece_limit:.3f}, {piece_limit / seconds:5.1%})")
    per_epoch = (breakdown["update: actor fwd+bwd+AdamW (1 minibatch)"]
                 + breakdown["update: critic fwd+bwd+AdamW (1 minibatch)"])
    collect = sum(v for k, v in breakdown.items() if k.startswith("collect"))
    print(f"  sums: collect {collect:.3f} (in the iteration {ph['collect']:.3f}), update {EPOCHS} x {per_epoch:.3f}"
          f" = {EPOCHS * per_epoch:.3f} (in the iteration {ph['update']:.3f})")
  elapsed = time.perf_counter() - wall
  busy = max(load_start, load_end) > 0.5
  print(f"total {elapsed:.0f} s; load average {load_start:.2f} at start, {load_end:.2f} at end"
        + ("  (the machine was busy: absolute seconds are not comparable across runs; the ratio holds up better)"
           if busy else ""))

  fields = [f"ours_s_per_iter={ours_s:.3f}", f"trl_s_per_iter={trl_s:.3f}", f"ratio={ratio:.2f}",
            f"ours_generate_s={ph['generate']:.3f}", f"ours_collect_s={ph['collect']:.3f}",
            f"ours_update_s={ph['update']:.3f}", f"trl_generate_s={tp['generate']:.3f}",
            f"trl_rollout_s={tp['rollout']:.3f}", f"trl_update_s={tp['update']:.3f}",
            f"ours_compile_s={sum(compile_s.values()):.1f}", f"iterations={timed}",
            f"others_cores_ours={fmt_foreign(foreign['ours'])}", f"others_cores_trl={fmt_foreign(foreign['trl'])}",
            f"peak_gflops={peak / 1e9:.1f}", f"iteration_gflop={flops['phases']['total'] / 1e9:.2f}",
            f"limit_s={limit['total']:.3f}", f"frac_of_limit={frac['total']:.3f}",
            f"one_program_s_per_iter={one_s:.3f}", f"ratio_one_program={ratio_one:.2f}",
            f"one_program_frac_of_limit={frac['one program']:.3f}",
            f"generate_frac={frac['generate']:.3f}", f"collect_frac={frac['collect']:.3f}",
            f"update_frac={frac['update']:.3f}", f"others_cores_peak={fmt_foreign(peak_foreign)}",
            f"quick={int(args.quick)}", f"load={load_start:.2f}", f"device={platform}"]
  print("BENCH ppo_iteration " + " ".join(fields))


if __name__ == "__main__":
  main()
