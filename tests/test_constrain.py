"""Constrained decoding: the token automaton agrees with Python's `re` on token sequences, every constrained
sample matches its pattern over random models, seeds, temperatures and truncations, a constraint that allows
everything changes nothing, and log-probabilities stay the unconstrained model's."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model
from rlhf_jax.constrain import TokenAutomaton, compile_choices, compile_regex, token_texts
from rlhf_jax.errors import UserError
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.sampling import generate, prompt_batch, response_token_ids
from rlhf_jax.tokenizer import CharTokenizer, END_OF_TURN_ID, EOS_ID, NUM_SPECIAL, PAD_ID, train_sentencepiece
from test_sampling import _check_against_full_forward

WORDS = ("red", "green", "blue", "apple", "pear", "yes", "no", "maybe", "the", "answer", "is")
PATTERNS = (r"-?\d+ \.", r"(?:yes|no)", r"[a-z]+(?: [a-z]+){0,2} \.", r"the answer is \d{1,2}")


@functools.lru_cache
def _tokenizer():
  """A BPE sentencepiece tokenizer whose pieces span several characters ("▁apple", "▁the", digits apart)."""
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(WORDS, 6)) + f" {rng.integers(-30, 300)} ." for _ in range(400)]
  return train_sentencepiece(lines, vocab_size=340)  # 256 byte pieces + 9 special + ~75 of text.


@functools.lru_cache
def _model(vocab_size):
  """A tiny random model (numpy draws, as in test_sampling) over the tokenizer's vocabulary."""
  model = Transformer(tiny_model("gpt2", vocab_size=vocab_size))
  shapes = unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(0)
  draw = lambda path, x: np.ones(x.shape) if path[-1].key == "scale" else rng.normal(0.0, 0.3, x.shape)
  return model, jax.tree_util.tree_map_with_path(lambda path, x: jnp.asarray(draw(path, x), jnp.float32), shapes)


def _prompts(vocab_size, rows=6, seed=0):
  rng = np.random.default_rng(seed)
  return prompt_batch([rng.integers(NUM_SPECIAL, vocab_size, n).tolist() for n in rng.integers(1, 6, rows)],
                      PAD_ID, 6)


def test_token_texts_rebuild_every_decode():
  tok = _tokenizer()
  texts, drops_space = token_texts(tok)
  assert not drops_space  # Our sentencepiece models keep text exact (no dummy prefix).
  assert all(texts[i] is None for i in range(NUM_SPECIAL))
  assert any(t is not None and len(t) > 3 for t in texts)  # Multi-character pieces exist.
  rng = np.random.default_rng(1)
  ordinary = [i for i, t in enumerate(texts) if t is not None]
  for _ in range(50):
    ids = rng.choice(ordinary, int(rng.integers(1, 8))).tolist()
    assert "".join(texts[i] for i in ids) == tok.decode(ids)


def _texts_near(pattern, rng):
  """Strings that match `pattern` and one-character edits of them (most of which do not)."""
  number = lambda: str(int(rng.integers(-120, 120)))
  word = lambda: str(rng.choice(WORDS))
  make = {PATTERNS[0]: lambda: f"{number()} .", PATTERNS[1]: lambda: str(rng.choice(["yes", "no"])),
          PATTERNS[2]: lambda: " ".join(word() for _ in range(int(rng.integers(1, 4)))) + " .",
          PATTERNS[3]: lambda: f"the answer is {int(rng.integers(0, 100))}"}[pattern]
  text = make()
  if rng.random() < 0.5:
    at = int(rng.integers(len(text)))
    text = text[:at] + str(rng.choice(list("- .1ax"))) * int(rng.integers(0, 2)) + text[at + 1:]
  return text


@pytest.mark.parametrize("pattern", PATTERNS)
def test_automaton_agrees_with_python_re(pattern):
  """accepts(ids) == re.fullmatch(pattern, decode(ids)) on strings near the pattern, each tokenized two
  ways (sentencepiece's own segmentation, and character by character where the pieces allow), and on
  random token sequences."""
  tok = _tokenizer()
  automaton = compile_regex(pattern, tok)
  texts, _ = token_texts(tok)
  single = {t: i for i, t in enumerate(texts) if t is not None and len(t) == 1}
  ordinary = [i for i, t in enumerate(texts) if t is not None]
  rng = np.random.default_rng(2)
  outcomes = []
  for _ in range(600):
    text = _texts_near(pattern, rng)
    ways = [tok.encode(text), tok.encode(text[:1]) + tok.encode(text[1:])]
    if all(c in single for c in text):
      ways.append([single[c] for c in text])
    ways.append(rng.choice(ordinary, int(rng.integers(1, 6))).tolist())
    for ids in ways:
      expected = re.fullmatch(pattern, tok.decode(ids)) is not None
      assert automaton.accepts(ids) == expected, (pattern, ids, tok.decode(ids))
      outcomes.append(expected)
  assert 0.2 < np.mean(outcomes) < 0.8  # Both outcomes are well represented.


def test_every_constrained_sample_matches():
  """Each pattern under its own temperature and truncation, with budgets from tight to loose, over five
  seeds of prompts and keys (one compile per pattern): every row decodes to a full match, ended or not."""
  tok = _tokenizer()
  model, params = _model(tok.vocab_size)
  settings = [(0.3, 0, 1.0), (1.0, 5, 1.0), (3.0, 0, 0.9), (1.0, 0, 1.0)]  # temperature, top_k, top_p
  for i, (pattern, (temperature, top_k, top_p)) in enumerate(zip(PATTERNS, settings)):
    automaton = compile_regex(pattern, tok)
    max_new = automaton.min_tokens + 2 * i  # min_tokens itself for the first: no slack at all.
    for seed in range(5):
      prompt, mask = _prompts(tok.vocab_size, seed=seed)
      out = generate(model, params, prompt, mask, jax.random.PRNGKey(seed), max_new_tokens=max_new,
                     temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=(END_OF_TURN_ID, EOS_ID),
                     constraint=automaton)
      for ids in response_token_ids(out):
        assert re.fullmatch(pattern, tok.decode(ids)), (pattern, temperature, max_new, tok.decode(ids))
        assert automaton.accepts(ids)


def test_greedy_and_choices_constraint():
  tok = _tokenizer()
  model, params = _model(tok.vocab_size)
  prompt, mask = _prompts(tok.vocab_size)
  choices = ["red apple", "green pear", "no"]
  out = generate(model, params, prompt, mask, jax.random.PRNGKey(0), max_new_tokens=12, greedy=True,
                 constraint=compile_choices(choices, tok))
  assert {tok.decode(ids) for ids in response_token_ids(out)} <= set(choices)
  # Each choice fits in 9 tokens with room for the stop, and a finished choice has nothing to add but it.
  assert bool(jnp.all(out.ended))


def test_allow_everything_constraint_changes_nothing():
  """One accepting state that allows every token: the same tokens and log-probs as no constraint."""
  tok = _tokenizer()
  model, params = _model(tok.vocab_size)
  prompt, mask = _prompts(tok.vocab_size)
  v = tok.vocab_size
  everything = TokenAutomaton(next_state=np.zeros((1, v), np.int32), accepting=np.ones(1, bool),
                              distance=np.zeros(1, np.int32), start=0, pattern="(any)")
  for kwargs in (dict(temperature=1.0), dict(temperature=0.7, top_k=7), dict(greedy=True)):
    keys = jax.random.split(jax.random.PRNGKey(3), len(prompt))  # One key per row, the evaluations' path.
    free = generate(model, params, prompt, mask, keys, max_new_tokens=10, **kwargs)
    held = generate(model, params, prompt, mask, keys, max_new_tokens=10, constraint=everything, **kwargs)
    np.testing.assert_array_equal(held.tokens, free.tokens)
    np.testing.assert_allclose(held.log_probs, free.log_probs, atol=1e-6)


def test_constrained_log_probs_are_the_models():
  """The reported log-probs are log softmax(z / T) of the full forward, not of the masked distribution."""
  tok = _tokenizer()
  model, params = _model(tok.vocab_size)
  prompt, mask = _prompts(tok.vocab_size, rows=4)
  rows = [p[m].tolist() for p, m in zip(prompt, mask)]
  out = generate(model, params, prompt, mask, jax.random.PRNGKey(1), max_new_tokens=6, temperature=0.8,
                 stop_ids=(), constraint=compile_regex(r"[a-z ]+", tok))
  _check_against_full_forward(model, params, rows, out, temperature=0.8)
  assert float(out.log_probs.sum()) < 0


def test_char_tokenizer_and_bad_patterns():
  tok = CharTokenizer.from_text("0123456789 .-abc")
  automaton = compile_regex(r"-?\d+ \.", tok)
  assert automaton.min_tokens == 3 and automaton.accepts(tok.encode("-12 .")) and not automaton.accepts(
      tok.encode("12."))
  with pytest.raises(UserError, match=r"constraint regex '\(ab': "):
    compile_regex("(ab", tok)
  with pytest.raises(UserError, match="no sequence of this tokenizer's tokens matches"):
    compile_regex("xyz", tok)  # x, y, z are not in the vocabulary.
  with pytest.raises(UserError, match="choices must be non-empty strings"):
    compile_choices([], tok)
  model, params = _model(tok.vocab_size)
  prompt, mask = _prompts(tok.vocab_size)
  with pytest.raises(ValueError, match="needs at least 3 tokens, more than max_new_tokens=2"):
    generate(model, params, prompt, mask, jax.random.PRNGKey(0), max_new_tokens=2, constraint=automaton)
