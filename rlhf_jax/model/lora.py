"""Low-rank adapters (LoRA, Hu et al. 2021) on the Transformer's projections, as plain parameters.

A targeted `Linear` with kernel W (*in, *out) gains `lora_a` (*in, r) and `lora_b` (r, *out) next to its
kernel and computes

  y = x W + (alpha / r) * dropout(x) A B

with A drawn from N(0, 1/in) and B zero, so a freshly adapted model is the base model exactly. The adapters
carry the kernel's logical axis names (in axes on A, out axes on B, the rank unsharded), so they shard on the
same mesh as their base, and with `scan_layers` they gain the same leading L axis.

Training freezes everything but the adapters and the heads a stage adds (`TRAINED_HEADS`: the reward model's
reward head, a critic's value head): `split` cuts a parameter tree into (frozen, trainable) by name, the step
differentiates only the trainable part, and the optimizer state and checkpoints hold only that part
(`train/state.py`, `train/checkpoint.py`). The frozen part is a view of the base weights, so the base with the
adapters off (`base`) is the same arrays: PPO's reference and DPO's need no second copy.

`merge` folds the adapters into the kernels (W + (alpha/r) A B) and returns the plain model's tree: what a later
stage, the samplers and the Hugging Face export read from a LoRA run (`artifacts/models.load_pretrained`).

Why not a library: qwix 0.1.8 (the JAX library Tunix builds its LoRA on) adds adapters by intercepting every
`dot_general` and `einsum` a module makes, finding the weight by walking the traced operand back to a param (by
its shape when not traced), and creating `<name>_lora_a/_b` params. The layer is the small part: freezing by
name, an optimizer and checkpoints of adapters only, merging by path for later stages and the Hugging Face
export, and the base with adapters off as the reference we would write either way; on the names our `Linear`
already owns the layer is fifteen lines, with no patching of jax operations at call time. (qwix was read,
not run on this model.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

from rlhf_jax.errors import UserError

ADAPTERS = ("lora_a", "lora_b")
# The projections a target name stands for: each is the name of a Linear in the attention or the MLP block.
GROUPS = {"attn": ("q", "k", "v", "o"), "mlp": ("fc_in", "fc_out", "gate", "up", "down")}
PROJECTIONS = GROUPS["attn"] + GROUPS["mlp"]
# Heads that a stage creates fresh on top of a pretrained trunk: they are trained, adapters or not.
TRAINED_HEADS = ("value_head", "reward_head")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """rank r > 0; alpha, the scale being alpha / r; dropout on the adapters' input; the targeted projections."""
  rank: int
  alpha: float
  dropout: float = 0.0
  targets: tuple = PROJECTIONS

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def rank_for(self, name: str) -> int:
    """The adapter rank of the projection called `name` (0: not adapted)."""
    return self.rank if name in self.targets else 0

  @classmethod
  def from_config(cls, lora: Any) -> Optional["LoraSpec"]:
    """The spec of a config's `lora` section (a ConfigDict, or the dict a workdir's config.json holds); None
    when lora.rank is 0 (no adapters). Errors name the key."""
    if lora is None or int(lora["rank"]) == 0:
      return None
    if int(lora["rank"]) < 0:
      raise UserError(f"config key 'lora.rank': {lora['rank']} is negative; 0 turns LoRA off")
    if not float(lora["alpha"]) > 0:
      raise UserError(f"config key 'lora.alpha': {lora['alpha']} must be > 0 (the adapters' scale is alpha / rank)")
    if not 0.0 <= float(lora["dropout"]) < 1.0:
      raise UserError(f"config key 'lora.dropout': {lora['dropout']} is not in [0, 1)")
    names = [t.strip() for t in str(lora["targets"]).split(",") if t.strip()]
    targets = []
    for name in names:
      if name not in GROUPS and name not in PROJECTIONS:
        raise UserError(f"config key 'lora.targets': unknown projection {name!r}; expected names among "
                        f"{', '.join(PROJECTIONS)} or the groups {', '.join(GROUPS)}")
      targets += GROUPS.get(name, (name,))
    if not targets:
      raise UserError("config key 'lora.targets': empty; name the projections to adapt (e.g. 'attn,mlp')")
    return cls(rank=int(lora["rank"]), alpha=float(lora["alpha"]), dropout=float(lora["dropout"]),
               targets=tuple(dict.fromkeys(targets)))

  def to_dict(self) -> dict:
    return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": ",".join(self.targets)}


def is_trainable(path: tuple) -> bool:
  """Whether the parameter at `path` (a tuple of keys: from a model's top level, or from a tree of models such
  as a PPO state's {"actor": ..., "critic": ...}) is trained under LoRA."""
  return path[-1] in ADAPTERS or any(key in TRAINED_HEADS for key in path[:-1])


def split(params: dict) -> tuple[dict, dict]:
  """(frozen, trainable): two nested dicts of the same layout, together every leaf of `params` once."""
  flat = traverse_util.flatten_dict(params)
  frozen = {p: x for p, x in flat.items() if not is_trainable(p)}
  trainable = {p: x for p, x in flat.items() if is_trainable(p)}
  return traverse_util.unflatten_dict(frozen), traverse_util.unflatten_dict(trainable)


def join(frozen: dict, trainable: dict) -> dict:
  """The inverse of `split`."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                       **traverse_util.flatten_dict(trainable)})


def has_adapters(params: Any) -> bool:
  """Whether a parameter tree (a nested dict; anything else has none) carries LoRA adapters."""
  return isinstance(params, dict) and any(p[-1] in ADAPTERS for p in traverse_util.flatten_dict(params))


def base(params: dict) -> dict:
  """The tree without its adapters: the base model (the same arrays, no copy)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: x for p, x in flat.items() if p[-1] not in ADAPTERS})


def delta(a: jax.Array, b: jax.Array, kernel_ndim: int) -> jax.Array:
  """A B, shaped as the kernel: a (*lead, *in, r) and b (*lead, r, *out) with kernel (*lead, *in, *out)."""
  n_lead = a.ndim + b.ndim - 2 - kernel_ndim
  lead, in_shape, out_shape = a.shape[:n_lead], a.shape[n_lead:-1], b.shape[n_lead + 1:]
  r = a.shape[-1]
  product = jnp.matmul(a.reshape(*lead, math.prod(in_shape), r).astype(jnp.float32),
                       b.reshape(*lead, r, math.prod(out_shape)).astype(jnp.float32))
  return product.reshape(*lead, *in_shape, *out_shape)


def merge(params: dict, spec: LoraSpec) -> dict:
  """The plain model's tree: every adapted kernel replaced by W + (alpha / r) A B, the adapters dropped."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, x in flat.items():
    if path[-1] in ADAPTERS:
      continue
    if path[-1] == "kernel" and path[:-1] + ("lora_a",) in flat:
      a, b = flat[path[:-1] + ("lora_a",)], flat[path[:-1] + ("lora_b",)]
      x = (x.astype(jnp.float32) + spec.scale * delta(a, b, x.ndim)).astype(x.dtype)
    out[path] = x
  return traverse_util.unflatten_dict(out)


def init_adapters(params: dict, fresh: dict) -> dict:
  """`params` of the base model (or of a model with fresh heads) completed with the adapters and any other
  parameters only `fresh` (an initialised adapted model) has; every entry of `params` wins."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(fresh), **traverse_util.flatten_dict(params)})


def nbytes(tree: Any) -> int:
  """Bytes of the arrays (or shape structs) in `tree`."""
  return sum(int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
