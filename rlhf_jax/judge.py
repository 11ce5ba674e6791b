"""AI feedback: a language model judges answers against written principles (RLAIF, Constitutional AI), and the
same model's "yes" against "no" is a generative reward model (GenRM).

Two questions, each a user turn the judge answers with one label (`JudgeSpec`):

  pairwise   "{principle} question : {prompt} answer a : {first} answer b : {second} which answer is better ?"
             -> "a" or "b"
  pointwise  "question : {prompt} answer : {answer} is the answer good ?" -> "yes" or "no"

The judge never writes: its verdict is read from the next-token distribution after the assistant role token,
restricted to the first token of each label (which must differ; `JudgeSpec` checks the judge's tokenizer).

- `preference`: the probability that `first` is better under one principle, the mean of the two orders,
  P("a" | first, second) and P("b" | second, first), each renormalised over the two labels. A model that
  always answers "a" (position bias) gives 0.5 either way, and swapping the answers gives exactly 1 - p.
  Several principles vote by the mean of their probabilities.
- `rank`: K answers to one prompt, judged in every pair: an answer's score is its expected number of wins,
  the ranking is by score (equal scores tie, as the simulated annotator's ties), and the record's confidence
  is the mean probability the judge gives to the ranking's order of each of its untied pairs.
- `verdicts`: log P("yes") - log P("no"), the pointwise judge's log-odds: the generative reward model's score.

Principles files (`read_principles`) are plain UTF-8 text, one principle per line; blank lines and lines that
start with "#" are skipped. Any causal LM this codebase loads can judge (`artifacts.models.load_judge`: a
workdir, a converted or a Hugging Face checkpoint, with its own tokenizer -- answers reach it as text). toyworld
trains one (`toyworld.judge_pairs`, `toyworld.judge_verdicts`, the SFT stage's `toyworld.judge_sft`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data.pipelines import prompt_ids
from rlhf_jax.errors import UserError
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.tokenizer import Tokenizer

MAX_PRINCIPLE_CHARS = 300
TIE = 1e-6  # Expected-win scores closer than this tie (identical answers score exactly alike).


def read_principles(path: str) -> list[str]:
  """The principles of a file, one per line (blank lines and "#" comments skipped); errors name the file and
  line: not UTF-8, a principle with "{" or "}" (templates would read it as a field), longer than
  `MAX_PRINCIPLE_CHARS`, or none at all."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"config key 'judge.principles': cannot read {path}: {e.strerror}") from None
  principles = []
  for number, raw in enumerate(data.split(b"\n"), start=1):
    try:
      line = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
      raise UserError(f"{path}:{number}: not UTF-8 text") from None
    if not line or line.startswith("#"):
      continue
    if "{" in line or "}" in line:
      raise UserError(f"{path}:{number}: a principle may not contain '{{' or '}}'")
    if len(line) > MAX_PRINCIPLE_CHARS:
      raise UserError(f"{path}:{number}: a principle of {len(line)} characters; at most {MAX_PRINCIPLE_CHARS}")
    principles.append(line)
  if not principles:
    raise UserError(f"{path}: no principles (one per line; blank lines and '#' lines are skipped)")
  return principles


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
  """The two questions and their labels (the config's `judge` section)."""
  pair_template: str = ("{principle} question : {prompt} answer a : {first} answer b : {second} "
                        "which answer is better ?")
  pair_labels: tuple[str, str] = ("a", "b")
  point_template: str = "question : {prompt} answer : {answer} is the answer good ?"
  point_labels: tuple[str, str] = ("yes", "no")

  @classmethod
  def from_config(cls, judge) -> "JudgeSpec":
    spec = cls(pair_template=judge.pair_template, pair_labels=_labels(judge.pair_labels, "judge.pair_labels"),
               point_template=judge.point_template,
               point_labels=_labels(judge.point_labels, "judge.point_labels"))
    spec.check()
    return spec

  def check(self) -> None:
    for key, template, fields in (("judge.pair_template", self.pair_template, ("principle", "prompt", "first",
                                                                               "second")),
                                  ("judge.point_template", self.point_template, ("prompt", "answer"))):
      try:
        rendered = template.format(**{f: f"\0{f}\0" for f in fields})
      except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"config key '{key}': {template!r} is not a template of {', '.join(fields)} ({e})") from None
      missing = [f for f in fields if f"\0{f}\0" not in rendered]
      if missing:
        raise UserError(f"config key '{key}': the template lacks {', '.join('{' + f + '}' for f in missing)}")

  def pair_text(self, principle: str, prompt, first: str, second: str) -> str:
    return self.pair_template.format(principle=principle, prompt=prompt_text(prompt), first=first, second=second)

  def point_text(self, prompt, answer: str) -> str:
    return self.point_template.format(prompt=prompt_text(prompt), answer=answer)

  def pair_conversation(self, principle: str, prompt, first: str, second: str, first_better: bool) -> list[dict]:
    """A judging demonstration: the pairwise question and its label ("a ." or "b .")."""
    label = self.pair_labels[0 if first_better else 1]
    return [{"role": "user", "content": self.pair_text(principle, prompt, first, second)},
            {"role": "assistant", "content": f"{label} ."}]

  def point_conversation(self, prompt, answer: str, good: bool) -> list[dict]:
    """A verdict demonstration: the pointwise question and its label ("yes ." or "no .")."""
    label = self.point_labels[0 if good else 1]
    return [{"role": "user", "content": self.point_text(prompt, answer)},
            {"role": "assistant", "content": f"{label} ."}]


def _labels(value: str, key: str) -> tuple[str, str]:
  labels = tuple(part.strip() for part in value.split(","))
  if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
    raise UserError(f"config key '{key}': expected two different labels separated by a comma, got {value!r}")
  return labels


def prompt_text(prompt) -> str:
  """A user's prompt as the judge reads it: the text, or a conversation's turns as "role : content"."""
  if isinstance(prompt, str):
    return prompt
  return " ".join(f"{m['role']} : {m['content']}" for m in prompt)


def label_ids(tokenizer: Tokenizer, labels: Sequence[str], key: str) -> tuple[int, int]:
  """The first token of each label, as an assistant turn's content starts with it; they must differ."""
  ids = tuple(tokenizer.encode(label)[:1] for label in labels)
  if not all(ids) or ids[0] == ids[1]:
    raise UserError(f"config key '{key}': the labels {list(labels)} must begin with different tokens in the "
                    f"judge's tokenizer (they begin with {[i[:1] for i in ids]})")
  return ids[0][0], ids[1][0]


class Judge:
  """A causal LM asked the two questions. `model` has an LM head; `params` its parameters; `tokenizer` its own.

  `label_log_probs(texts, ids)` is the one forward: each text as a user turn, then the assistant role token,
  and the log-probabilities of the two label tokens there, (N, 2), through one compiled program per length
  bucket, `chunk` rows a call."""

  def __init__(self, model: Transformer, params, tokenizer: Tokenizer, spec: JudgeSpec, mesh, chunk: int = 64):
    self.model, self.params, self.tokenizer, self.spec, self.mesh = model, params, tokenizer, spec, mesh
    self.pair_ids = label_ids(tokenizer, spec.pair_labels, "judge.pair_labels")
    self.point_ids = label_ids(tokenizer, spec.point_labels, "judge.point_labels")
    self.max_len = model.config.max_len if model.config.position == "learned" else None
    self.chunk = chunk
    trunk, lm = model.clone(heads=(), deterministic=True), model.clone(heads=("lm",), deterministic=True)

    def label_rows(labels, params, tokens_nt, start_n, end_n):
      del start_n
      hidden_ntd = trunk.apply({"params": params}, tokens_nt).hidden
      last_n1d = jnp.take_along_axis(hidden_ntd, end_n[:, None, None], axis=1)
      logits_nv = lm.apply({"params": params}, last_n1d, method=Transformer.lm_logits)[:, 0]
      return jax.nn.log_softmax(logits_nv.astype(jnp.float32), axis=-1)[:, jnp.asarray(labels)]

    self._scorers = {labels: rm_eval.chunked_scorer(functools.partial(label_rows, labels), mesh, chunk)
                     for labels in (self.pair_ids, self.point_ids)}

  def encode(self, text: str) -> np.ndarray:
    return prompt_ids(self.tokenizer, [{"role": "user", "content": text}])

  def label_log_probs(self, texts: Sequence[str], labels: tuple[int, int]) -> np.ndarray:
    """(N, 2) log-probabilities of the two label tokens as the judge's first answer token to each text."""
    ids = [self.encode(t) for t in texts]
    too_long = [i for i, x in enumerate(ids) if self.max_len is not None and len(x) > self.max_len]
    if too_long:
      raise UserError(f"a judging question of {len(ids[too_long[0]])} tokens is longer than the judge's "
                      f"{self.max_len} positions (model.max_len); shorten the answers or the template")
    out = np.zeros((len(ids), 2), np.float32)
    if not ids:
      return out
    by_width: dict[int, list[int]] = {}
    for i, x in enumerate(ids):  # Right-padded to a multiple of 16: a few compilations, little padding.
      width = -(-len(x) // 16) * 16
      by_width.setdefault(min(width, self.max_len or width), []).append(i)
    for width, rows in sorted(by_width.items()):
      tokens = np.full((len(rows), width), self.tokenizer.pad_id, np.int32)
      for r, i in enumerate(rows):
        tokens[r, :len(ids[i])] = ids[i]
      end = np.asarray([len(ids[i]) - 1 for i in rows], np.int32)
      out[rows] = self._scorers[labels](self.params, tokens, np.zeros_like(end), end)
    return out

  def fit(self, build, answers: Sequence[str]) -> list[str]:
    """`answers` shortened, a few words at a time from the end of the longest, until the question
    `build(*answers)` fits the judge's positions (answers cut off mid-way can be longer than any template
    allows for); unchanged when it fits."""
    answers = list(answers)
    while self.max_len is not None and len(self.encode(build(*answers))) > self.max_len:
      longest = max(range(len(answers)), key=lambda i: len(answers[i].split()))
      words = answers[longest].split()
      if not words:
        raise UserError(f"the judging template alone is longer than the judge's {self.max_len} positions")
      answers[longest] = " ".join(words[:-max(1, len(words) // 8)])
    return answers

  def first_probability(self, texts: Sequence[str]) -> np.ndarray:
    """(N,) P(first label) / (P(first) + P(second)) of pairwise questions."""
    lp = self.label_log_probs(texts, self.pair_ids)
    return np.exp(lp[:, 0] - np.logaddexp(lp[:, 0], lp[:, 1]))

  def preference(self, prompts: Sequence, firsts: Sequence[str], seconds: Sequence[str],
                 principles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(p (N,), per-principle and per-order probabilities (N, P, 2)): p[n] is the probability that firsts[n]
    is the better answer to prompts[n], the mean over `principles` and over both orders of the answers."""
    n, k = len(prompts), len(principles)
    texts = []
    for prompt, x, y in zip(prompts, firsts, seconds):
      for principle in principles:
        x, y = self.fit(lambda a, b: self.spec.pair_text(principle, prompt, a, b), (x, y))
        texts += [self.spec.pair_text(principle, prompt, x, y), self.spec.pair_text(principle, prompt, y, x)]
    q = self.first_probability(texts).reshape(n, k, 2)
    q[..., 1] = 1.0 - q[..., 1]  # In the swapped order, "first is better" is the second label.
    return q.mean(axis=(1, 2)), q

  def rank(self, prompts: Sequence, responses: Sequence[Sequence[str]],
           principles: Sequence[str]) -> tuple[list[list[int]], np.ndarray, dict]:
    """Rankings of each prompt's answers (`ranks[i]` of responses[i], 0 = best, ties share a rank, dense),
    each record's confidence (N,), and statistics (the share of pairs whose two orders agree)."""
    pairs = [(n, i, j) for n, group in enumerate(responses) for i in range(len(group))
             for j in range(i + 1, len(group))]
    p, q = self.preference([prompts[n] for n, _, _ in pairs], [responses[n][i] for n, i, _ in pairs],
                           [responses[n][j] for n, _, j in pairs], principles)
    wins = [np.zeros(len(group)) for group in responses]
    prob = [dict() for _ in responses]
    for (n, i, j), pij in zip(pairs, p):
      wins[n][i] += pij
      wins[n][j] += 1.0 - pij
      prob[n][i, j], prob[n][j, i] = pij, 1.0 - pij
    ranks, confidence = [], np.zeros(len(responses))
    for n, score in enumerate(wins):
      order = sorted(range(len(score)), key=lambda i: -score[i])
      r, rank = [0] * len(score), 0
      for m, i in enumerate(order):
        if m and score[order[m - 1]] - score[i] > TIE:
          rank += 1
        r[i] = rank
      ranks.append(r)
      sure = [prob[n][i, j] for i in range(len(r)) for j in range(len(r)) if r[i] < r[j]]
      confidence[n] = float(np.mean(sure)) if sure else 0.5
    consistent = (q[..., 0] > 0.5) == (q[..., 1] > 0.5)
    return ranks, confidence, {"order_consistency": float(consistent.mean()) if len(pairs) else float("nan")}

  def verdicts(self, prompts: Sequence, answers: Sequence[str]) -> np.ndarray:
    """(N,) log P(yes) - log P(no) of the pointwise question about each answer."""
    texts = [self.spec.point_text(p, *self.fit(lambda a: self.spec.point_text(p, a), (a,)))
             for p, a in zip(prompts, answers)]
    lp = self.label_log_probs(texts, self.point_ids)
    return lp[:, 0] - lp[:, 1]


def principles_of(config) -> list[str]:
  """judge.principles read (`read_principles`), or the pairwise template's one default principle."""
  path = config.judge.principles
  if not path:
    return [DEFAULT_PRINCIPLE]
  if not os.path.isfile(path):
    raise UserError(f"config key 'judge.principles': {path}: no such file")
  return read_principles(path)


DEFAULT_PRINCIPLE = "rule : prefer the answer that does the task best ."
