"""The Transformer against itself in slower, obvious forms: full forward vs KV-cache decoding, a packed row vs
its documents one by one, scanned vs unrolled layers; plus the heads and the logical axis names."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model
from rlhf_jax.errors import UserError
from rlhf_jax.model.transformer import (Transformer, init_cache, stack_layers, unbox, unstack_layers)


def _init(cfg, heads=("lm",), seed=0):
  return unbox(Transformer(cfg, heads=heads).init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"])


def _tokens(shape, vocab, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, vocab)


def _apply(model):
  """A jitted `model.apply`: eager flax dispatches op by op and makes these tests slow."""
  return jax.jit(lambda params, *args, **kw: model.apply({"params": params}, *args, **kw))


@pytest.mark.parametrize("scan", [False, True])
def test_prefill_then_decode_matches_full_forward(family, scan):
  cfg = tiny_model(family, scan_layers=scan)
  model = Transformer(cfg)
  params = _init(cfg)
  tokens = _tokens((3, 20), cfg.vocab_size)
  apply = _apply(model)
  full = apply(params, tokens).logits

  out = apply(params, tokens[:, :7], cache=init_cache(cfg, 3, 24))
  pieces, cache = [out.logits], out.cache
  for t in range(7, 20):
    out = apply(params, tokens[:, t:t + 1], cache=cache)
    pieces.append(out.logits)
    cache = out.cache
  decoded = jnp.concatenate(pieces, axis=1)
  assert int(cache.index) == 20
  np.testing.assert_allclose(decoded, full, atol=1e-5, rtol=0)


def test_left_padded_decode_matches_unpadded_rows(family):
  """Batched generation left-pads short prompts: padding (segment 0) must be invisible and positions must
  count from the first real token."""
  cfg = tiny_model(family)
  model = Transformer(cfg)
  params = _init(cfg)
  lengths = [9, 5]
  width = max(lengths)
  rows = [np.asarray(_tokens((1, n), cfg.vocab_size, seed=10 + n))[0] for n in lengths]
  tokens = np.zeros((2, width), np.int32)
  segments = np.zeros((2, width), np.int32)
  positions = np.zeros((2, width), np.int32)
  for i, row in enumerate(rows):
    tokens[i, width - len(row):] = row
    segments[i, width - len(row):] = 1
    positions[i, width - len(row):] = np.arange(len(row))
  apply = _apply(model)
  out = apply(params, tokens, positions, segments, cache=init_cache(cfg, 2, 16))
  nxt = np.array([[3], [4]], np.int32)
  step = apply(params, nxt, np.array([[9], [5]]), np.ones((2, 1), np.int32), cache=out.cache)
  for i, row in enumerate(rows):
    alone = apply(params, np.concatenate([row, nxt[i]])[None]).logits[0]
    np.testing.assert_allclose(out.logits[i, width - len(row):], alone[:-1], atol=1e-5)
    np.testing.assert_allclose(step.logits[i, 0], alone[-1], atol=1e-5)


def test_packed_row_equals_documents_one_by_one(family):
  cfg = tiny_model(family)
  model = Transformer(cfg)
  params = _init(cfg)
  docs = [np.asarray(_tokens((1, n), cfg.vocab_size, seed=n))[0] for n in (7, 12, 4)]
  pad = 3
  tokens = np.concatenate(docs + [np.zeros(pad, np.int32)])[None]
  segments = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)] + [np.zeros(pad)])[None]
  positions = np.concatenate([np.arange(len(d)) for d in docs] + [np.arange(pad)])[None]
  apply = _apply(model)
  packed = apply(params, tokens, positions.astype(np.int32), segments.astype(np.int32)).logits[0]
  start = 0
  for doc in docs:
    alone = apply(params, doc[None]).logits[0]
    np.testing.assert_allclose(packed[start:start + len(doc)], alone, atol=1e-5)
    start += len(doc)
  # Without segment ids the documents do see each other: the test above can fail.
  mixed = apply(params, tokens).logits[0]
  assert np.abs(mixed[len(docs[0]):len(docs[0]) + 5] - packed[len(docs[0]):len(docs[0]) + 5]).max() > 1e-3


def test_scan_and_remat_match_unrolled_layers(family):
  cfg = tiny_model(family)
  params = _init(cfg, heads=("lm", "value"))
  tokens = _tokens((2, 16), cfg.vocab_size)

  def loss_and_grads(c, p):
    def loss(p):
      out = Transformer(c, heads=("lm", "value")).apply({"params": p}, tokens)
      return jnp.mean(jax.nn.log_softmax(out.logits)[..., 0]) + jnp.mean(out.values)
    return jax.jit(jax.value_and_grad(loss))(p)

  ref_loss, ref_grads = loss_and_grads(cfg, params)
  for variant in (dict(scan_layers=True), dict(scan_layers=True, remat="full"), dict(remat="dots")):
    c = dataclasses.replace(cfg, **variant)
    p = stack_layers(params, cfg.n_layers) if c.scan_layers else params
    loss, grads = loss_and_grads(c, p)
    if c.scan_layers:
      grads = unstack_layers(grads, cfg.n_layers)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, ref_grads)


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axis_names(family, scan):
  cfg = tiny_model(family, scan_layers=scan)
  boxed = Transformer(cfg, heads=("lm", "value", "reward")).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for box in leaves:
    assert len(box.names) == box.value.ndim
    if scan and box.value.ndim and box.names[0] == "layers":
      assert box.value.shape[0] == cfg.n_layers
  if scan:
    assert unbox(boxed)["layers"]["attn"]["q"]["kernel"].shape == (2, 32, 4, 8)


def test_heads():
  cfg = tiny_model("llama")
  model = Transformer(cfg, heads=("lm", "value", "reward"))
  params = _init(cfg, heads=("lm", "value", "reward"))
  tokens = _tokens((2, 9), cfg.vocab_size)
  out = model.apply({"params": params}, tokens)
  assert out.logits.shape == (2, 9, cfg.vocab_size) and out.logits.dtype == jnp.float32
  np.testing.assert_array_equal(out.values, 0.0)  # Zero-initialised critic.
  assert out.rewards.shape == (2, 9) and float(jnp.std(out.rewards)) > 0
  # Gain and bias act as r = gain * r0 + bias.
  params["reward_head"] = dict(params["reward_head"], gain=jnp.float32(2.0), bias=jnp.float32(0.5))
  scaled = model.apply({"params": params}, tokens).rewards
  np.testing.assert_allclose(scaled, 2.0 * out.rewards + 0.5, rtol=1e-5, atol=1e-6)
  # Untied output for Llama; GPT-2 ties it to the embedding and has no lm_head.
  assert "lm_head" in params and "lm_head" not in _init(tiny_model("gpt2"))


def test_bfloat16_compute_keeps_float32_parameters():
  cfg = tiny_model("llama", dtype="bfloat16")
  params = _init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens = _tokens((2, 16), cfg.vocab_size)
  low = Transformer(cfg).apply({"params": params}, tokens)
  high = Transformer(dataclasses.replace(cfg, dtype="float32")).apply({"params": params}, tokens)
  assert low.hidden.dtype == jnp.bfloat16 and low.logits.dtype == jnp.float32
  assert float(jnp.abs(low.logits - high.logits).max()) < 0.1


def test_config_errors_name_the_key():
  with pytest.raises(UserError, match="model.n_kv_heads"):
    tiny_model("llama", n_kv_heads=3)
  with pytest.raises(UserError, match="model.norm"):
    tiny_model("gpt2", norm="batchnorm")
  with pytest.raises(UserError, match="max_len"):
    cfg = tiny_model("gpt2")
    Transformer(cfg).apply({"params": _init(cfg)}, jnp.zeros((1, cfg.max_len + 1), jnp.int32))


def test_key_value_heads_default_to_the_query_heads():
  """GPT-2 sized configs must not silently become grouped-query attention."""
  from rlhf_jax.config import model_config
  from rlhf_jax.model.transformer import TransformerConfig
  cfg = TransformerConfig.from_config(model_config("gpt2", d_model=96, n_heads=12, d_ff=384))
  assert cfg.n_kv_heads == 12 and cfg.head_dim == 8
  assert TransformerConfig.from_config(model_config("llama", n_heads=8, n_kv_heads=2)).n_kv_heads == 2
  with pytest.raises(UserError, match="model.n_kv_heads"):
    TransformerConfig.from_config(model_config("llama", n_heads=8, n_kv_heads=-2))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reward_likelihood_term(family):
  """reward_likelihood=w adds gain * w * L inside the head, L[t] the mean log-probability of the tokens from
  the response start to t under the model's own LM head (NumPy from the full forward's logits); the head
  alone is unchanged; a reward-only model (no "lm" head) still has the LM weights it needs."""
  cfg = tiny_model(family)
  params = _init(cfg, heads=("lm", "reward"))
  params["reward_head"] = dict(params["reward_head"], gain=jnp.float32(1.5), bias=jnp.float32(-0.25))
  tokens = _tokens((3, 10), cfg.vocab_size)
  start = np.array([4, 1, 9], np.int32)
  plain = Transformer(cfg, heads=("lm", "reward")).apply({"params": params}, tokens)
  weighted = Transformer(cfg, heads=("reward",), reward_likelihood=0.7)
  rewards = weighted.apply({"params": params}, tokens, response_start_b=start).rewards
  log_probs = np.asarray(jax.nn.log_softmax(np.asarray(plain.logits, np.float64), axis=-1))
  tok = np.asarray(tokens)
  expected = np.array(plain.rewards, np.float64)
  for b in range(3):
    for t in range(start[b], 10):
      mean = np.mean([log_probs[b, s - 1, tok[b, s]] for s in range(start[b], t + 1)])
      expected[b, t] += 1.5 * 0.7 * mean
  np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="response_start_b"):
    weighted.apply({"params": params}, tokens)
  assert ("lm_head" in weighted.init(jax.random.PRNGKey(0), tokens, response_start_b=start)["params"]) == (
      family == "llama")
