"""int8 weight-only quantisation (model/quant.py): the rounding bound by NumPy, the int8 model computes exactly
what its dequantised weights do, the bytes, and `sampling.quantize` in the evaluation's sampler."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from conftest import tiny_model
from rlhf_jax.config import apply_overrides, base_config, finalize
from rlhf_jax.model import lora, quant
from rlhf_jax.model.transformer import Transformer, unbox


def _params(cfg, heads=("lm",)):
  model = Transformer(cfg, heads=heads)
  return model, unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])


def test_int8_rounding_by_numpy():
  """Per output channel: s = max |W| / 127 over the contracted axes, q = round(W / s) in [-127, 127], and
  |W - q s| <= s / 2 -- for a (D, H, K) projection, attention's (H, K, D) output and a (V, D) embedding."""
  rng = np.random.default_rng(0)
  params = {"layers_0": {"attn": {"q": {"kernel": rng.normal(size=(8, 2, 4)).astype(np.float32)},
                                  "o": {"kernel": rng.normal(size=(2, 4, 8)).astype(np.float32)}}},
            "embed": {"embedding": rng.normal(size=(10, 8)).astype(np.float32)}}
  q = quant.quantize_int8(params)
  for path, axes in ((("layers_0", "attn", "q"), (0,)), (("layers_0", "attn", "o"), (0, 1)), (("embed",), (1,))):
    node = q
    for key in path:
      node = node[key]
    name = "embedding" if path == ("embed",) else "kernel"
    w = traverse_util.flatten_dict(params)[path + (name,)]
    scale = np.abs(w).max(axis=axes, keepdims=True) / 127.0
    assert node[name].dtype == np.int8
    np.testing.assert_allclose(np.asarray(node[name + "_scale"]), np.squeeze(scale, axes), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(node[name]), np.clip(np.round(w / scale), -127, 127).astype(np.int8))
    back = np.asarray(node[name], np.float32) * scale
    assert np.all(np.abs(back - w) <= scale / 2 + 1e-7)


@pytest.mark.parametrize("family,scan,tie", [("gpt2", False, True), ("llama", True, False)])
def test_int8_model_is_its_dequantised_weights(family, scan, tie):
  """The int8 model's logits are the float model's on the dequantised weights (the scales applied after the
  matmul), close to the original's, with the same top-1 token nearly everywhere; the weights take a quarter of
  their float32 bytes."""
  cfg = tiny_model(family, scan_layers=scan, tie_embeddings=tie, vocab_size=64)
  model, params = _params(cfg)
  q = quant.quantize_int8(params)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 16), 0, 64)
  apply = jax.jit(lambda p: model.apply({"params": p}, tokens).logits)
  int8, dequantised, original = apply(q), apply(quant.dequantize(q)), apply(params)
  np.testing.assert_allclose(int8, dequantised, atol=1e-5, rtol=0)
  assert 0 < float(jnp.abs(int8 - original).max()) < 0.02
  assert float((int8.argmax(-1) == original.argmax(-1)).mean()) > 0.95
  matrices = [x for p, x in traverse_util.flatten_dict(params).items() if p[-1] in ("kernel", "embedding")
              and x.ndim >= 2 and p[0] != "pos_embed"]
  saved = lora.nbytes(params) - lora.nbytes(q)
  assert saved > 0.7 * lora.nbytes(matrices)  # 3 of every 4 bytes, less the scales.


def test_sampling_quantize_samples_from_int8_weights(monkeypatch):
  """sampling.quantize=int8: the evaluation's sampler is handed int8 weights (and float32 ones without it);
  a value other than none/int8 is refused naming the key."""
  from rlhf_jax.eval import gold
  from rlhf_jax.tokenizer import CharTokenizer
  seen = []
  real = gold.generate

  def spy(model, params, *args, **kwargs):
    seen.append(traverse_util.flatten_dict(params)[("embed", "embedding")].dtype)
    return real(model, params, *args, **kwargs)

  monkeypatch.setattr(gold, "generate", spy)
  tokenizer = CharTokenizer.from_text("abcdefgh ijklmnop")
  model, params = _params(tiny_model("gpt2", vocab_size=tokenizer.vocab_size))
  sampling = ml_collections.ConfigDict(dict(temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=4, batch_size=4,
                                            eval_seed=0, quantize="none"))
  prompts = [[{"role": "user", "content": "abc"}], [{"role": "user", "content": "ijk"}]]
  for mode in ("none", "int8"):
    sampling.quantize = mode
    answers = gold.sample_answers(model, params, tokenizer, prompts, sampling, seed=0)
    assert len(answers.texts) == 2
  assert seen == [np.float32, np.int8]
  config = apply_overrides(base_config(), ["sampling.quantize=int4"])
  with pytest.raises(Exception, match="sampling.quantize"):
    finalize(config)
