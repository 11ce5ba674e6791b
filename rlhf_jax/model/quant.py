"""int8 weight-only quantisation for sampling and evaluation: per-output-channel scales, float accumulation.

`quantize_int8(params)` replaces every weight matrix -- the projections' kernels, the untied LM head and the
token embedding -- by int8 values q = round(W / s), s = max |W| / 127 over the matrix's input axes (one scale
per output channel: per row for the embedding table), stored beside it as `<name>_scale`. Norms, biases,
positions and the small heads stay float32. The model (`Linear`, `Embed`, `LMHead`) sees a `_scale` next to a
weight and computes (x . q) * s: the int8 values are converted to the compute dtype inside the matmul's
operand and the products are accumulated in float, so the one error is the rounding of the weights (at most
s / 2 per weight). Scaling after the contraction is exact because s is constant along the contracted axes.

Training never sees these parameters: `sampling.quantize=int8` quantises a copy for the evaluation's samples
(eval/gold.py), and `python -m rlhf_jax.sample --quantize int8` (and chat) for the command-line tools.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

MODES = ("none", "int8")
SUFFIX = "_scale"


def _input_axes(path: tuple, ndim: int) -> tuple[int, ...]:
  """The axes of the weight at `path` that a matmul contracts (the scale is constant along them)."""
  if path[-1] == "embedding":
    return (ndim - 1,)  # (V, D): one scale per row, shared by the lookup and the tied output projection.
  lead = 1 if "layers" in path else 0  # Scanned layers carry a leading L axis.
  in_ndim = 2 if path[-2] == "o" else 1  # attn/o contracts heads and head_dim.
  return tuple(range(lead, lead + in_ndim))


def _quantizable(path: tuple, x: Any) -> bool:
  if path[0] in ("value_head", "reward_head", "pos_embed"):
    return False
  return (path[-1] == "kernel" and x.ndim >= 2) or path[-1] == "embedding"


def quantize_int8(params: dict) -> dict:
  """`params` with every weight matrix int8 and its per-output-channel float32 scale beside it."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, x in flat.items():
    if not _quantizable(path, x):
      out[path] = x
      continue
    axes = _input_axes(path, x.ndim)
    absmax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    out[path] = jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8)
    out[path[:-1] + (path[-1] + SUFFIX,)] = jnp.squeeze(scale, axis=axes)
  return traverse_util.unflatten_dict(out)


def dequantize(params: dict) -> dict:
  """The float32 weights int8 values and scales stand for (what a quantised model computes with)."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, x in flat.items():
    if path[-1].endswith(SUFFIX):
      continue
    scale = flat.get(path[:-1] + (path[-1] + SUFFIX,))
    if scale is not None:
      x = x.astype(jnp.float32) * jnp.expand_dims(scale, _input_axes(path, x.ndim))
    out[path] = x
  return traverse_util.unflatten_dict(out)


_quantize_int8 = jax.jit(quantize_int8)  # One trace per parameter layout, for every evaluation that asks.


def for_sampling(params: dict, mode: str) -> dict:
  """The parameters a sampler reads under `sampling.quantize` = `mode`."""
  if mode == "none":
    return params
  if mode == "int8":
    return _quantize_int8(params)
  raise ValueError(f"unknown quantisation {mode!r}; expected one of {', '.join(MODES)}")
