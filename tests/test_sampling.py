"""The sampler against the model's full forward pass: greedy decoding is the arg-max token by token, the
log-probabilities are the temperature-scaled ones, ended rows are padding, the loop exits early, and the
sampled tokens follow softmax(logits / T) with top-k/top-p truncation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.sampling import generate, make_generate, prompt_batch
from rlhf_jax.tokenizer import PAD_ID

PROMPT_LENGTHS = (6, 2, 4, 1)
WIDTH = 8  # The bucket: wider than the longest prompt, so every row has some padding.


@functools.lru_cache
def _model(family="gpt2", **overrides):
  """A tiny model with random parameters drawn by numpy from the shapes alone (flax's init takes seconds to
  compile, more than a test here): norm scales 1, everything else N(0, 0.3^2), biases included. The large
  scale spreads the logits out, so arg-max ties cannot occur."""
  model = Transformer(tiny_model(family, **overrides))
  shapes = unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(0)
  draw = lambda path, x: (np.ones(x.shape) if path[-1].key == "scale" else rng.normal(0.0, 0.3, x.shape))
  return model, jax.tree_util.tree_map_with_path(lambda path, x: jnp.asarray(draw(path, x), jnp.float32), shapes)


def _prompts(vocab_size, lengths=PROMPT_LENGTHS, seed=1):
  rng = np.random.default_rng(seed)
  rows = [rng.integers(10, vocab_size, n).tolist() for n in lengths]
  return rows, *prompt_batch(rows, PAD_ID, WIDTH)


def _forward(model, width=WIDTH + 8):
  """The full forward of one row, (T,) ids -> (T, V) logits, without the sampler's padding or positions.

  The row is padded on the right to `width` so that one compile serves every length: causal attention keeps
  the trailing padding out of the logits of the real tokens (tests/test_model.py checks the causal path).
  """
  apply = jax.jit(lambda params, ids: model.apply({"params": params}, ids[None]).logits[0])

  def forward(params, ids):
    padded = np.full(width, PAD_ID, np.int32)
    padded[:len(ids)] = ids
    return np.asarray(apply(params, padded))[:len(ids)]
  return forward


def _log_softmax(logits, temperature):
  return np.asarray(jax.nn.log_softmax(jnp.asarray(logits) / temperature, axis=-1))


def _check_against_full_forward(model, params, rows, out, temperature):
  """Every generated token's log-prob is log_softmax(z / T) of the full forward of prompt + generated tokens;
  returns the (N, V) logits that predicted each row's generated tokens (masked positions only)."""
  forward = _forward(model)
  tokens, log_probs, mask = np.asarray(out.tokens), np.asarray(out.log_probs), np.asarray(out.mask)
  predicting = []
  for i, ids in enumerate(rows):
    n = int(mask[i].sum())
    new = tokens[i, :n]
    logits = forward(params, np.concatenate([ids, new]))[len(ids) - 1:len(ids) - 1 + n]
    expected = _log_softmax(logits, temperature)[np.arange(n), new]
    np.testing.assert_allclose(log_probs[i, :n], expected, atol=1e-5, rtol=0)
    predicting.append(logits)
  return predicting


@pytest.mark.parametrize("family,scan", [("gpt2", False), ("llama", True)])
def test_greedy_is_argmax_of_full_forward(family, scan):
  model, params = _model(family, scan_layers=scan)
  rows, prompt, mask = _prompts(model.config.vocab_size)
  out = generate(model, params, prompt, mask, jax.random.PRNGKey(0), max_new_tokens=8, greedy=True, stop_ids=())
  assert out.tokens.shape == (4, 8) and out.tokens.dtype == jnp.int32 and out.log_probs.dtype == jnp.float32
  assert bool(out.mask.all()) and not bool(out.ended.any()) and int(out.num_steps) == 8
  np.testing.assert_array_equal(out.lengths, 8)
  logits = _check_against_full_forward(model, params, rows, out, temperature=1.0)
  for i in range(len(rows)):
    np.testing.assert_array_equal(out.tokens[i], logits[i].argmax(-1))
  # The rows generate different continuations: each depends on its own prompt, not the batch's padding.
  assert len({tuple(r) for r in np.asarray(out.tokens)}) == len(rows)


def _greedy_reference(model, params, prompt, mask):
  """Greedy decoding with no stop ids: the same compile as the gpt2 case of the test above."""
  out = generate(model, params, prompt, mask, jax.random.PRNGKey(0), max_new_tokens=8, greedy=True, stop_ids=())
  return np.asarray(out.tokens), np.asarray(out.log_probs)


def _early_stop_id(ref_tokens):
  """A stop id that greedy decoding produces early in some rows and never in others."""
  n = ref_tokens.shape[1]
  return int(next(t for t in np.unique(ref_tokens[:, :n - 2])
                  if t != PAD_ID and 0 < (ref_tokens == t).any(-1).sum() < len(ref_tokens)))


def test_ended_rows_are_padding():
  model, params = _model()
  _, prompt, mask = _prompts(model.config.vocab_size)
  ref_tokens, ref_log_probs = _greedy_reference(model, params, prompt, mask)
  n = ref_tokens.shape[1]
  stop = _early_stop_id(ref_tokens)
  out = generate(model, params, prompt, mask, jax.random.PRNGKey(0), max_new_tokens=n, greedy=True,
                 stop_ids=(stop,))
  tokens, log_probs, out_mask = np.asarray(out.tokens), np.asarray(out.log_probs), np.asarray(out.mask)
  for i, ref in enumerate(ref_tokens):
    hits = np.flatnonzero(ref == stop)
    length = hits[0] + 1 if len(hits) else n
    np.testing.assert_array_equal(out_mask[i], np.arange(n) < length)
    np.testing.assert_array_equal(tokens[i, :length], ref[:length])
    np.testing.assert_array_equal(tokens[i, length:], PAD_ID)
    np.testing.assert_allclose(log_probs[i, :length], ref_log_probs[i, :length], atol=1e-6)
    np.testing.assert_array_equal(log_probs[i, length:], 0.0)
    assert int(out.lengths[i]) == length and bool(out.ended[i]) == bool(len(hits))
  assert 0 < int(out.ended.sum()) < len(ref_tokens)
  assert int(out.num_steps) == n  # A row never stopped, so the loop ran to the end.


def test_loop_exits_once_every_row_has_ended():
  model, params = _model()
  rows, prompt, mask = _prompts(model.config.vocab_size)
  ref_tokens, _ = _greedy_reference(model, params, prompt, mask)
  n = ref_tokens.shape[1]
  stop = _early_stop_id(ref_tokens)
  # Only rows that stop before the last column, repeated to the same batch shape (no new compile).
  early = [row for row, ref in zip(rows, ref_tokens) if (ref[:n - 1] == stop).any()]
  prompt, mask = prompt_batch([early[i % len(early)] for i in range(len(rows))], PAD_ID, WIDTH)
  out = generate(model, params, prompt, mask, jax.random.PRNGKey(0), max_new_tokens=n, greedy=True,
                 stop_ids=(stop,))
  assert bool(out.ended.all())
  assert int(out.num_steps) == int(out.lengths.max()) < n
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, int(out.num_steps):], PAD_ID)


def test_sampling_distribution_and_truncation():
  model, params = _model(vocab_size=12)
  batch, temperature = 4000, 2.0
  ids = [1, 2, 3]
  prompt, mask = prompt_batch([ids] * batch, PAD_ID, WIDTH)
  logits = _forward(model)(params, ids)[-1]
  target = np.exp(_log_softmax(logits, temperature))
  # Five standard errors of a frequency from `batch` draws.
  tol = 5 * np.sqrt(target * (1 - target) / batch)
  assert np.abs(np.exp(_log_softmax(logits, 1.0)) - target).max() > 3 * tol.max()  # T matters here.

  def sample(**kw):
    out = generate(model, params, prompt, mask, jax.random.PRNGKey(1), max_new_tokens=1, temperature=temperature,
                   **kw)
    first = np.asarray(out.tokens[:, 0])
    # The log-probs are the untruncated temperature-scaled ones, whatever the truncation.
    np.testing.assert_allclose(out.log_probs[:, 0], _log_softmax(logits, temperature)[first], atol=1e-5)
    return np.bincount(first, minlength=len(target)) / batch

  freq = sample()
  np.testing.assert_array_less(np.abs(freq - target), tol)

  order = np.argsort(-target)
  top3 = np.zeros_like(target)
  top3[order[:3]] = target[order[:3]] / target[order[:3]].sum()
  freq = sample(top_k=3)
  assert set(np.flatnonzero(freq)) == set(order[:3])
  np.testing.assert_array_less(np.abs(freq - top3), 5 * np.sqrt(top3 * (1 - top3) / batch) + 1e-9)

  # The nucleus for p = 0.4: the most likely tokens until their mass reaches 0.4.
  size = int(np.searchsorted(np.cumsum(target[order]), 0.4)) + 1
  assert 1 < size < len(target)
  freq = sample(top_p=0.4)
  assert set(np.flatnonzero(freq)) == set(order[:size])

  # Truncation to the top token is greedy decoding, at any temperature.
  for truncation in (dict(top_k=1), dict(top_p=1e-6)):
    np.testing.assert_array_equal(sample(**truncation), np.eye(len(target))[order[0]])


def test_sampled_log_probs_are_temperature_scaled():
  model, params = _model("llama", scan_layers=True)
  rows, prompt, mask = _prompts(model.config.vocab_size)
  run = make_generate(model, max_new_tokens=8, temperature=0.7, top_k=5)
  out = run(params, prompt, mask, jax.random.PRNGKey(2))
  logits = _check_against_full_forward(model, params, rows, out, temperature=0.7)
  for i, row_logits in enumerate(logits):
    top5 = np.argsort(-row_logits, axis=-1)[:, :5]
    assert (top5 == np.asarray(out.tokens[i, :len(row_logits)])[:, None]).any(-1).all()
  # Different keys give different samples; the same key the same ones.
  np.testing.assert_array_equal(run(params, prompt, mask, jax.random.PRNGKey(2)).tokens, out.tokens)
  assert (np.asarray(run(params, prompt, mask, jax.random.PRNGKey(4)).tokens) != np.asarray(out.tokens)).any()


def test_each_step_and_row_draws_fresh_noise():
  """With all parameters zero the logits are 0 and every draw is uniform: a key reused across steps would
  repeat each row's token, and one reused across rows would repeat each column."""
  model, params = _model()
  params = jax.tree.map(jnp.zeros_like, params)
  _, prompt, mask = _prompts(model.config.vocab_size)
  tokens = np.asarray(generate(model, params, prompt, mask, jax.random.PRNGKey(5), max_new_tokens=8,
                               stop_ids=()).tokens)
  # Independent uniform draws over 61 tokens repeat about 28/61 times between neighbouring steps (4 x 7 pairs)
  # and 24/61 times between neighbouring rows (3 x 8 pairs).
  assert (tokens[:, 1:] == tokens[:, :-1]).sum() <= 3
  assert (tokens[1:] == tokens[:-1]).sum() <= 4


def test_prompt_batch_and_argument_checks():
  prompt, mask = prompt_batch([[4, 5, 6], [9]], PAD_ID, 4)
  np.testing.assert_array_equal(prompt, [[0, 4, 5, 6], [0, 0, 0, 9]])
  np.testing.assert_array_equal(mask, [[False, True, True, True], [False, False, False, True]])
  assert prompt.dtype == np.int32 and prompt_batch([[1, 2], [3]], PAD_ID)[0].shape == (2, 2)
  with pytest.raises(ValueError, match="prompt 1 has 5 tokens"):
    prompt_batch([[1], [1, 2, 3, 4, 5]], PAD_ID, 4)
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    prompt_batch([[]], PAD_ID, 4)
  model = Transformer(tiny_model())
  with pytest.raises(ValueError, match="temperature"):
    make_generate(model, max_new_tokens=4, temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    make_generate(model, max_new_tokens=4, top_p=0.0)


def test_one_key_per_row_draws_each_row_as_a_batch_of_one():
  """With a key per row, a row's answer is the one it gets alone with its key (so it does not depend on which
  rows share its batch), permuting the rows permutes the answers, and typed keys work as raw ones."""
  model, params = _model()
  rows, prompt, mask = _prompts(model.config.vocab_size)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(len(rows)))
  sample = lambda p, m, k: generate(model, params, p, m, k, max_new_tokens=6, stop_ids=())
  out = sample(prompt, mask, keys)
  for r in range(len(rows)):
    alone = sample(prompt[r:r + 1], mask[r:r + 1], keys[r:r + 1])
    np.testing.assert_array_equal(np.asarray(out.tokens[r]), np.asarray(alone.tokens[0]))
    np.testing.assert_allclose(np.asarray(out.log_probs[r]), np.asarray(alone.log_probs[0]), atol=1e-5)
  order = np.array([2, 0, 3, 1])
  permuted = sample(prompt[order], mask[order], keys[order])
  np.testing.assert_array_equal(np.asarray(permuted.tokens), np.asarray(out.tokens)[order])
  typed = sample(prompt, mask, jax.random.wrap_key_data(keys))
  np.testing.assert_array_equal(np.asarray(typed.tokens), np.asarray(out.tokens))
  # Different keys for the same prompt give different answers (the rows are not all drawn from one key).
  same_prompt = np.repeat(prompt[:1], 4, axis=0), np.repeat(mask[:1], 4, axis=0)
  assert len({tuple(t) for t in np.asarray(sample(*same_prompt, keys).tokens)}) > 1
  with pytest.raises(ValueError, match="one key per row"):
    sample(prompt, mask, keys[:3])
