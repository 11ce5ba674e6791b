"""Held-out evaluation: how every stage samples a model's answers to the evaluation prompts, and their gold.

One evaluator, so that one model has one figure. `sample_answers` is the only way an evaluation samples:
the SFT stage's gold (`gold_evaluation`), the reward stage's best-of-n, PPO's evaluations of the policy, of
the SFT model and of SFT sampled colder (`eval.policy.PolicyEvaluator`), `python -m rlhf_jax.best_of_n`, the
report's sample answers and the notebooks. The held-out toyworld prompts come from one function,
`toyworld.eval_instances`. Answer j to prompt i is drawn with its own key, fold_in(fold_in(PRNGKey(seed), i),
j) (`answer_keys`), with seed `sampling.eval_seed` everywhere, and every row is sampled as a batch of one
would be (`sampling.make_generate` with one key per row): which prompts share a batch, how many, and which
stage asks do not change an answer. What remains shared is the shape -- prompts left-padded to the longest
of the set, `sampling.batch_size` rows a call -- so that float rounding is the same too: the SFT model's
gold in the SFT stage's summary equals the `sft/gold/all` that PPO reports beside its policy.

`sample_responses` is the sampler of training data (the reward model's comparisons and its normalisation
samples): one key per batch of `sampling.batch_size` prompts, kept as it was so that data sampled before
stays reproducible.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import constrain, tools
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.data import toyworld
from rlhf_jax.eval.self_consistency import majority
from rlhf_jax.data.pipelines import prompt_ids
from rlhf_jax.model import quant
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.sampling import SampleOutput, generate, prompt_batch, response_token_ids
from rlhf_jax.tokenizer import Tokenizer

Prompt = str | Sequence[dict]  # A user turn's text, or a conversation so far as messages.


def encode_prompts(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[Prompt],
                   max_new_tokens: int) -> list[np.ndarray]:
  """Each prompt's ids as the policy reads it before answering. With learned positions, prompt + answer must
  fit them: a longer prompt keeps BOS and its end."""
  as_messages = lambda p: [{"role": "user", "content": p}] if isinstance(p, str) else p
  ids = [prompt_ids(tokenizer, as_messages(p)) for p in prompts]
  if model.config.position == "learned":
    room = model.config.max_len - max_new_tokens + 1
    ids = [x if len(x) <= room else np.concatenate([x[:1], x[len(x) - room + 1:]]) for x in ids]
  return ids


def sample_responses(model: Transformer, params, tokenizer: Tokenizer, prompts: Sequence[Prompt],
                     sampling, seed: int = 0, temperature: float | None = None) -> tuple[list[str], np.ndarray]:
  """Training data: answers to prompts, decoded up to the end of turn, sampled with `sampling` (temperature
  overridable), one key per batch (module doc). Returns (texts, ended (N,) bool)."""
  ids = encode_prompts(model, tokenizer, prompts, sampling.max_new_tokens)
  temperature = sampling.temperature if temperature is None else temperature
  width = max(len(x) for x in ids)
  lm = model.clone(heads=("lm",))
  texts, ended = [], []
  rng = jax.random.PRNGKey(seed)
  b = sampling.batch_size
  for start in range(0, len(ids), b):
    chunk = ids[start:start + b]
    chunk = chunk + [chunk[-1]] * (b - len(chunk))  # Fixed batch shape: one compilation.
    prompt_bp, mask_bp = prompt_batch(chunk, tokenizer.pad_id, length=width)
    # `generate` caches its compiled sampler per model and settings: evaluations after the first reuse it.
    out = generate(lm, params, prompt_bp, mask_bp, jax.random.fold_in(rng, start),
                   max_new_tokens=sampling.max_new_tokens, temperature=temperature, top_k=sampling.top_k,
                   top_p=sampling.top_p, stop_ids=(tokenizer.end_of_turn_id, tokenizer.eos_id),
                   pad_id=tokenizer.pad_id, tool=sampling_tool(sampling, tokenizer))
    rows = min(b, len(ids) - start)
    texts.extend(tokenizer.decode(t) for t in response_token_ids(out, rows))
    ended.extend(bool(e) for e in jax.device_get(out.ended)[:rows])
  return texts, np.asarray(ended)


def sampling_tool(sampling, tokenizer: Tokenizer) -> Optional[tools.Tool]:
  """The tool of `sampling.tool` for this tokenizer (None without one, or for a config written before it)."""
  return tools.from_name(getattr(sampling, "tool", "") or "", tokenizer)


def answer_keys(seed: int, num_prompts: int, num_samples: int = 1) -> np.ndarray:
  """The key of answer j to prompt i, fold_in(fold_in(PRNGKey(seed), i), j), for every (i, j) prompt-major:
  (num_prompts * num_samples, *key shape). Answer 0 is the same whatever num_samples is."""
  base = jax.random.PRNGKey(seed)
  fold = lambda key, n: jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
  keys = jax.vmap(lambda key: fold(key, num_samples))(fold(base, num_prompts))
  return np.asarray(keys).reshape(num_prompts * num_samples, *base.shape)


def eval_seed(sampling) -> int:
  """The key of the held-out evaluations (`sampling.eval_seed`; 0 for a config written before it existed)."""
  return int(getattr(sampling, "eval_seed", 0) or 0)


@dataclasses.dataclass
class Answers:
  """Answers to the evaluation prompts, prompt-major (answer j to prompt i at i * num_samples + j)."""
  texts: list[str]
  ended: np.ndarray  # (N,) bool: the answer ended with the end-of-turn (or end-of-text) token.
  lengths: np.ndarray  # (N,) int: sampled tokens, the stop token included.
  log_probs: np.ndarray  # (N,) float: the answer's log-probability at the sampling temperature.


OnBatch = Callable[[dict, SampleOutput, int], None]


def sample_answers(model: Transformer, params, tokenizer: Tokenizer, prompts: Sequence[Prompt], sampling, *,
                   seed: int, num_samples: int = 1, temperature: Optional[float] = None, mesh=None,
                   on_batch: Optional[OnBatch] = None) -> Answers:
  """`num_samples` answers to each prompt, sampled as the module doc says: `sampling.temperature` (or
  `temperature`), top_k, top_p and max_new_tokens, `sampling.batch_size` rows a call, answer j to prompt i
  keyed by `answer_keys(seed, ...)`, prompts left-padded to the longest of `prompts`.

  With a `mesh`, each call's rows are split over its batch axes (every process passes the same prompts and
  gets every answer back). `on_batch(batch, output, rows)` sees each call's device arrays -- `batch` holds
  "prompt" (B, P) and "mask" (B, P), of which the first `rows` rows are real (the last call repeats its last
  row) -- for scores that need them (the reward model's, the KL: `PolicyEvaluator`)."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  ids = encode_prompts(model, tokenizer, prompts, sampling.max_new_tokens)
  ids = [x for x in ids for _ in range(num_samples)]
  if not ids:
    return Answers(texts=[], ended=np.zeros(0, bool), lengths=np.zeros(0, np.int32), log_probs=np.zeros(0))
  prompt_np, mask_np = prompt_batch(ids, tokenizer.pad_id)
  keys = answer_keys(seed, len(prompts), num_samples)
  lm = model.clone(heads=("lm",))
  params = quant.for_sampling(params, getattr(sampling, "quantize", "none") or "none")  # sampling.quantize
  regex = getattr(sampling, "regex", "") or ""  # sampling.regex
  constraint = constrain.compile_regex(regex, tokenizer) if regex else None
  tool = sampling_tool(sampling, tokenizer)
  n, b = len(ids), int(sampling.batch_size)
  rows = mesh_lib.process_batch_slice(b) if mesh is not None else slice(0, b)
  texts, ended, lengths, log_probs = [], [], [], []
  with mesh_lib.activate(mesh) if mesh is not None else contextlib.nullcontext():
    for start in range(0, n, b):
      idx = np.minimum(np.arange(start, start + b), n - 1)  # The last call repeats its last row.
      batch = {"prompt": prompt_np[idx][rows], "mask": mask_np[idx][rows], "keys": keys[idx][rows]}
      if mesh is not None:
        batch = mesh_lib.shard_batch(batch, mesh)
      out = generate(lm, params, batch["prompt"], batch["mask"], batch["keys"],
                     max_new_tokens=sampling.max_new_tokens,
                     temperature=sampling.temperature if temperature is None else temperature,
                     top_k=sampling.top_k, top_p=sampling.top_p,
                     stop_ids=(tokenizer.end_of_turn_id, tokenizer.eos_id), pad_id=tokenizer.pad_id,
                     constraint=constraint, tool=tool)
      keep = min(b, n - start)
      if on_batch is not None:
        on_batch(batch, out, keep)
      host = jax.tree.map(mesh_lib.to_host, out) if mesh is not None else jax.device_get(out)
      texts.extend(tokenizer.decode(t) for t in response_token_ids(host, keep))
      ended.append(np.asarray(host.ended[:keep], bool))
      lengths.append(np.asarray(host.lengths[:keep]))
      log_probs.append(np.sum(np.where(host.mask, host.log_probs, 0.0), axis=-1)[:keep])
  return Answers(texts=texts, ended=np.concatenate(ended), lengths=np.concatenate(lengths),
                 log_probs=np.concatenate(log_probs))


def gold_metrics(world: toyworld.World, instances: Sequence[toyworld.Instance], answers: Answers,
                 prefix: str = "gold") -> dict:
  """Mean gold score per task and overall, the end-of-turn rate and the mean length in words."""
  by_task = toyworld.mean_gold_by_task(world, instances, answers.texts)
  metrics = {f"{prefix}/{task}": score for task, score in by_task.items()}
  metrics[f"{prefix}/end_of_turn_rate"] = float(answers.ended.mean())
  metrics[f"{prefix}/mean_words"] = float(np.mean([len(t.split()) for t in answers.texts]))
  return metrics


def keep_majority(instances: Sequence[toyworld.Instance], answers: Answers, num_samples: int) -> Answers:
  """One answer per instance out of `num_samples` each (prompt-major): the self-consistency majority of
  their toyworld final answers (`eval.self_consistency.majority`)."""
  kept = []
  for i, inst in enumerate(instances):
    rows = range(i * num_samples, (i + 1) * num_samples)
    kept.append(rows[majority([toyworld.final_answer(inst, answers.texts[r]) for r in rows],
                              answers.log_probs[list(rows)])])
  return Answers(texts=[answers.texts[r] for r in kept], ended=answers.ended[kept], lengths=answers.lengths[kept],
                 log_probs=answers.log_probs[kept])


def gold_evaluation(model: Transformer, params, tokenizer: Tokenizer, world: toyworld.World,
                    instances: Sequence[toyworld.Instance], sampling, prefix: str = "gold", mesh=None):
  """The model's answers to `instances` (`sample_answers`, keyed by `sampling.eval_seed`) and `gold_metrics`.
  With `sampling.vote` n > 1 each answer is the self-consistency majority of n samples (`keep_majority`).
  Returns (metrics, texts)."""
  vote = int(getattr(sampling, "vote", 1) or 1)
  answers = sample_answers(model, params, tokenizer, [inst.prompt for inst in instances], sampling,
                           seed=eval_seed(sampling), num_samples=vote, mesh=mesh)
  if vote > 1:
    answers = keep_majority(instances, answers, vote)
  return gold_metrics(world, instances, answers, prefix), answers.texts
