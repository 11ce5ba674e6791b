"""toyworld evaluation: sample answers to held-out prompts and score them with the gold scorer."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlhf_jax.data import toyworld
from rlhf_jax.data.pipelines import prompt_ids
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.sampling import generate, prompt_batch, response_token_ids
from rlhf_jax.tokenizer import Tokenizer


def sample_responses(model: Transformer, params, tokenizer: Tokenizer, prompts: Sequence[str | Sequence[dict]],
                     sampling, seed: int = 0, temperature: float | None = None) -> tuple[list[str], np.ndarray]:
  """Answers to prompts (a user turn's text, or a conversation so far as messages), decoded up to the end of
  turn, sampled with `sampling` (temperature overridable). Returns (texts, ended (N,) bool)."""
  as_messages = lambda p: [{"role": "user", "content": p}] if isinstance(p, str) else p
  ids = [prompt_ids(tokenizer, as_messages(p)) for p in prompts]
  if model.config.position == "learned":  # Prompt + answer must fit the learned positions: keep BOS + the end.
    room = model.config.max_len - sampling.max_new_tokens + 1
    ids = [x if len(x) <= room else np.concatenate([x[:1], x[len(x) - room + 1:]]) for x in ids]
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
                   pad_id=tokenizer.pad_id)
    rows = min(b, len(ids) - start)
    texts.extend(tokenizer.decode(t) for t in response_token_ids(out, rows))
    ended.extend(bool(e) for e in jax.device_get(out.ended)[:rows])
  return texts, np.asarray(ended)


def gold_evaluation(model: Transformer, params, tokenizer: Tokenizer, world: toyworld.World,
                    instances: Sequence[toyworld.Instance], sampling, seed: int = 0, prefix: str = "gold"):
  """Mean gold score per task and overall, the end-of-turn rate and mean length. Returns (metrics, texts)."""
  texts, ended = sample_responses(model, params, tokenizer, [inst.prompt for inst in instances], sampling, seed)
  by_task = toyworld.mean_gold_by_task(world, instances, texts)
  metrics = {f"{prefix}/{task}": score for task, score in by_task.items()}
  metrics[f"{prefix}/end_of_turn_rate"] = float(ended.mean())
  metrics[f"{prefix}/mean_words"] = float(np.mean([len(t.split()) for t in texts]))
  return metrics, texts
