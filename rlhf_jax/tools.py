"""Tool calls inside generation: the model writes a call, the sampler runs the tool and feeds its result back.

A call is a span of three marker tokens, Toolformer-style (Schick et al. 2023):

  [3+4=7] 7 .        the model writes "[3+4=", the tool appends "7]", the model goes on with " 7 ."

The model opens a call with the call marker ("["), writes the tool's input, and writes the result marker ("=").
At that token the sampler (`sampling.make_generate(tool=...)`) hands the input -- the tokens between the two
markers -- to the tool, and the tool's output followed by the close marker ("]") becomes the next tokens of
the row, emitted one per step as if sampled but not drawn from the model. Those forced tokens are marked in
`SampleOutput.tool_mask`: their log-probability is reported as 0, and PPO leaves them out of its ratio, its KL
penalty and its losses (they are context the environment wrote, as the prompt is), while GAE passes the value
across them (`rl.advantages.gae(skip_bn=)`); SFT leaves them out of the loss (`tool_result_mask`).

Two kinds of tool, behind one interface (`Tool.run`):

- `calculator`: integer addition and subtraction ("12+7-3"), written in JAX and run inside the jitted decode
  loop: each token's characters come from a (V, L) table, a scan parses them, and the result's tokens are
  read from a table of every result in [-max_abs, max_abs] encoded by the tokenizer itself, so the forced
  tokens are exactly what `tokenizer.encode` gives for the same text in a demonstration.
- `python_tool(fn)`: any Python function from the input text to a result text, called from the loop through
  `jax.pure_callback` (only at steps where some row calls it).

The markers must be single tokens that no other token contains (`marker_ids` checks it), so that a text and its
tokens agree on where every call is: `encode("[3+4=7] 7 .")` then holds the call's tokens exactly as the
sampler produces them. Toyworld's tokenizer never sees the markers in training (`toyworld.strip_tool_calls`),
so they stay lone byte pieces. A bad expression, or a result outside [-max_abs, max_abs], gets the result
"error".
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.constrain import token_texts
from rlhf_jax.errors import UserError
from rlhf_jax.tokenizer import NUM_SPECIAL, Tokenizer

MARKERS = "[=]"  # Call, result, close.
ERROR = "error"
NAMES = ("", "calculator")  # The values of config key sampling.tool ("": none).

# The calculator's character codes: 0 no character, 1..10 the digits 0..9, then "+", "-" and the space.
_NONE, _PLUS, _MINUS, _SPACE = 0, 11, 12, 13
_CODES = {**{str(d): d + 1 for d in range(10)}, "+": _PLUS, "-": _MINUS, " ": _SPACE}
# Parser states: at the start, in a number, after an operator, after a space that follows a number.
_START, _DIGIT, _OP, _SPACED = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True, eq=False)
class Tool:
  """A tool the sampler can call. Hashed by identity, like `constrain.TokenAutomaton`: `sampling.generate`
  caches one compiled sampler per tool object.

  call_id, result_id, close_id: the marker tokens. max_result_tokens Q: the most tokens a result takes, the
  close marker included. run(tokens_bn, input_mask_bn, calls_b) -> (result_bq int32, lengths_b int32): for
  every row b with calls_b[b], the tool's output for the input tokens_bn[b][input_mask_bn[b]], as Q token ids
  of which the first lengths_b[b] are real (the close marker last); jittable. name: for messages.
  """
  call_id: int
  result_id: int
  close_id: int
  max_result_tokens: int
  run: Callable
  name: str


def marker_ids(tokenizer: Tokenizer, markers: str = MARKERS, texts=None) -> tuple[int, int, int]:
  """The ids of the call, result and close markers; UserError unless each is one token of its own that no
  other token's text contains. `texts`: `token_texts(tokenizer)[0]` when the caller has it already."""
  if len(markers) != 3 or len(set(markers)) != 3:
    raise UserError(f"tool markers must be three different characters (call, result, close), got {markers!r}")
  texts = token_texts(tokenizer)[0] if texts is None else texts
  ids = []
  for marker in markers:
    try:
      encoded = tokenizer.encode(marker)
    except UserError as e:
      raise UserError(f"tool marker {marker!r} cannot be encoded by this tokenizer: {e}") from None
    if len(encoded) != 1:
      raise UserError(f"tool marker {marker!r} is {len(encoded)} tokens in this tokenizer; it must be one")
    for t, text in enumerate(texts):
      if t != encoded[0] and text is not None and marker in text:
        raise UserError(f"tool marker {marker!r} is also part of token {t} ({text!r}), so a call could hide "
                        "inside another token; choose markers the tokenizer never merges")
    ids.append(encoded[0])
  return ids[0], ids[1], ids[2]


def tool_result_mask(ids: np.ndarray, call_id: int, result_id: int, close_id: int) -> np.ndarray:
  """(T,) bool: True on the tokens a tool wrote -- after each call's result marker up to and including its
  close marker (or to the end when it never closes). A result marker counts only inside an open call."""
  out = np.zeros(len(ids), bool)
  in_call = in_result = False
  for i, t in enumerate(np.asarray(ids).tolist()):
    if in_result:
      out[i] = True
      if t == close_id:
        in_call = in_result = False
    elif t == call_id and not in_call:
      in_call = True
    elif t == result_id and in_call:
      in_result = True
  return out


def _result_table(tokenizer: Tokenizer, texts: list[str], close_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(R, Q) int32 ids of encode(text) + [close_id] for each text, padded with 0, and (R,) their lengths."""
  encoded = [list(ids) + [close_id] for ids in tokenizer.encode_batch(texts)]
  width = max(len(ids) for ids in encoded)
  table = np.zeros((len(encoded), width), np.int32)
  for i, ids in enumerate(encoded):
    table[i, :len(ids)] = ids
  return table, np.asarray([len(ids) for ids in encoded], np.int32)


def _char_table(texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
  """((V, L) int32 calculator codes of each token's characters (`texts`: `token_texts`), 0-padded; (V,) bool:
  the token has a character the calculator does not read, or no text at all)."""
  readable = [text if text is not None and all(ch in _CODES for ch in text) else None for text in texts]
  width = max([len(text) for text in readable if text], default=1)
  table = np.zeros((len(texts), width), np.int32)
  for t, text in enumerate(readable):
    for j, ch in enumerate(text or ""):
      table[t, j] = _CODES[ch]
  return table, np.asarray([text is None for text in readable])


def _evaluate(codes_bm: jax.Array, max_abs: int) -> tuple[jax.Array, jax.Array]:
  """(value (B,) int32, ok (B,) bool) of each row's expression: numbers joined by "+" and "-", spaces
  allowed between numbers and operators, not inside a number. Not ok when the grammar is broken, a number
  has more digits than max_abs, or a partial sum leaves [-max_abs, max_abs] (so nothing overflows)."""
  digits = len(str(max_abs))

  def step(carry, code_b):
    total, current, ndigits, sign, state, ok = carry
    is_digit = (code_b >= 1) & (code_b <= 10)
    is_op = (code_b == _PLUS) | (code_b == _MINUS)
    is_space = code_b == _SPACE
    ok = ok & ~(is_digit & ((state == _SPACED) | (ndigits >= digits)))
    ok = ok & ~(is_op & (state != _DIGIT) & (state != _SPACED))
    total = jnp.where(is_op, total + sign * current, total)  # An operator closes the number before it.
    ok = ok & (jnp.abs(total) <= max_abs)
    current = jnp.where(is_digit, current * 10 + code_b - 1, jnp.where(is_op, 0, current))
    ndigits = jnp.where(is_digit, ndigits + 1, jnp.where(is_op, 0, ndigits))
    sign = jnp.where(code_b == _MINUS, -1, jnp.where(code_b == _PLUS, 1, sign))
    state = jnp.where(is_digit, _DIGIT, jnp.where(is_op, _OP,
                                                  jnp.where(is_space & (state == _DIGIT), _SPACED, state)))
    return (total, current, ndigits, sign, state, ok), None

  b = codes_bm.shape[0]
  zeros = jnp.zeros((b,), jnp.int32)
  init = (zeros, zeros, zeros, jnp.ones((b,), jnp.int32), jnp.full((b,), _START, jnp.int32), jnp.ones((b,), bool))
  (total, current, _, sign, state, ok), _ = jax.lax.scan(step, init, codes_bm.T)
  value = total + sign * current
  ok = ok & ((state == _DIGIT) | (state == _SPACED)) & (jnp.abs(value) <= max_abs)
  return jnp.where(ok, value, 0), ok


def calculator(tokenizer: Tokenizer, *, max_abs: int = 9999, markers: str = MARKERS) -> Tool:
  """Integer addition and subtraction, inside the jitted sampler (module doc)."""
  if max_abs < 1 or max_abs > 10**8:
    raise UserError(f"calculator max_abs must lie in [1, 1e8], got {max_abs}")
  pieces, _ = token_texts(tokenizer)  # Decodes every token: once, for both uses.
  call_id, result_id, close_id = marker_ids(tokenizer, markers, pieces)
  chars_vl, unreadable_v = _char_table(pieces)
  texts = [str(r) for r in range(-max_abs, max_abs + 1)] + [ERROR]
  results_rq, lengths_r = _result_table(tokenizer, texts, close_id)

  def run(tokens_bn, input_mask_bn, calls_b):
    del calls_b  # Every row is evaluated; the sampler keeps only the calling rows.
    b = tokens_bn.shape[0]
    bad_b = jnp.any(jnp.asarray(unreadable_v)[tokens_bn] & input_mask_bn, axis=-1)
    codes_bnl = jnp.where(input_mask_bn[..., None], jnp.asarray(chars_vl)[tokens_bn], _NONE)
    value_b, ok_b = _evaluate(codes_bnl.reshape(b, -1), max_abs)
    row_b = jnp.where(ok_b & ~bad_b, value_b + max_abs, len(texts) - 1)
    return jnp.asarray(results_rq)[row_b], jnp.asarray(lengths_r)[row_b]

  return Tool(call_id=call_id, result_id=result_id, close_id=close_id, max_result_tokens=results_rq.shape[1],
              run=run, name="calculator")


def python_tool(tokenizer: Tokenizer, fn: Callable[[str], str], *, max_result_tokens: int = 16,
                markers: str = MARKERS, name: str | None = None) -> Tool:
  """Any Python function from the call's input text to its result text, called on the host through
  `jax.pure_callback` (at the steps where some row calls it). An input holding a special token, an
  exception, or a result of more than max_result_tokens - 1 tokens gives "error" (cut to fit)."""
  if max_result_tokens < 2:
    raise UserError(f"max_result_tokens must be >= 2 (a result and the close marker), got {max_result_tokens}")
  call_id, result_id, close_id = marker_ids(tokenizer, markers)
  error_ids = tokenizer.encode(ERROR)[:max_result_tokens - 1]

  def host(tokens_bn, input_mask_bn, calls_b):
    tokens_bn, input_mask_bn, calls_b = (np.asarray(x) for x in (tokens_bn, input_mask_bn, calls_b))
    out = np.zeros((len(tokens_bn), max_result_tokens), np.int32)
    lengths = np.zeros((len(tokens_bn),), np.int32)
    for b in np.flatnonzero(calls_b):
      call = tokens_bn[b][input_mask_bn[b]]
      try:  # A special token (a role, the end of turn) is no text: the call is malformed.
        ids = error_ids if (call < NUM_SPECIAL).any() else tokenizer.encode(str(fn(tokenizer.decode(call))))
      except Exception:  # The tool's failure is the call's result, not the sampler's.
        ids = error_ids
      if len(ids) > max_result_tokens - 1:
        ids = error_ids
      ids = list(ids) + [close_id]
      out[b, :len(ids)] = ids
      lengths[b] = len(ids)
    return out, lengths

  def run(tokens_bn, input_mask_bn, calls_b):
    b = tokens_bn.shape[0]
    shapes = (jax.ShapeDtypeStruct((b, max_result_tokens), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
    return jax.pure_callback(host, shapes, tokens_bn, input_mask_bn, calls_b)

  return Tool(call_id=call_id, result_id=result_id, close_id=close_id, max_result_tokens=max_result_tokens,
              run=run, name=name or getattr(fn, "__name__", "python"))


@functools.lru_cache(maxsize=16)
def from_name(name: str, tokenizer: Tokenizer) -> Tool | None:
  """The tool of config key `sampling.tool` for this tokenizer (None for ""), built once per tokenizer so that
  every sampler of a run shares its compiled code."""
  if name not in NAMES:
    raise UserError(f"config key 'sampling.tool': unknown tool {name!r}; expected one of {NAMES}")
  return calculator(tokenizer) if name == "calculator" else None
