"""Constrained decoding: a regular expression compiled once to a transition table over the tokenizer's tokens.

  automaton = compile_regex(r"-?\\d+ \\.", tokenizer)        # or compile_choices(["yes", "no"], tokenizer)
  out = sampling.generate(model, params, prompt_bp, mask_bp, rng, max_new_tokens=8, constraint=automaton)

A response sampled under the automaton decodes to a string that `re.fullmatch(pattern, text)` accepts,
whatever the model, temperature or seed (tests/test_constrain.py checks it over random ones):

- The regular expression becomes a deterministic automaton over characters. interegular (the regex parser
  that outlines and lm-format-enforcer build on) builds it; we do not write a regex engine.
- Each token's text (`token_texts`: what the tokenizer's decode gives it after another token, so a word's
  leading space is kept) is walked through that automaton from every state at once (vectorised in NumPy:
  one pass per character position), giving `next_state` (S, V): the state after the token, or -1 where the
  token cannot occur there. Special tokens and tokens that decode to no text or to a partial UTF-8 byte
  are never allowed; the stop tokens are allowed exactly in accepting states.
- `distance` (S,): the fewest tokens from each state to an accepting one (a Bellman-Ford over the token
  graph). States that cannot reach acceptance through any token sequence are removed, so the sampler can
  never paint itself into a corner; and with `r` columns left the sampler allows only tokens that lead to a
  state whose distance is at most r - 1, so a row is accepting by its last column even when it runs out of
  tokens (`sampling.make_generate`). A pattern that needs more than `max_new_tokens` tokens is refused.

The sampler keeps one automaton state per row, masks the logits of the tokens not allowed in it (a (B, V)
gather and a select per step), and reports each token's log-probability under the unconstrained model at
the temperature (as it does for top-k and top-p), so a constrained answer's likelihood is the model's.

The tables are built once per (pattern, tokenizer) and cost S x V int32: a few MB for a GPT-2 vocabulary
and a pattern of tens of states. Building them takes about S x (longest token) NumPy passes over V.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.tokenizer import NUM_SPECIAL, Tokenizer

_UNREACHABLE = np.iinfo(np.int32).max // 2


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: `generate` caches its sampler per automaton.
class TokenAutomaton:
  """A deterministic automaton over token ids.

  next_state (S, V) int32: the state after token v in state s; -1 where v may not come next (the stop
    tokens included: where they may end a response is `accepting`).
  accepting (S,) bool: the text so far matches the whole pattern.
  distance (S,) int32: the fewest tokens from s to an accepting state (0 when accepting).
  start: the state before any token.
  pattern: the regular expression it was compiled from.
  """
  next_state: np.ndarray
  accepting: np.ndarray
  distance: np.ndarray
  start: int
  pattern: str

  @property
  def num_states(self) -> int:
    return int(self.next_state.shape[0])

  @property
  def min_tokens(self) -> int:
    """The fewest tokens of a matching response (the stop token not counted)."""
    return int(self.distance[self.start])

  def accepts(self, ids: Sequence[int]) -> bool:
    """Whether the token ids (the stop token left out) walk from the start to an accepting state."""
    state = self.start
    for token in ids:
      state = int(self.next_state[state, int(token)])
      if state < 0:
        return False
    return bool(self.accepting[state])

  def step_tables(self, stop_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """What the sampler reads each step: (next (S, V) int32, cost (S, V) int32).

    next: as `next_state`, with a stop token leaving the state as it is. cost: the fewest tokens still
    needed after this one to reach acceptance (`distance` of the next state); 0 for a stop token in an
    accepting state; `_UNREACHABLE` where the token is not allowed. With r columns left (this one
    included) a token is allowed when its cost is at most r - 1."""
    nxt = self.next_state.copy()
    cost = np.where(nxt >= 0, self.distance[np.maximum(nxt, 0)], _UNREACHABLE).astype(np.int32)
    states = np.arange(self.num_states, dtype=np.int32)
    for stop in stop_ids:
      nxt[:, stop] = states
      cost[:, stop] = np.where(self.accepting, 0, _UNREACHABLE)
    return nxt, cost


def token_texts(tokenizer: Tokenizer) -> tuple[list[str | None], bool]:
  """Each id's text as it reads inside a response, and whether `decode` drops one leading space.

  A token's text is decode([a, t]) minus decode([a]) for an ordinary anchor token a, so a tokenizer that
  drops the space at the start of a text (sentencepiece's dummy prefix) still gives a word token its space.
  None for special ids, and for ids that decode to nothing or to a partial UTF-8 character (byte pieces)."""
  vocab = tokenizer.vocab_size
  anchor, anchor_text = None, ""
  for t in range(NUM_SPECIAL, vocab):
    anchor_text = tokenizer.decode([t])
    if anchor_text and "\ufffd" not in anchor_text:
      anchor = t
      break
  if anchor is None:
    raise UserError("the tokenizer has no ordinary token with text: nothing can be constrained")
  texts: list[str | None] = [None] * vocab
  drops_space = False
  for t in range(NUM_SPECIAL, vocab):
    joined = tokenizer.decode([anchor, t])
    text = joined[len(anchor_text):] if joined.startswith(anchor_text) else None
    if text and "\ufffd" not in text:
      texts[t] = text
      if text.startswith(" ") and tokenizer.decode([t]) == text[1:]:
        drops_space = True
  return texts, drops_space


def _char_automaton(pattern: str, free_leading_space: bool):
  """(table (Q+1, A+1) int32 with dead state Q and column A for characters outside the alphabet, start,
  accepting (Q,) bool, alphabet) of the pattern's minimal character automaton.

  With `free_leading_space` (a tokenizer whose decode drops a response's leading space, so a first token
  " 42" reads "42"), a pre-start state takes one space to the start state, unless the pattern itself can
  begin with a space."""
  import interegular

  try:
    re.compile(pattern)
    fsm = interegular.parse_pattern(pattern).to_fsm().reduce()
  except Exception as e:  # interegular raises plain Exception subclasses.
    raise UserError(f"constraint regex {pattern!r}: {type(e).__name__}: {e}") from None
  states = sorted(fsm.states)
  index = {s: i for i, s in enumerate(states)}
  lookup = fsm.alphabet.__getitem__
  space = lookup(" ")
  pre_start = free_leading_space and (space is None or space not in fsm.map.get(fsm.initial, {}))
  num_keys = 1 + max(fsm.alphabet.by_transition, default=-1)
  if pre_start and space is None:  # A space is outside the pattern's alphabet: give it a column of its own.
    space, num_keys = num_keys, num_keys + 1
    lookup = lambda c, base=lookup, key=space: key if c == " " else base(c)
  num = len(states) + int(pre_start)
  table = np.full((num + 1, num_keys + 1), num, np.int32)  # Row `num` is the dead state.
  for s, moves in fsm.map.items():
    for key, target in moves.items():
      table[index[s], key] = index[target]
  accepting = np.array([s in fsm.finals for s in states], bool)
  start = index[fsm.initial]
  if pre_start:  # Row num - 1: the start state's moves, and a space to the start state itself.
    table[num - 1] = table[start]
    table[num - 1, space] = start
    accepting = np.append(accepting, accepting[start])
    start = num - 1
  return table, start, accepting, lookup


def _walk_tokens(table: np.ndarray, alphabet, texts: Sequence[str | None]) -> np.ndarray:
  """(Q, V) int32: the character automaton's state after each token's text from each state; dead (Q) for
  tokens without text and for texts that leave the automaton."""
  dead = table.shape[0] - 1
  outside = table.shape[1] - 1
  longest = max((len(t) for t in texts if t), default=0)
  keys = np.full((len(texts), longest), -1, np.int32)
  usable = np.zeros(len(texts), bool)
  for v, text in enumerate(texts):
    if text:
      usable[v] = True
      keys[v, :len(text)] = [outside if (k := alphabet(c)) is None else k for c in text]
  state = np.broadcast_to(np.arange(dead, dtype=np.int32)[:, None], (dead, len(texts))).copy()
  state[:, ~usable] = dead
  for i in range(longest):
    key = keys[:, i]
    has = key >= 0
    state[:, has] = table[state[:, has], key[has]]
  return state


def _distances(next_state: np.ndarray, accepting: np.ndarray) -> np.ndarray:
  """(S,) the fewest tokens from each state to an accepting state; `_UNREACHABLE` where there is no way."""
  dist = np.where(accepting, 0, _UNREACHABLE).astype(np.int64)
  for _ in range(next_state.shape[0]):
    via = np.where(next_state >= 0, dist[np.maximum(next_state, 0)], _UNREACHABLE).min(axis=1) + 1
    new = np.minimum(dist, via)
    if np.array_equal(new, dist):
      break
    dist = new
  return np.minimum(dist, _UNREACHABLE).astype(np.int32)


@functools.lru_cache(maxsize=32)
def compile_regex(pattern: str, tokenizer: Tokenizer) -> TokenAutomaton:
  """The token automaton of `pattern` (Python `re` syntax without look-around or back-references), matched
  against the whole decoded response. Raises UserError for a pattern that does not parse or that no
  sequence of the tokenizer's tokens can match."""
  texts, drops_space = token_texts(tokenizer)
  table, start, accepting, alphabet = _char_automaton(pattern, drops_space)
  chars = _walk_tokens(table, alphabet, texts)
  dead = table.shape[0] - 1
  next_state = np.where(chars == dead, -1, chars).astype(np.int32)
  distance = _distances(next_state, accepting)
  if distance[start] >= _UNREACHABLE:
    raise UserError(f"constraint regex {pattern!r}: no sequence of this tokenizer's tokens matches it")
  alive = distance < _UNREACHABLE
  next_state = np.where((next_state >= 0) & alive[np.maximum(next_state, 0)], next_state, -1).astype(np.int32)
  return TokenAutomaton(next_state=next_state, accepting=accepting, distance=distance, start=int(start),
                        pattern=pattern)


def choices_pattern(choices: Sequence[str]) -> str:
  """The regular expression that matches exactly one of `choices` (each taken literally)."""
  if not choices or any(not isinstance(c, str) or not c for c in choices):
    raise UserError(f"choices must be non-empty strings, got {list(choices)!r}")
  return "(?:" + "|".join(re.escape(c) for c in choices) + ")"


def compile_choices(choices: Sequence[str], tokenizer: Tokenizer) -> TokenAutomaton:
  """The token automaton whose responses are exactly one of `choices`."""
  return compile_regex(choices_pattern(choices), tokenizer)
