"""Tool calls in generation (rlhf_jax/tools.py): the calculator agrees with Python's integers, the sampler
feeds every call's result back exactly where a call closes (the JAX calculator and a Python tool through the
host callback give the same samples), the result tokens are masked and carry log-prob 0 while every other
token keeps the model's log-prob given the whole sequence, and a demonstration's text encodes to the very
tokens the sampler forces, with SFT's loss mask leaving them out."""

import functools
import itertools
import re

import jax
import numpy as np
import pytest

from rlhf_jax import tools
from rlhf_jax.config import base_config, finalize
from rlhf_jax.data import pipelines, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.sampling import generate, prompt_batch
from rlhf_jax.stages import sft as sft_stage
from rlhf_jax.tokenizer import CharTokenizer, NUM_SPECIAL, PAD_ID
from test_constrain import _model, _tokenizer
from test_sampling import _forward, _log_softmax

_EXPRESSION = re.compile(r" *\d+ *(?:[+-] *\d+ *)*")


def _python_calculator(text: str, max_abs: int) -> str:
  """The calculator's contract in plain Python: numbers of at most len(str(max_abs)) digits joined by + and -,
  every partial sum within [-max_abs, max_abs]; anything else is "error"."""
  if not _EXPRESSION.fullmatch(text):
    return tools.ERROR
  terms = [int(sign + digits) for sign, digits in re.findall(r"([+-]?) *(\d+)", text)]
  if any(len(digits) > len(str(max_abs)) for digits in re.findall(r"\d+", text)):
    return tools.ERROR
  sums = list(itertools.accumulate(terms))
  return str(sums[-1]) if all(abs(s) <= max_abs for s in sums) else tools.ERROR


def _near_expression(rng):
  """A valid expression, or one broken by an edit (a doubled operator, a space inside a number, a letter)."""
  parts = [str(int(rng.integers(0, 10 ** int(rng.integers(1, 5)))))]
  for _ in range(int(rng.integers(0, 4))):
    parts += [str(rng.choice(["+", "-", " + ", " - "])), str(int(rng.integers(0, 2000)))]
  text = "".join(parts)
  if rng.random() < 0.4:
    at = int(rng.integers(len(text) + 1))
    text = text[:at] + str(rng.choice(["+", "-", " ", "a", "="])) + text[at:]
  return text


def test_calculator_agrees_with_python():
  tok = _tokenizer()
  calc = tools.calculator(tok, max_abs=999)
  rng = np.random.default_rng(0)
  texts = [_near_expression(rng) for _ in range(400)] + ["", " ", "7", "-3", "3-", "999+1", "1000", "0007-8"]
  ids = [tok.encode(t) for t in texts]
  width = max(len(x) for x in ids)
  tokens = np.zeros((len(ids), width), np.int32)
  mask = np.zeros((len(ids), width), bool)
  for i, x in enumerate(ids):
    tokens[i, :len(x)], mask[i, :len(x)] = x, True
  result, lengths = jax.jit(calc.run)(tokens, mask, np.ones(len(ids), bool))
  got = [tok.decode(r[:n - 1]) for r, n in zip(np.asarray(result), np.asarray(lengths))]
  assert all(r[n - 1] == calc.close_id for r, n in zip(np.asarray(result), np.asarray(lengths)))
  want = [_python_calculator(t, 999) for t in texts]
  assert got == want
  assert 0.3 < np.mean([w == tools.ERROR for w in want]) < 0.8  # Both outcomes are exercised.


@functools.lru_cache
def _char_setup():
  """A character tokenizer over digits, operators and markers, and a tiny random model over it steered to
  write calls: its final norm's bias is solved (least squares through the tied embedding) so that the next
  token's logits are about log p for p = digits 50%, "[" 10%, "=" 12%, ... whatever the context."""
  tok = CharTokenizer.from_text("0123456789+-[=] .error")
  model, params = _model(tok.vocab_size)
  probs = np.full(tok.vocab_size, 0.004)
  for text, p in (("0123456789", 0.05), ("[", 0.1), ("=", 0.12), ("+-", 0.05), (" ", 0.04), ("]", 0.02)):
    probs[[tok.encode(ch)[0] for ch in text]] = p
  embedding = np.asarray(params["embed"]["embedding"], np.float64)
  bias = np.linalg.lstsq(embedding, np.log(probs / probs.sum()), rcond=None)[0]
  params = {**params, "final_norm": {"scale": params["final_norm"]["scale"] * 0.1,
                                     "bias": np.asarray(bias, np.float32)}}
  return tok, model, params


def _calls(tok, row_ids, tool_mask, log_probs):
  """Walks one sampled row: at every result marker of an open call the next tokens must be the Python
  calculator's result and the close marker, masked as the tool's with log-prob 0; nothing else is.
  Returns the number of calls and of those with a number for result."""
  call, result, close = (tok.encode(m)[0] for m in tools.MARKERS)
  expected_tool = np.zeros(len(row_ids), bool)
  start, i, calls, numbers = None, 0, 0, 0
  while i < len(row_ids):
    t = row_ids[i]
    if t == call and start is None:
      start = i
    elif t == result and start is not None:
      call_ids = row_ids[start + 1:i]  # A special token in a call makes it malformed.
      text = tools.ERROR if min(call_ids, default=NUM_SPECIAL) < NUM_SPECIAL else _python_calculator(
          tok.decode(call_ids), 9999)
      want = tok.encode(text) + [close]
      got = row_ids[i + 1:i + 1 + len(want)]
      assert got == want[:len(got)], (tok.decode(row_ids), got, want)
      expected_tool[i + 1:i + 1 + len(want)] = True
      calls, numbers, start, i = calls + 1, numbers + (text != tools.ERROR), None, i + len(want)
    i += 1
  np.testing.assert_array_equal(tool_mask, expected_tool)
  assert not log_probs[expected_tool].any()
  return calls, numbers


@pytest.mark.parametrize("seed", [0, 1])
def test_sampler_runs_the_calculator_where_calls_close(seed):
  tok, model, params = _char_setup()
  calc = tools.calculator(tok)
  host = tools.python_tool(tok, lambda text: _python_calculator(text, 9999), max_result_tokens=calc.max_result_tokens)
  rng = np.random.default_rng(seed)
  rows = [rng.integers(NUM_SPECIAL, tok.vocab_size, int(n)).tolist() for n in rng.integers(1, 5, 48)]
  prompt, mask = prompt_batch(rows, PAD_ID, 5)
  sample = lambda tool: generate(model, params, prompt, mask, jax.random.PRNGKey(seed), max_new_tokens=32,
                                 temperature=1.0, stop_ids=(), tool=tool)
  out, out_host = sample(calc), sample(host)
  for field in ("tokens", "log_probs", "mask", "tool_mask"):  # JAX calculator == Python tool via callback.
    np.testing.assert_array_equal(getattr(out, field), getattr(out_host, field))
  tokens, log_probs, tool_mask = (np.asarray(x) for x in (out.tokens, out.log_probs, out.tool_mask))
  calls, numbers = np.sum([_calls(tok, tokens[r].tolist(), tool_mask[r], log_probs[r]) for r in range(len(rows))], 0)
  assert calls >= 3 and numbers >= 1, (calls, numbers)
  # Every token the model drew has its log-prob given the whole sequence, the tool's tokens included.
  forward = _forward(model, width=40)
  for r, ids in enumerate(rows):
    logits = forward(params, np.concatenate([ids, tokens[r]]))[len(ids) - 1:-1]
    expected = _log_softmax(logits, 1.0)[np.arange(32), tokens[r]]
    np.testing.assert_allclose(log_probs[r], np.where(tool_mask[r], 0.0, expected), atol=1e-5, rtol=0)
  plain = generate(model, params, prompt, mask, jax.random.PRNGKey(seed), max_new_tokens=32, temperature=1.0,
                   stop_ids=())
  assert plain.tool_mask is None
  first = np.argmax(tool_mask.any(0))  # Before the first result of any row, every row is the plain sampler's.
  np.testing.assert_array_equal(np.asarray(plain.tokens)[:, :first], tokens[:, :first])


def test_python_tool_failures_become_error():
  tok, model, params = _char_setup()
  boom = tools.python_tool(tok, lambda text: 1 / 0, max_result_tokens=8)
  host_ids = np.asarray([tok.encode("1+2")], np.int32)
  result, length = jax.jit(boom.run)(host_ids, np.ones_like(host_ids, bool), np.ones(1, bool))
  assert tok.decode(np.asarray(result)[0, :int(length[0])]) == "error]"


def test_demonstrations_encode_to_the_forced_tokens_and_sft_masks_them():
  """A toyworld calculator demonstration, encoded as SFT encodes it, holds the calculator's own result tokens
  after its result marker; the SFT loss mask leaves exactly those (and the close marker) out."""
  tok = _tokenizer()  # A sentencepiece model that never saw the markers: they stay lone byte pieces.
  calc = tools.calculator(tok)
  world = toyworld.make_world(0)
  inst = toyworld.sample_instances(world, 1, 0, tasks=("arithmetic",))[0]
  answer = toyworld.demonstrate(world, inst, np.random.default_rng(0), 0.0, calculator_rate=1.0)
  r = toyworld.ArithmeticTask.result(inst.args)
  assert answer.startswith("[") and answer.endswith(f"={r}] {r} .")
  assert toyworld.gold_score(world, inst, answer) == 1.0 and toyworld.final_answer(inst, answer) == str(r)
  conversation = [{"role": "user", "content": inst.prompt}, {"role": "assistant", "content": answer}]
  ids, mask = pipelines.conversation_ids(tok, conversation)
  ids = np.asarray(ids)
  at = int(np.flatnonzero(ids == calc.result_id)[-1])
  expr = ids[int(np.flatnonzero(ids == calc.call_id)[-1]) + 1:at]
  forced, n = jax.jit(calc.run)(expr[None], np.ones((1, len(expr)), bool), np.ones(1, bool))
  np.testing.assert_array_equal(ids[at + 1:at + 1 + int(n[0])], np.asarray(forced)[0, :int(n[0])])
  tool = tools.tool_result_mask(ids, calc.call_id, calc.result_id, calc.close_id)
  assert np.flatnonzero(tool).tolist() == list(range(at + 1, at + 1 + int(n[0])))
  assert mask[tool].all()
  (sft_ids,), (sft_mask,) = sft_stage.encode_conversations(tok, [conversation], "calculator")
  np.testing.assert_array_equal(sft_ids, ids)
  np.testing.assert_array_equal(sft_mask, mask & ~tool)  # The SFT stage's loss mask: the results left out.


def test_calculator_demonstrations_change_only_arithmetic():
  world = toyworld.make_world(0)
  rates = dict(filler_rate=0.45, comply_rate=0.5, constraint_error_rate=0.2)
  plain = toyworld.sft_examples(world, 300, 0, 0.02, **rates)
  calc = toyworld.sft_examples(world, 300, 0, 0.02, calculator_rate=1.0, **rates)
  changed = [(a, b) for a, b in zip(plain, calc) if a != b]
  assert changed and all(a["task"] == "arithmetic" for a, _ in changed)
  for a, b in changed:  # The same answer, worked out with the calculator first; the same gold.
    assert toyworld.strip_tool_calls(b["messages"][1]["content"]).strip() == a["messages"][1]["content"]
    assert a["gold"] == b["gold"]


def test_marker_and_config_errors():
  with pytest.raises(UserError, match=r"tool marker '\[' cannot be encoded by this tokenizer"):
    tools.calculator(CharTokenizer.from_text("0123456789+- ="))  # No "[" at all.
  with pytest.raises(UserError, match="three different characters"):
    tools.marker_ids(CharTokenizer.from_text("[=]"), "[[]")
  config = base_config()
  config.sampling.tool = "abacus"
  with pytest.raises(UserError, match="config key 'sampling.tool': 'abacus' is not a tool"):
    finalize(config)
  config.sampling.tool, config.stage = "calculator", "dpo"
  with pytest.raises(UserError, match="DPO stage does not yet leave a tool's tokens out"):
    finalize(config)
  config.stage, config.sampling.regex = "sft", r"\d+"
  with pytest.raises(UserError, match="'sampling.tool' and 'sampling.regex'"):
    finalize(config)
  tok, model, params = _char_setup()
  from rlhf_jax.constrain import compile_regex
  with pytest.raises(ValueError, match="cannot be combined"):
    generate(model, params, *prompt_batch([[10]], PAD_ID), jax.random.PRNGKey(0), max_new_tokens=4,
             constraint=compile_regex(r"\d+", tok), tool=tools.calculator(tok))

