"""Hugging Face GPT-2 and Llama checkpoints in and out: `config.json` plus safetensors, no torch needed.

  config, params = load_hf("gpt2-dir")                       # TransformerConfig, our parameter dict
  logits = Transformer(config).apply({"params": params}, ids).logits
  save_hf("out-dir", config, params)                          # loads with AutoModelForCausalLM

Both directions need only numpy, jax and the safetensors library, so conversion works without the `hf`
extra (torch, transformers). Pickled `pytorch_model.bin` files are never opened: unpickling runs code.

Layouts (D model, H heads, G key/value heads, K head dim, F MLP width, V vocabulary; see transformer.py):
- GPT-2 stores its projections as Conv1D weights, (in, out) like ours. The fused `attn.c_attn` (D, 3D)
  holds q, k and v side by side, each (D, H*K) with head-major columns; `attn.c_proj` (H*K, D) is our o
  kernel (H, K, D) flattened. The output projection is normally the tied token embedding (`wte`).
- Llama stores torch Linear weights, (out, in): q_proj (H*K, D), k_proj/v_proj (G*K, D), o_proj (D, H*K),
  gate_proj/up_proj (F, D), down_proj (D, F), lm_head (V, D) when untied. Its rotary embedding pairs feature
  i with i + K/2, as our `rotary` does, so q and k need no permutation.
The mapping is exact: loading and saving again reproduces the original tensors bit for bit (float32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import shutil
from typing import Any, Callable, Iterator

import jax
import numpy as np
import safetensors
import safetensors.numpy

from rlhf_jax.errors import UserError
from rlhf_jax.model.transformer import Transformer, TransformerConfig, stack_layers, unbox, unstack_layers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# Hugging Face activation names -> ours. gelu_new and gelu_pytorch_tanh are both the tanh approximation.
_ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "silu": "silu",
                   "swish": "silu", "relu": "relu"}
_ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"}
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_REQUIRED = object()


# --- reading ---------------------------------------------------------------------------------------------


def read_json_object(path: str) -> dict:
  """A JSON file holding one object; a missing or malformed file is a one-line UserError naming it."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file")
  try:
    with open(path) as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: malformed JSON ({e})") from None
  if not isinstance(value, dict):
    raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}")
  return value


def _get(hf: dict, path: str, key: str, kind: type, default: Any = _REQUIRED) -> Any:
  """`hf[key]` checked to be of `kind` (an int is a valid float; a bool is not a number)."""
  if hf.get(key) is None:
    if default is _REQUIRED:
      raise UserError(f"{path}: missing key '{key}'")
    return default
  value = hf[key]
  kinds = (int, float) if kind is float else (kind,)
  if not isinstance(value, kinds) or (kind is not bool and isinstance(value, bool)):
    raise UserError(f"{path}: key '{key}' should be {kind.__name__}, got {value!r}")
  return value


def _activation(hf: dict, path: str, key: str, default: str) -> str:
  name = _get(hf, path, key, str, default)
  if name not in _ACTIVATIONS_IN:
    raise UserError(f"{path}: unsupported {key}={name!r} (supported: {', '.join(_ACTIVATIONS_IN)})")
  return _ACTIVATIONS_IN[name]


def _require_option(hf: dict, path: str, key: str, supported: Any) -> None:
  """Options that change the function the model computes and that our Transformer cannot express."""
  if hf.get(key) is not None and hf[key] != supported:
    raise UserError(f"{path}: unsupported option {key}={hf[key]!r} (only {supported!r} can be converted)")


def _gpt2_config(hf: dict, path: str) -> dict:
  """GPT-2's config keys -> our model keys. HF GPT-2 always has biases and no grouped-query attention."""
  _require_option(hf, path, "scale_attn_weights", True)
  _require_option(hf, path, "scale_attn_by_inverse_layer_idx", False)
  _require_option(hf, path, "add_cross_attention", False)
  d_model, n_heads = _get(hf, path, "n_embd", int), _get(hf, path, "n_head", int)
  return dict(
      vocab_size=_get(hf, path, "vocab_size", int), d_model=d_model, n_layers=_get(hf, path, "n_layer", int),
      n_heads=n_heads, n_kv_heads=n_heads, head_dim=0, d_ff=_get(hf, path, "n_inner", int, 4 * d_model),
      max_len=_get(hf, path, "n_positions", int), position="learned", norm="layernorm",
      norm_eps=_get(hf, path, "layer_norm_epsilon", float, 1e-5), mlp="dense",
      activation=_activation(hf, path, "activation_function", "gelu_new"), use_bias=True,
      tie_embeddings=_get(hf, path, "tie_word_embeddings", bool, True),
      init_std=_get(hf, path, "initializer_range", float, 0.02))


def _rope_theta(hf: dict, path: str) -> float:
  """theta of plain rotary positions, from transformers-5 `rope_parameters` or 4.x `rope_theta`.

  Scaled variants (linear, dynamic, yarn, llama3, ...) change the frequencies; we implement only the plain
  one, so they are refused rather than converted into a model that silently computes something else.
  """
  theta = _get(hf, path, "rope_theta", float, 10000.0)
  for key in ("rope_parameters", "rope_scaling"):
    section = hf.get(key)
    if section is None:
      continue
    if not isinstance(section, dict):
      raise UserError(f"{path}: key '{key}' should be an object, got {section!r}")
    rope_type = section.get("rope_type", section.get("type", "default"))
    if rope_type != "default":
      raise UserError(f"{path}: unsupported option {key}.rope_type={rope_type!r} (only 'default' rotary "
                      "positions can be converted)")
    theta = _get(section, f"{path} ({key})", "rope_theta", float, theta)
  return float(theta)


def _llama_config(hf: dict, path: str) -> dict:
  """Llama's config keys -> our model keys. One `use_bias` switch covers attention and MLP projections."""
  attention_bias = _get(hf, path, "attention_bias", bool, False)
  if _get(hf, path, "mlp_bias", bool, False) != attention_bias:
    raise UserError(f"{path}: unsupported option mlp_bias={hf['mlp_bias']!r} with "
                    f"attention_bias={attention_bias!r} (both must match: one use_bias switch)")
  n_heads = _get(hf, path, "num_attention_heads", int)
  return dict(
      vocab_size=_get(hf, path, "vocab_size", int), d_model=_get(hf, path, "hidden_size", int),
      n_layers=_get(hf, path, "num_hidden_layers", int), n_heads=n_heads,
      n_kv_heads=_get(hf, path, "num_key_value_heads", int, n_heads), head_dim=_get(hf, path, "head_dim", int, 0),
      d_ff=_get(hf, path, "intermediate_size", int), max_len=_get(hf, path, "max_position_embeddings", int),
      position="rope", rope_theta=_rope_theta(hf, path), norm="rmsnorm",
      norm_eps=_get(hf, path, "rms_norm_eps", float, 1e-6), mlp="gated",
      activation=_activation(hf, path, "hidden_act", "silu"), use_bias=attention_bias,
      tie_embeddings=_get(hf, path, "tie_word_embeddings", bool, False),
      init_std=_get(hf, path, "initializer_range", float, 0.02))


class _Checkpoint:
  """The tensors of a safetensors checkpoint (one file, or shards listed by an index), read one at a time.

  Files are opened with safetensors' flax backend pinned to the CPU: its numpy backend cannot represent
  bfloat16, the usual dtype of released Llama weights. Tensors come back as float32 numpy arrays.
  """

  def __init__(self, directory: str, stack: contextlib.ExitStack):
    self._stack = stack
    self._handles = {}
    single, index = os.path.join(directory, WEIGHTS_FILE), os.path.join(directory, INDEX_FILE)
    if os.path.isfile(single):
      self._handles[single] = self._open(single)
      self.files = {name: single for name in self._handles[single].keys()}
      self.listing = single
    elif os.path.isfile(index):
      weight_map = read_json_object(index).get("weight_map")
      if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise UserError(f"{index}: missing or malformed key 'weight_map'")
      self.files = {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
      self.listing = index
    else:
      pickles = [f for f in PICKLE_FILES if os.path.isfile(os.path.join(directory, f))]
      if pickles:
        raise UserError(f"{os.path.join(directory, pickles[0])}: PyTorch pickle weights are not loaded (unpickling "
                        f"can run arbitrary code); convert them to {WEIGHTS_FILE} first (e.g. load with "
                        "transformers and save_pretrained(dir, safe_serialization=True))")
      raise UserError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}")

  def _open(self, path: str):
    if not os.path.isfile(path):
      raise UserError(f"{path}: no such file (a shard named by {INDEX_FILE})")
    try:
      return self._stack.enter_context(safetensors.safe_open(path, framework="flax"))
    except safetensors.SafetensorError as e:
      raise UserError(f"{path}: not a readable safetensors file ({e})") from None

  def has(self, name: str) -> bool:
    return name in self.files

  def __call__(self, name: str, shape: tuple) -> np.ndarray:
    """The tensor `name` as float32, after checking that it exists, is floating point and has `shape`."""
    if name not in self.files:
      raise UserError(f"{self.listing}: missing tensor '{name}'")
    path = self.files[name]
    if path not in self._handles:
      self._handles[path] = self._open(path)
    handle = self._handles[path]
    if name not in handle.keys():
      raise UserError(f"{path}: missing tensor '{name}' (listed in {INDEX_FILE})")
    info = handle.get_slice(name)
    if info.get_dtype() not in _FLOAT_DTYPES:
      raise UserError(f"{path}: tensor '{name}' has dtype {info.get_dtype()}, expected a float dtype")
    if tuple(info.get_shape()) != tuple(shape):
      raise UserError(f"{path}: tensor '{name}' has shape {tuple(info.get_shape())}, expected {tuple(shape)}")
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      return np.asarray(handle.get_tensor(name), dtype=np.float32)


def _prefix(ckpt: _Checkpoint, prefix: str, probe: str) -> str:
  """Checkpoints of the bare trunk (GPT2Model, LlamaModel) lack the `transformer.`/`model.` prefix."""
  return prefix if ckpt.has(prefix + probe) or not ckpt.has(probe) else ""


def _gpt2_params(read: _Checkpoint, cfg: TransformerConfig) -> dict:
  d, h, k, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
  pre = _prefix(read, "transformer.", "wte.weight")
  norm = lambda name: {"scale": read(f"{name}.weight", (d,)), "bias": read(f"{name}.bias", (d,))}
  conv = lambda name, n_in, n_out: {"kernel": read(f"{name}.weight", (n_in, n_out)),
                                    "bias": read(f"{name}.bias", (n_out,))}
  params = {"embed": {"embedding": read(f"{pre}wte.weight", (cfg.vocab_size, d))},
            "pos_embed": {"embedding": read(f"{pre}wpe.weight", (cfg.max_len, d))},
            "final_norm": norm(f"{pre}ln_f")}
  for i in range(cfg.n_layers):
    n = f"{pre}h.{i}."
    qkv = read(f"{n}attn.c_attn.weight", (d, 3 * h * k)).reshape(d, 3, h, k)
    qkv_bias = read(f"{n}attn.c_attn.bias", (3 * h * k,)).reshape(3, h, k)
    attn = {name: {"kernel": qkv[:, j], "bias": qkv_bias[j]} for j, name in enumerate("qkv")}
    attn["o"] = {"kernel": read(f"{n}attn.c_proj.weight", (h * k, d)).reshape(h, k, d),
                 "bias": read(f"{n}attn.c_proj.bias", (d,))}
    params[f"layers_{i}"] = {"attn_norm": norm(f"{n}ln_1"), "attn": attn, "mlp_norm": norm(f"{n}ln_2"),
                             "mlp": {"fc_in": conv(f"{n}mlp.c_fc", d, f), "fc_out": conv(f"{n}mlp.c_proj", f, d)}}
  if not cfg.tie_embeddings:
    params["lm_head"] = {"kernel": read("lm_head.weight", (cfg.vocab_size, d)).T}
  return params


def _llama_params(read: _Checkpoint, cfg: TransformerConfig) -> dict:
  d, h, g, k, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  pre = _prefix(read, "model.", "embed_tokens.weight")

  def linear(name: str, in_shape: tuple, out_shape: tuple) -> dict:
    """torch Linear (out, in) -> our kernel (*in, *out) and bias (*out)."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    layer = {"kernel": read(f"{name}.weight", (n_out, n_in)).T.reshape(*in_shape, *out_shape)}
    if cfg.use_bias:
      layer["bias"] = read(f"{name}.bias", (n_out,)).reshape(out_shape)
    return layer

  params = {"embed": {"embedding": read(f"{pre}embed_tokens.weight", (cfg.vocab_size, d))},
            "final_norm": {"scale": read(f"{pre}norm.weight", (d,))}}
  for i in range(cfg.n_layers):
    n = f"{pre}layers.{i}."
    attn = {"q": linear(f"{n}self_attn.q_proj", (d,), (h, k)), "k": linear(f"{n}self_attn.k_proj", (d,), (g, k)),
            "v": linear(f"{n}self_attn.v_proj", (d,), (g, k)), "o": linear(f"{n}self_attn.o_proj", (h, k), (d,))}
    mlp = {"gate": linear(f"{n}mlp.gate_proj", (d,), (f,)), "up": linear(f"{n}mlp.up_proj", (d,), (f,)),
           "down": linear(f"{n}mlp.down_proj", (f,), (d,))}
    params[f"layers_{i}"] = {"attn_norm": {"scale": read(f"{n}input_layernorm.weight", (d,))}, "attn": attn,
                             "mlp_norm": {"scale": read(f"{n}post_attention_layernorm.weight", (d,))}, "mlp": mlp}
  if not cfg.tie_embeddings:
    params["lm_head"] = {"kernel": read("lm_head.weight", (cfg.vocab_size, d)).T}
  return params


_FAMILIES_IN: dict[str, tuple[Callable, Callable]] = {"gpt2": (_gpt2_config, _gpt2_params),
                                                      "llama": (_llama_config, _llama_params)}


def load_hf(directory: str, *, scan_layers: bool = False, dtype: str = "float32"
            ) -> tuple[TransformerConfig, dict]:
  """Reads a Hugging Face GPT-2 or Llama directory (config.json + safetensors, single or sharded).

  Returns our `TransformerConfig` (compute `dtype`, `scan_layers` as asked; dropout 0, since dropout is a
  training choice for the experiment config, not part of the checkpoint) and the parameters as a plain
  nested float32 dict in our layout: `layers_{i}/...`, or stacked under `layers` when `scan_layers`.
  Anything the conversion cannot represent exactly raises `UserError` naming the file and key or tensor.
  """
  if dtype not in ("float32", "bfloat16"):
    raise UserError(f"load_hf: dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  path = os.path.join(directory, CONFIG_FILE)
  hf = read_json_object(path)
  model_type = hf.get("model_type")
  if model_type not in _FAMILIES_IN:
    raise UserError(f"{path}: unsupported model_type {model_type!r} (supported: {', '.join(_FAMILIES_IN)})")
  to_config, to_params = _FAMILIES_IN[model_type]
  values = {**to_config(hf, path), "dtype": dtype, "scan_layers": scan_layers}
  try:
    config = TransformerConfig.from_config(values)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  with contextlib.ExitStack() as stack:
    params = to_params(_Checkpoint(directory, stack), config)
  params = jax.tree.map(np.ascontiguousarray, params)
  if scan_layers:
    params = stack_layers(params, config.n_layers)
  return config, params


# --- checking and writing --------------------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}/").items()}
  return {prefix[:-1]: tree}


def check_params(config: TransformerConfig, params: dict, source: str) -> None:
  """Raises `UserError` naming `source` and the first parameter of the LM that is missing or misshapen.

  The expected shapes come from `Transformer(config)` itself (abstractly: no arrays are made), so the check
  follows the model. Extra entries (value or reward heads) are allowed.
  """
  shapes = jax.eval_shape(lambda: Transformer(config).init(jax.random.PRNGKey(0), np.zeros((1, 1), np.int32)))
  given = _flatten(params)
  for key, expected in _flatten(unbox(shapes["params"])).items():
    if key not in given:
      raise UserError(f"{source}: missing parameter '{key}' (the model config expects shape {expected.shape})")
    shape = tuple(np.shape(given[key]))
    if shape != tuple(expected.shape):
      raise UserError(f"{source}: parameter '{key}' has shape {shape}, the model config expects {expected.shape}")


def _export_family(config: TransformerConfig) -> str:
  """Which HF architecture can hold `config`, or a UserError naming the key that prevents the export.

  The position switch picks the family; every other switch must then be one that family's HF code has.
  """
  family = "gpt2" if config.position == "learned" else "llama"
  c = config
  if family == "gpt2":
    needs = (("norm", c.norm == "layernorm", "'layernorm'"), ("mlp", c.mlp == "dense", "'dense'"),
             ("use_bias", c.use_bias, "True"), ("n_kv_heads", c.n_kv_heads == c.n_heads, "n_heads"),
             ("head_dim", c.head_dim * c.n_heads == c.d_model, "d_model / n_heads"))
  else:
    needs = (("norm", c.norm == "rmsnorm", "'rmsnorm'"), ("mlp", c.mlp == "gated", "'gated'"))
  for key, ok, need in needs:
    if not ok:
      name = {"gpt2": "GPT-2", "llama": "Llama"}[family]
      raise UserError(f"cannot export to Hugging Face: model.{key}={getattr(c, key)!r}, but {name} "
                      f"(chosen by model.position={c.position!r}) needs {key}={need}")
  return family


def _gpt2_hf(config: TransformerConfig, p: dict) -> tuple[dict, dict]:
  """Our config and (unstacked, float32) parameters -> GPT-2's config.json and tensors."""
  d = config.d_model
  hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
        "n_positions": config.max_len, "n_embd": d, "n_layer": config.n_layers, "n_head": config.n_heads,
        "n_inner": config.d_ff, "activation_function": _ACTIVATIONS_OUT[config.activation],
        "layer_norm_epsilon": config.norm_eps, "initializer_range": config.init_std,
        # Our dropout acts on the embeddings and the residual branches; attention weights are never dropped.
        "embd_pdrop": config.dropout, "resid_pdrop": config.dropout, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False}
  tensors = {"transformer.wte.weight": p["embed"]["embedding"], "transformer.wpe.weight": p["pos_embed"]["embedding"],
             "transformer.ln_f.weight": p["final_norm"]["scale"], "transformer.ln_f.bias": p["final_norm"]["bias"]}
  for i in range(config.n_layers):
    layer, n = p[f"layers_{i}"], f"transformer.h.{i}."
    attn, mlp = layer["attn"], layer["mlp"]
    tensors.update({
        f"{n}ln_1.weight": layer["attn_norm"]["scale"], f"{n}ln_1.bias": layer["attn_norm"]["bias"],
        f"{n}attn.c_attn.weight": np.stack([attn[x]["kernel"] for x in "qkv"], axis=1).reshape(d, -1),
        f"{n}attn.c_attn.bias": np.stack([attn[x]["bias"] for x in "qkv"]).reshape(-1),
        f"{n}attn.c_proj.weight": attn["o"]["kernel"].reshape(-1, d), f"{n}attn.c_proj.bias": attn["o"]["bias"],
        f"{n}ln_2.weight": layer["mlp_norm"]["scale"], f"{n}ln_2.bias": layer["mlp_norm"]["bias"],
        f"{n}mlp.c_fc.weight": mlp["fc_in"]["kernel"], f"{n}mlp.c_fc.bias": mlp["fc_in"]["bias"],
        f"{n}mlp.c_proj.weight": mlp["fc_out"]["kernel"], f"{n}mlp.c_proj.bias": mlp["fc_out"]["bias"]})
  return hf, tensors


def _llama_hf(config: TransformerConfig, p: dict) -> tuple[dict, dict]:
  """Our config and (unstacked, float32) parameters -> Llama's config.json and tensors."""
  hf = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_len, "hidden_size": config.d_model,
        "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "hidden_act": _ACTIVATIONS_OUT[config.activation],
        "rms_norm_eps": config.norm_eps, "initializer_range": config.init_std,
        "attention_bias": config.use_bias, "mlp_bias": config.use_bias, "attention_dropout": 0.0,
        "pretraining_tp": 1,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta. Both are written so either loads it.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta}}

  def linear(name: str, layer: dict, in_ndim: int) -> dict:
    """Our kernel (*in, *out) -> torch Linear weight (out, in), and the bias flattened."""
    kernel = layer["kernel"]
    out = {f"{name}.weight": kernel.reshape(math.prod(kernel.shape[:in_ndim]), -1).T}
    if config.use_bias:
      out[f"{name}.bias"] = layer["bias"].reshape(-1)
    return out

  tensors = {"model.embed_tokens.weight": p["embed"]["embedding"], "model.norm.weight": p["final_norm"]["scale"]}
  for i in range(config.n_layers):
    layer, n = p[f"layers_{i}"], f"model.layers.{i}."
    attn, mlp = layer["attn"], layer["mlp"]
    tensors[f"{n}input_layernorm.weight"] = layer["attn_norm"]["scale"]
    tensors[f"{n}post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
    for x in "qkv":
      tensors.update(linear(f"{n}self_attn.{x}_proj", attn[x], 1))
    tensors.update(linear(f"{n}self_attn.o_proj", attn["o"], 2))
    for x in ("gate", "up", "down"):
      tensors.update(linear(f"{n}mlp.{x}_proj", mlp[x], 1))
  return hf, tensors


_FAMILIES_OUT: dict[str, Callable] = {"gpt2": _gpt2_hf, "llama": _llama_hf}


@contextlib.contextmanager
def atomic_directory(directory: str, overwrite: bool = False) -> Iterator[str]:
  """Yields an empty scratch directory beside `directory` that becomes `directory` when the block ends.

  A failure (or a kill) midway leaves at most a hidden `.NAME.partial-*` sibling, never a `directory` that
  looks complete. An existing non-empty `directory` is replaced only with `overwrite`.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    if not os.path.isdir(directory):
      raise UserError(f"{directory}: exists and is not a directory")
    if os.listdir(directory) and not overwrite:
      raise UserError(f"{directory}: directory exists and is not empty (pass overwrite=True, or --overwrite, "
                      "to replace it)")
  parent, name = os.path.split(directory)
  os.makedirs(parent, exist_ok=True)
  scratch = os.path.join(parent, f".{name}.partial-{secrets.token_hex(4)}")
  os.mkdir(scratch)
  try:
    yield scratch
    if os.path.exists(directory):
      old = scratch + "-replaced"
      os.rename(directory, old)
      try:
        os.rename(scratch, directory)
      except OSError:
        os.rename(old, directory)
        raise
      shutil.rmtree(old)
    else:
      os.rename(scratch, directory)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def save_hf(directory: str, config: TransformerConfig, params: dict, *, overwrite: bool = False) -> None:
  """Writes `config.json` and `model.safetensors` that transformers loads as GPT2LMHeadModel or
  LlamaForCausalLM, with the tensor names and layouts its own `save_pretrained` writes.

  Only models one of the two HF architectures can compute are exported (gpt2: learned positions, LayerNorm,
  dense MLP, biases; llama: rotary, RMSNorm, gated MLP); otherwise a UserError names the key that prevents
  it. Value and reward heads have no place in a CausalLM and are left out. Tensors are written as float32.
  """
  family = _export_family(config)
  if "layers" in params:
    params = unstack_layers(params, config.n_layers)
  config = dataclasses.replace(config, scan_layers=False)
  check_params(config, params, "save_hf params")
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  hf, tensors = _FAMILIES_OUT[family](config, params)
  if not config.tie_embeddings:
    tensors["lm_head.weight"] = params["lm_head"]["kernel"].T
  hf.update({"tie_word_embeddings": config.tie_embeddings, "torch_dtype": "float32", "use_cache": True,
             # The special-token ids belong to the tokenizer, which our config does not know.
             "bos_token_id": None, "eos_token_id": None, "pad_token_id": None})
  tensors = {name: np.ascontiguousarray(x) for name, x in tensors.items()}
  with atomic_directory(directory, overwrite) as scratch:
    with open(os.path.join(scratch, CONFIG_FILE), "w") as f:
      json.dump(hf, f, indent=2, sort_keys=True)
      f.write("\n")
    # transformers refuses safetensors files whose metadata does not name a framework it knows.
    safetensors.numpy.save_file(tensors, os.path.join(scratch, WEIGHTS_FILE), metadata={"format": "pt"})
