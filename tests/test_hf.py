"""Hugging Face checkpoints in and out: logits parity with transformers, exact round trips, errors.

The reference models are tiny random GPT-2 and Llama models built with transformers, with every parameter
redrawn from a normal distribution: the default init (unit norm scales, zero biases) would let a swapped or
dropped tensor go unnoticed.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlhf_jax import convert  # noqa: E402
from rlhf_jax.errors import UserError  # noqa: E402
from rlhf_jax.model import hf  # noqa: E402
from rlhf_jax.model.transformer import Transformer, unbox  # noqa: E402

VOCAB = 97
FAMILIES = ("gpt2", "llama")


def _hf_config(family: str):
  if family == "gpt2":
    return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                   bos_token_id=None, eos_token_id=None)
  return transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                                  tie_word_embeddings=False, rope_theta=10000)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict:
  """family -> (eval-mode torch model, directory it was saved to)."""
  models = {}
  for seed, family in enumerate(FAMILIES):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(family), attn_implementation="eager")
    with torch.no_grad():
      for name, p in model.named_parameters():
        is_norm_scale = name.endswith(".weight") and p.ndim == 1
        p.copy_((1.0 if is_norm_scale else 0.0) + 0.2 * torch.randn_like(p))
    model.eval()
    directory = tmp_path_factory.mktemp(family)
    model.save_pretrained(directory, safe_serialization=True)
    models[family] = (model, str(directory))
  return models


def _tokens(batch: int = 2, length: int = 16, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def _hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    return model(torch.tensor(tokens, dtype=torch.long), **kwargs).logits.numpy()


def _logits(config, params, tokens: np.ndarray, segment_ids: np.ndarray | None = None) -> np.ndarray:
  apply = jax.jit(lambda p, t, s: Transformer(config).apply({"params": p}, t, segment_ids_bt=s).logits)
  return np.asarray(apply(params, tokens, segment_ids))


def _tensors(directory: str) -> dict:
  return safetensors.numpy.load_file(os.path.join(directory, hf.WEIGHTS_FILE))


def _assert_same_tensors(original: str, written: str) -> None:
  a, b = _tensors(original), _tensors(written)
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
    assert np.array_equal(a[name], b[name]), name


# --- parity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(hf_models, family, scan_layers):
  model, directory = hf_models[family]
  config, params = hf.load_hf(directory, scan_layers=scan_layers)
  assert config.scan_layers == scan_layers
  # The layout is exactly the one our model initialises: same keys, same shapes.
  shapes = jax.eval_shape(lambda: Transformer(config).init(jax.random.PRNGKey(0), _tokens(1, 1)))
  assert jax.tree.map(lambda x: x.shape, unbox(shapes["params"])) == jax.tree.map(np.shape, params)
  assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(params))

  tokens = _tokens()
  diff = np.abs(_logits(config, params, tokens) - _hf_logits(model, tokens)).max()
  print(f"{family} scan={scan_layers} max abs logit diff {diff:.2e}")
  assert diff <= 1e-4, diff

  if scan_layers:  # The padded batch exercises masking, which does not depend on the layer layout.
    return
  # Right padding: HF masks with attention_mask, we give the pad positions segment id 0.
  mask = np.ones_like(tokens)
  mask[0, 11:] = 0
  mask[1, 5:] = 0
  real = mask.astype(bool)
  ours, theirs = _logits(config, params, tokens, segment_ids=mask), _hf_logits(model, tokens, mask)
  diff = np.abs(ours[real] - theirs[real]).max()
  print(f"{family} padded max abs logit diff {diff:.2e}")
  assert diff <= 1e-4, diff


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_save_hf_round_trip_is_exact(hf_models, tmp_path, family, scan_layers):
  model, directory = hf_models[family]
  config, params = hf.load_hf(directory, scan_layers=scan_layers)
  out = str(tmp_path / "out")
  hf.save_hf(out, config, params)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  _assert_same_tensors(directory, out)

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  assert type(reloaded) is type(model)
  tokens = _tokens(seed=1)
  np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(model, tokens), rtol=0, atol=1e-6)


def test_sharded_and_bfloat16_checkpoints(hf_models, tmp_path):
  _, directory = hf_models["llama"]
  config, params = hf.load_hf(directory)
  tensors = _tensors(directory)
  names = sorted(tensors)
  sharded = tmp_path / "sharded"
  sharded.mkdir()
  shutil.copy(os.path.join(directory, hf.CONFIG_FILE), sharded)
  weight_map = {}
  for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
    shard = f"model-{i + 1:05d}-of-00002.safetensors"
    safetensors.numpy.save_file({n: tensors[n] for n in part}, sharded / shard, metadata={"format": "pt"})
    weight_map.update({n: shard for n in part})
  (sharded / hf.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  sharded_config, sharded_params = hf.load_hf(str(sharded))
  assert sharded_config == config
  jax.tree.map(np.testing.assert_array_equal, sharded_params, params)

  # Released Llama weights are bfloat16, which safetensors' numpy reader cannot represent.
  half = tmp_path / "bf16"
  transformers.AutoModelForCausalLM.from_pretrained(directory).to(torch.bfloat16).save_pretrained(half)
  _, half_params = hf.load_hf(str(half))
  to_bf16 = lambda x: np.asarray(x).astype(jax.numpy.bfloat16).astype(np.float32)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, to_bf16(b)), half_params, params)


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_round_trip(hf_models, tmp_path, capsys, family):
  _, directory = hf_models[family]
  ours, back = str(tmp_path / "ours"), str(tmp_path / "back")
  assert convert.main(["from-hf", directory, ours, "--scan-layers"]) == 0
  assert sorted(os.listdir(ours)) == ["model.json", "params"]
  config, params = convert.load_converted(ours)
  assert config.scan_layers and "layers" in params
  assert convert.main(["to-hf", ours, back]) == 0
  _assert_same_tensors(directory, back)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and all("parameters" in line for line in lines)
  count = sum(x.size for x in _tensors(directory).values())
  assert f"{count:,} parameters" in lines[1]


# --- errors ----------------------------------------------------------------------------------------------


def _copy(directory: str, tmp_path, name: str = "broken") -> str:
  target = str(tmp_path / name)
  shutil.copytree(directory, target)
  return target


def _edit_config(directory: str, **changes) -> None:
  path = os.path.join(directory, hf.CONFIG_FILE)
  with open(path) as f:
    values = json.load(f)
  values.update(changes)
  with open(path, "w") as f:
    json.dump(values, f)


def _assert_cli_fails(capsys, argv: list, *fragments: str) -> None:
  assert convert.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  for fragment in fragments:
    assert fragment in err, err


def test_missing_config(hf_models, tmp_path, capsys):
  broken = _copy(hf_models["gpt2"][1], tmp_path)
  os.remove(os.path.join(broken, "config.json"))
  with pytest.raises(UserError, match="config.json: no such file"):
    hf.load_hf(broken)
  _assert_cli_fails(capsys, ["from-hf", broken, str(tmp_path / "out")], "config.json")
  assert not os.path.exists(tmp_path / "out")


def test_missing_tensor(hf_models, tmp_path, capsys):
  broken = _copy(hf_models["llama"][1], tmp_path)
  tensors = _tensors(broken)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  safetensors.numpy.save_file(tensors, os.path.join(broken, hf.WEIGHTS_FILE), metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"model.safetensors: missing tensor 'model.layers.1.mlp.up_proj.weight'"):
    hf.load_hf(broken)
  _assert_cli_fails(capsys, ["from-hf", broken, str(tmp_path / "out")], "model.layers.1.mlp.up_proj.weight")


def test_wrong_tensor_shape(hf_models, tmp_path):
  broken = _copy(hf_models["gpt2"][1], tmp_path)
  tensors = _tensors(broken)
  tensors["transformer.h.0.attn.c_attn.weight"] = tensors["transformer.h.0.attn.c_attn.weight"][:, :90]
  safetensors.numpy.save_file(tensors, os.path.join(broken, hf.WEIGHTS_FILE), metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"'transformer.h.0.attn.c_attn.weight' has shape \(32, 90\), expected"):
    hf.load_hf(broken)


def test_pickle_only_directory_is_refused(hf_models, tmp_path, capsys):
  broken = _copy(hf_models["gpt2"][1], tmp_path)
  os.remove(os.path.join(broken, hf.WEIGHTS_FILE))
  # Not a real pickle: the loader must refuse before ever opening it.
  with open(os.path.join(broken, "pytorch_model.bin"), "wb") as f:
    f.write(b"not a pickle")
  with pytest.raises(UserError, match="pytorch_model.bin: .*convert them to model.safetensors"):
    hf.load_hf(broken)
  _assert_cli_fails(capsys, ["from-hf", broken, str(tmp_path / "out")], "pytorch_model.bin")


@pytest.mark.parametrize("family, changes, fragment", [
    ("gpt2", {"model_type": "bert"}, "unsupported model_type 'bert'"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2", {"activation_function": "gelu_fast"}, "activation_function='gelu_fast'"),
    ("gpt2", {"n_head": 5}, "model.n_heads"),
    ("gpt2", {"n_embd": "32"}, "key 'n_embd' should be int"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     "rope_parameters.rope_type='llama3'"),
    ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type='linear'"),
    ("llama", {"attention_bias": True}, "mlp_bias=False with attention_bias=True"),
    ("llama", {"hidden_size": None}, "missing key 'hidden_size'"),
])
def test_unsupported_configs(hf_models, tmp_path, capsys, family, changes, fragment):
  broken = _copy(hf_models[family][1], tmp_path)
  _edit_config(broken, **changes)
  with pytest.raises(UserError, match="config.json: ") as error:
    hf.load_hf(broken)
  assert fragment in str(error.value)
  _assert_cli_fails(capsys, ["from-hf", broken, str(tmp_path / "out")], "config.json", fragment)


def test_malformed_files(hf_models, tmp_path):
  broken = _copy(hf_models["gpt2"][1], tmp_path)
  with open(os.path.join(broken, hf.WEIGHTS_FILE), "wb") as f:
    f.write(b"not safetensors")
  with pytest.raises(UserError, match="model.safetensors: not a readable safetensors file"):
    hf.load_hf(broken)
  with open(os.path.join(broken, hf.CONFIG_FILE), "w") as f:
    f.write('{"model_type": "gpt2",')
  with pytest.raises(UserError, match="config.json: malformed JSON"):
    hf.load_hf(broken)


def test_save_hf_refuses_what_hf_cannot_hold(hf_models, tmp_path):
  config, params = hf.load_hf(hf_models["gpt2"][1])
  for changes, fragment in ((dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
                            (dict(n_kv_heads=2), "model.n_kv_heads=2"),
                            (dict(mlp="gated"), "model.mlp='gated'")):
    with pytest.raises(UserError, match="cannot export to Hugging Face") as error:
      hf.save_hf(str(tmp_path / "out"), dataclasses.replace(config, **changes), params)
    assert fragment in str(error.value)
  bad = dict(params, embed={"embedding": params["embed"]["embedding"][:5]})
  with pytest.raises(UserError, match=r"parameter 'embed/embedding' has shape \(5, 32\)"):
    hf.save_hf(str(tmp_path / "out"), config, bad)
  assert not os.path.exists(tmp_path / "out")
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_save_hf_does_not_overwrite(hf_models, tmp_path):
  config, params = hf.load_hf(hf_models["gpt2"][1])
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(UserError, match="directory exists and is not empty"):
    hf.save_hf(str(out), config, params)
  assert os.listdir(out) == ["keep.txt"]
  hf.save_hf(str(out), config, params, overwrite=True)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
