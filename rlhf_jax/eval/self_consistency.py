"""Self-consistency: sample n answers, read each one's final answer, keep the answer most of them give.

Wang et al. 2022 ("Self-consistency improves chain of thought reasoning") sample several reasoning paths
and take the majority of their final answers; Karpathy's "State of GPT" lists it among the ways to spend
more sampling on a hard prompt. It needs no reward model: only a way to read two answers as the same
(`toyworld.final_answer` for the built-in tasks: the last number of a sum, the set of items of a list, the
words of a repeated list; `generic_answer` elsewhere).

`majority` keeps, among n samples, one whose final answer is the most frequent; between answers given
equally often, the one with the most probable single sample wins (the sequence log-probability, at the
sampling temperature); that sample is kept. A sample with no final answer (None) never wins a vote unless
no sample has one, when the most probable sample is kept.

`majority_of_n` estimates the gold of that choice for n out of N samples per prompt by splitting the N
samples into N / n disjoint groups in sample order and averaging: every sample counts once, and with
n = 1 it is the mean gold of all samples, the policy's own figure. `eval/best_of_n.py` puts it beside the
reward model's and the oracle's best-of-n.
"""

from __future__ import annotations

import re
from typing import Hashable, Sequence

import numpy as np

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def generic_answer(text: str) -> Hashable | None:
  """The final answer of free text: its last number if it has one, else the text lower-cased with white
  space collapsed and final punctuation dropped; None for an empty text."""
  numbers = _NUMBER_RE.findall(text)
  if numbers:
    return numbers[-1]
  words = " ".join(text.lower().split()).rstrip(" .!?")
  return words or None


def majority(answers: Sequence[Hashable | None], log_probs: Sequence[float]) -> int:
  """The index of the sample self-consistency keeps among one prompt's samples (module doc)."""
  if len(answers) != len(log_probs) or not len(answers):
    raise ValueError(f"majority needs as many log-probs as answers, at least one: {len(answers)}, {len(log_probs)}")
  log_probs = np.asarray(log_probs, np.float64)
  groups: dict[Hashable, list[int]] = {}
  for i, answer in enumerate(answers):
    if answer is not None:
      groups.setdefault(answer, []).append(i)
  if not groups:
    return int(np.argmax(log_probs))
  best = lambda members: max(members, key=lambda i: (log_probs[i], -i))
  winner = max(groups.values(), key=lambda members: (len(members), log_probs[best(members)], -best(members)))
  return best(winner)


def majority_of_n(answers: Sequence[Sequence[Hashable | None]], log_probs: np.ndarray, values: np.ndarray,
                  n: int) -> np.ndarray:
  """(P,) the mean of `values` of the sample `majority` keeps in each of the N / n disjoint groups of n
  samples of each prompt. `answers` P lists of N final answers; `log_probs`, `values` (P, N)."""
  log_probs, values = np.asarray(log_probs, np.float64), np.asarray(values, np.float64)
  num_prompts, num = values.shape
  if log_probs.shape != values.shape or len(answers) != num_prompts or any(len(a) != num for a in answers):
    raise ValueError(f"answers, log_probs and values must all be (prompts, samples), got {len(answers)} lists, "
                     f"{log_probs.shape} and {values.shape}")
  if not 1 <= n <= num or num % n:
    raise ValueError(f"self-consistency of n={n} needs n to divide the {num} samples per prompt")
  out = np.zeros(num_prompts)
  for p in range(num_prompts):
    kept = [g + majority(answers[p][g:g + n], log_probs[p, g:g + n]) for g in range(0, num, n)]
    out[p] = values[p, kept].mean()
  return out
