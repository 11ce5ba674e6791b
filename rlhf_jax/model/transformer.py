"""The causal Transformer: one implementation, two families (GPT-2 style and Llama style).

Shapes (dimension-suffixed names follow this legend):
  B batch, T query length, S key length (cache slots), D model width, H query heads, G key/value heads,
  K head dimension, F MLP width, V vocabulary, L layers.

`Transformer(config, heads=(...))` is a Flax linen module whose parameters are a plain nested dict:

  embed/embedding (V, D)              pos_embed/embedding (max_len, D)   [learned positions only]
  layers_{i}/attn_norm/{scale,bias}   layers_{i}/attn/{q,k,v}/{kernel (D,H|G,K), bias}   attn/o/kernel (H,K,D)
  layers_{i}/mlp_norm/{scale,bias}    layers_{i}/mlp/{fc_in,fc_out} (dense) or {gate,up,down} (gated)
  final_norm/{scale,bias}             lm_head/kernel (D, V) [untied]   value_head/...   reward_head/...

With `scan_layers=True` the blocks are one `nn.scan` and their parameters sit under `layers/` with a leading
L axis (logical name "layers"); `stack_layers`/`unstack_layers` convert between the two layouts.

Calling the module returns a `ModelOutput` with the final hidden states and the outputs of the requested
heads. With a `KVCache` it runs the prefill/decode path: new tokens are written into the cache at
`cache.index` and attend to everything before them; prefill is the same call with an empty cache.

Masking: tokens attend causally, and only within their own segment when `segment_ids` are given (packed
rows: documents never see each other; id 0 marks padding). Positions are per token, so packed documents
each start at 0 and left-padded prompts start counting at their first real token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.config import resolve_model
from rlhf_jax.errors import UserError
from rlhf_jax.model.heads import LMHead, RewardHead, ValueHead, response_log_likelihood
from rlhf_jax.model.lora import LoraSpec

HEADS = ("lm", "value", "reward")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the trunk. Built from the config's `model` section by `from_config`."""
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  max_len: int
  position: str  # learned | rope
  rope_theta: float
  norm: str  # layernorm | rmsnorm
  norm_eps: float
  mlp: str  # dense | gated
  activation: str  # gelu_tanh | gelu | silu | relu
  use_bias: bool  # Biases of the projections and of LayerNorm.
  tie_embeddings: bool
  dropout: float
  init_std: float
  dtype: str  # Compute dtype; parameters are always float32.
  remat: str  # none | full | dots
  scan_layers: bool
  attention_impl: str  # xla | cudnn | auto (jax picks)

  @classmethod
  def from_config(cls, model: Any) -> "TransformerConfig":
    """The trunk a `model` config section (ConfigDict or dict) describes, checked and with its derived values
    (head_dim, n_kv_heads) filled in by `config.resolve_model`; errors name the offending key. The fields have
    no defaults of their own: a key the section lacks takes `config.model_config()`'s value."""
    return cls(**resolve_model(model))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, heads: Sequence[str] = ("lm",)) -> int:
    """Parameter count, computed from shapes alone (no arrays are made)."""
    shapes = jax.eval_shape(lambda: Transformer(self, heads=tuple(heads)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(unbox(shapes["params"])))


@flax.struct.dataclass
class LayerCache:
  """Keys and values of one layer: k, v (B, G, S, K), head-major so that attention over the cache is G * B
  batched matmuls with no relayout; with scanned layers they carry a leading L axis."""
  k: jax.Array
  v: jax.Array


@flax.struct.dataclass
class KVCache:
  """The decode state. `segment_ids` (B, S) marks filled slots (0 = empty or padding); `index` () is the
  next slot to write, the same for every row (rows that are shorter carry padding, not a different index)."""
  layers: Any  # LayerCache with a leading L axis (scanned layers) or a tuple of L LayerCaches.
  segment_ids: jax.Array
  index: jax.Array


@flax.struct.dataclass
class ModelOutput:
  """hidden (B, T, D) after the final norm; logits (B, T, V) float32; values and rewards (B, T) float32."""
  hidden: jax.Array
  logits: Optional[jax.Array] = None
  values: Optional[jax.Array] = None
  rewards: Optional[jax.Array] = None
  cache: Optional[KVCache] = None


def init_cache(config: TransformerConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
  """An empty cache of `length` slots for `batch` rows, in the compute dtype unless given."""
  if config.position == "learned" and length > config.max_len:
    raise UserError(f"a cache of {length} slots exceeds model.max_len={config.max_len} (learned positions)")
  dtype = dtype or config.compute_dtype
  shape = (batch, config.n_kv_heads, length, config.head_dim)
  if config.scan_layers:
    zeros = jnp.zeros((config.n_layers, *shape), dtype)
    layers = LayerCache(k=zeros, v=zeros)
  else:
    layers = tuple(LayerCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
                   for _ in range(config.n_layers))
  return KVCache(layers=layers, segment_ids=jnp.zeros((batch, length), jnp.int32),
                 index=jnp.zeros((), jnp.int32))


def grow_cache(cache: KVCache, length: int) -> KVCache:
  """The same cache with `length` slots (at least its current number); the new slots are empty. It copies
  the cache once: a decode loop that reads every slot at every step can instead run over a short cache and
  grow it between loops (`sampling.make_generate`)."""
  extra = length - cache.segment_ids.shape[1]
  if extra < 0:
    raise ValueError(f"cannot shrink a cache of {cache.segment_ids.shape[1]} slots to {length}")
  pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, extra), (0, 0)])  # S is axis -2 of k and v.
  return KVCache(layers=jax.tree.map(pad, cache.layers),
                 segment_ids=jnp.pad(cache.segment_ids, ((0, 0), (0, extra))), index=cache.index)


def unbox(tree):
  """Strips flax's LogicallyPartitioned boxes, leaving plain arrays (or shape structs)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def stack_layers(params: dict, n_layers: int) -> dict:
  """`layers_0..layers_{L-1}` -> `layers` with a leading L axis (the scan_layers layout)."""
  params = dict(params)
  blocks = [params.pop(f"layers_{i}") for i in range(n_layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return params


def unstack_layers(params: dict, n_layers: int) -> dict:
  """`layers` with a leading L axis -> `layers_0..layers_{L-1}`."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(n_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return params


# --- building blocks -------------------------------------------------------------------------------------


class Linear(nn.Module):
  """Contracts the last `in_ndim` axes of x with a kernel of shape (*in, *out_shape), plus a bias."""
  out_shape: tuple
  axes: tuple  # Logical names of the kernel's axes: in axes, then out axes.
  in_ndim: int = 1
  use_bias: bool = False
  std: float = 0.02
  dtype: Any = jnp.float32
  lora: Optional[LoraSpec] = None  # Adapters when `lora.rank_for(self.name)` > 0 (model/lora.py).
  deterministic: bool = True  # False: the adapters' dropout is on (needs a "dropout" RNG).

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.in_ndim:]
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes),
                        (*in_shape, *self.out_shape))
    # As one 2-D matmul: XLA's CPU backend computes the weight gradient of a 3-D contraction (over batch and
    # length at once) several times slower than the same GEMM on flattened rows.
    lead = x.shape[:x.ndim - self.in_ndim]
    x_nf = x.reshape(-1, math.prod(in_shape)).astype(self.dtype)
    y_nf = jnp.dot(x_nf, kernel.reshape(math.prod(in_shape), -1).astype(self.dtype))
    if self.has_variable("params", "kernel_scale"):  # int8 weights (model/quant.py): scale the products.
      y_nf = y_nf * self.get_variable("params", "kernel_scale").reshape(-1).astype(self.dtype)
    y = y_nf.reshape(*lead, *self.out_shape)
    rank = self.lora.rank_for(self.name) if self.lora is not None else 0
    # Parameters without adapters (the base model's) switch them off: the base model, the same arrays.
    if rank and (self.is_initializing() or self.has_variable("params", "lora_a")):
      # y += (alpha / r) * dropout(x) A B, never forming A B.
      in_axes, out_axes = self.axes[:self.in_ndim], self.axes[self.in_ndim:]
      a = self.param("lora_a", nn.with_logical_partitioning(
          nn.initializers.normal(1.0 / math.sqrt(math.prod(in_shape))), (*in_axes, None)), (*in_shape, rank))
      b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, *out_axes)),
                     (rank, *self.out_shape))
      x_nf = nn.Dropout(self.lora.dropout, deterministic=self.deterministic or self.lora.dropout == 0.0)(x_nf)
      h_nr = jnp.dot(x_nf, a.reshape(-1, rank).astype(self.dtype))
      y = y + (self.lora.scale * jnp.dot(h_nr, b.reshape(rank, -1).astype(self.dtype))).reshape(y.shape)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[self.in_ndim:]),
                        self.out_shape)
      y = y + bias.astype(self.dtype)
    return y


class Norm(nn.Module):
  """LayerNorm (GPT-2) or RMSNorm (Llama), computed in float32 and returned in the compute dtype."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    x = x_btd.astype(jnp.float32)
    if cfg.norm == "layernorm":
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + cfg.norm_eps)
    x = x * self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],))
    if cfg.norm == "layernorm" and cfg.use_bias:
      x = x + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (x.shape[-1],))
    return x.astype(cfg.compute_dtype)


class Embed(nn.Module):
  """A lookup table (N, D); `attend` multiplies by its transpose (tied output projection)."""
  num_embeddings: int
  features: int
  init_std: float
  dtype: Any
  axes: tuple = ("vocab", "embed")

  def setup(self):
    self.embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), self.axes), (self.num_embeddings, self.features))

  def __call__(self, ids):
    # Gather from a table sharded on one axis only: with the table split over both vocab (tensor) and width
    # (fsdp), XLA's partitioner replicates it in a slow "involuntary full rematerialization" (NOTES-stack.md).
    # Unsharding the width first is the all-gather FSDP does for every weight anyway.
    table = nn.with_logical_constraint(self.embedding, (self.axes[0], None))
    rows = jnp.take(table, ids, axis=0).astype(self.dtype)
    if self.has_variable("params", "embedding_scale"):  # int8 rows (model/quant.py), one scale each.
      rows = rows * jnp.take(self.get_variable("params", "embedding_scale"), ids, axis=0)[..., None].astype(self.dtype)
    return rows

  def attend(self, hidden_btd):
    # One 2-D matmul over flattened rows, as in Linear: XLA's CPU backend ran the 3-D contraction
    # "btd,vd->btv" (forward and gradients) at about half the speed (benchmarks/ppo_iteration.py).
    lead, d = hidden_btd.shape[:-1], hidden_btd.shape[-1]
    logits = jnp.dot(hidden_btd.reshape(-1, d).astype(self.dtype), self.embedding.astype(self.dtype).T,
                     preferred_element_type=jnp.float32)
    if self.has_variable("params", "embedding_scale"):  # int8 rows: each vocabulary entry's own scale.
      logits = logits * self.get_variable("params", "embedding_scale")
    return logits.reshape(*lead, self.num_embeddings)


def _cached_attention(q_bthk, k_bgsk, v_bgsk, mask_b1ts):
  """softmax(q k^T / sqrt(K)) v of T queries over the S slots of a head-major cache, (B, T, H, K).

  `jax.nn.dot_product_attention` takes keys as (B, S, G, K); fed from the cache in that layout, XLA's CPU
  backend transposes every layer's whole K and V before each decode step's matmuls, O(S) copies per new
  token that were 57% of a toy-model generation (benchmarks/generate.py). Query head h uses key/value head
  h // (H / G), as in grouped-query attention.
  """
  b, t, h, k = q_bthk.shape
  g = k_bgsk.shape[1]
  q_bgrtk = q_bthk.reshape(b, t, g, h // g, k).transpose(0, 2, 3, 1, 4)
  logits_bgrts = jnp.einsum("bgrtk,bgsk->bgrts", q_bgrtk, k_bgsk,
                            preferred_element_type=jnp.float32) / np.sqrt(k).astype(np.float32)
  logits_bgrts = jnp.where(mask_b1ts[:, :, None], logits_bgrts, jnp.finfo(jnp.float32).min)
  probs_bgrts = jax.nn.softmax(logits_bgrts, axis=-1).astype(v_bgsk.dtype)
  out_bgrtk = jnp.einsum("bgrts,bgsk->bgrtk", probs_bgrts, v_bgsk)
  return out_bgrtk.transpose(0, 3, 1, 2, 4).reshape(b, t, h, k)


def rotary(x_bthk, positions_bt, theta: float):
  """Rotary position embedding in the "rotate half" layout that Hugging Face's Llama uses (Su et al. 2021):
  feature i is paired with feature i + K/2 and rotated by angle position * theta^(-2i/K)."""
  k = x_bthk.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))  # (K/2,)
  angles = positions_bt[..., None].astype(jnp.float32) * inv_freq  # (B, T, K/2)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x = x_bthk.astype(jnp.float32)
  x1, x2 = x[..., : k // 2], x[..., k // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthk.dtype)


class Attention(nn.Module):
  config: TransformerConfig
  lora: Optional[LoraSpec] = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_btd, positions_bt, mask_b1ts, cache_index, layer_cache: Optional[LayerCache]):
    cfg = self.config
    dt = cfg.compute_dtype
    h, g, k = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    resid_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # GPT-2's scaled init of residual projections.
    lora = dict(lora=self.lora, deterministic=self.deterministic)
    proj = lambda heads, name: Linear((heads, k), ("embed", "heads", "kv"), use_bias=cfg.use_bias,
                                      std=cfg.init_std, dtype=dt, name=name, **lora)(x_btd)
    q_bthk, k_btgk, v_btgk = proj(h, "q"), proj(g, "k"), proj(g, "v")
    if cfg.position == "rope":
      q_bthk = rotary(q_bthk, positions_bt, cfg.rope_theta)
      k_btgk = rotary(k_btgk, positions_bt, cfg.rope_theta)
    new_cache = None
    if layer_cache is not None:
      start = (0, 0, cache_index, 0)
      put = lambda c_bgsk, x_btgk: jax.lax.dynamic_update_slice(
          c_bgsk, x_btgk.transpose(0, 2, 1, 3).astype(c_bgsk.dtype), start)
      new_cache = LayerCache(k=put(layer_cache.k, k_btgk), v=put(layer_cache.v, v_btgk))
      out_bthk = _cached_attention(q_bthk, new_cache.k.astype(dt), new_cache.v.astype(dt), mask_b1ts)
    else:
      impl = None if cfg.attention_impl == "auto" else cfg.attention_impl
      out_bthk = jax.nn.dot_product_attention(q_bthk, k_btgk, v_btgk, mask=mask_b1ts,
                                              is_causal=mask_b1ts is None, implementation=impl)
    out_btd = Linear((cfg.d_model,), ("heads", "kv", "embed"), in_ndim=2, use_bias=cfg.use_bias,
                     std=resid_std, dtype=dt, name="o", **lora)(out_bthk)
    return out_btd, new_cache


_ACTIVATIONS = {"gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
                "gelu": lambda x: jax.nn.gelu(x, approximate=False), "silu": jax.nn.silu, "relu": jax.nn.relu}


class MLP(nn.Module):
  config: TransformerConfig
  lora: Optional[LoraSpec] = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    dt = cfg.compute_dtype
    act = _ACTIVATIONS[cfg.activation]
    resid_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    lora = dict(lora=self.lora, deterministic=self.deterministic)
    up = lambda name: Linear((cfg.d_ff,), ("embed", "mlp"), use_bias=cfg.use_bias, std=cfg.init_std, dtype=dt,
                             name=name, **lora)(x_btd)
    down = lambda h_btf, name: Linear((cfg.d_model,), ("mlp", "embed"), use_bias=cfg.use_bias, std=resid_std,
                                      dtype=dt, name=name, **lora)(h_btf)
    if cfg.mlp == "gated":  # SwiGLU (Shazeer 2020): act(x W_gate) * (x W_up), then W_down.
      return down(act(up("gate")) * up("up"), "down")
    return down(act(up("fc_in")), "fc_out")


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""
  config: TransformerConfig
  deterministic: bool = True
  lora: Optional[LoraSpec] = None

  @nn.compact
  def __call__(self, x_btd, positions_bt, mask_b1ts, cache_index, layer_cache):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic or cfg.dropout == 0.0)
    attn_btd, new_cache = Attention(cfg, self.lora, self.deterministic, name="attn")(
        Norm(cfg, name="attn_norm")(x_btd), positions_bt, mask_b1ts, cache_index, layer_cache)
    x_btd = x_btd + drop(attn_btd)
    x_btd = x_btd + drop(MLP(cfg, self.lora, self.deterministic, name="mlp")(Norm(cfg, name="mlp_norm")(x_btd)))
    x_btd = nn.with_logical_constraint(x_btd, ("batch", "length", "embed"))
    return x_btd, new_cache


def _segment_mask(segment_ids_bt):
  """(B, 1, T, T): causal, and a token sees only tokens of its own segment."""
  t = segment_ids_bt.shape[1]
  same = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
  causal = jnp.tril(jnp.ones((t, t), bool))
  return (same & causal)[:, None]


def _decode_mask(cache_segments_bs, segment_ids_bt, index):
  """(B, 1, T, S): new token t (at slot index + t) sees filled slots up to its own of its own segment."""
  s, t = cache_segments_bs.shape[1], segment_ids_bt.shape[1]
  slot_s = jnp.arange(s)
  query_slot_t = index + jnp.arange(t)
  causal = slot_s[None, :] <= query_slot_t[:, None]  # (T, S)
  same = (cache_segments_bs[:, None, :] == segment_ids_bt[:, :, None]) & (cache_segments_bs[:, None, :] != 0)
  return (same & causal[None])[:, None]


class Transformer(nn.Module):
  """Trunk + the heads named in `heads` (any of "lm", "value", "reward").

  Call with tokens (B, T) int32 and optionally positions (B, T), segment_ids (B, T) and a KVCache.
  `deterministic=False` turns dropout on (needs a "dropout" RNG).

  `reward_likelihood` w > 0 makes the reward head score a response by `gain * (h . v + w * L) + bias`, L the
  running mean log-likelihood of the response under the model's own LM head (`response_log_likelihood`);
  the call then needs `response_start_b`, each row's first response position. A small reward model
  initialised from the SFT model starts, with v = 0, as that model's likelihood, which already ranks
  answers by quality (the toyworld figures are in experiments/toyworld_reward.py); training then moves both
  the likelihood (through the trunk and LM head, as DPO does) and the head.
  """
  config: TransformerConfig
  heads: tuple = ("lm",)
  deterministic: bool = True
  reward_likelihood: float = 0.0
  lora: Optional[LoraSpec] = None  # Low-rank adapters on the projections it targets (model/lora.py).

  def setup(self):
    cfg = self.config
    for head in self.heads:
      if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected some of {HEADS}")
    self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.compute_dtype)
    if cfg.position == "learned":
      self.pos_embed = Embed(cfg.max_len, cfg.d_model, cfg.init_std, cfg.compute_dtype, axes=(None, "embed"))
    block = Block
    if cfg.remat != "none":
      policy = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[cfg.remat]
      block = nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.n_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.deterministic, self.lora)
    else:
      self.layers = [block(cfg, self.deterministic, self.lora) for _ in range(cfg.n_layers)]
    self.dropout = nn.Dropout(cfg.dropout, deterministic=self.deterministic or cfg.dropout == 0.0)
    self.final_norm = Norm(cfg)
    if self._needs_lm() and not cfg.tie_embeddings:
      self.lm_head = LMHead(cfg.vocab_size, cfg.init_std, cfg.dtype)
    if "value" in self.heads:
      self.value_head = ValueHead()
    if "reward" in self.heads:
      self.reward_head = RewardHead()

  def _needs_lm(self) -> bool:
    return "lm" in self.heads or ("reward" in self.heads and self.reward_likelihood > 0)

  def __call__(self, tokens_bt, positions_bt=None, segment_ids_bt=None, cache: Optional[KVCache] = None,
               response_start_b=None) -> ModelOutput:
    cfg = self.config
    b, t = tokens_bt.shape
    index = cache.index if cache is not None else 0
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(index + jnp.arange(t, dtype=jnp.int32), (b, t))
    if cache is None:
      if cfg.position == "learned" and t > cfg.max_len:
        raise UserError(f"sequence length {t} exceeds model.max_len={cfg.max_len} (learned positions)")
      mask_b1ts = None if segment_ids_bt is None else _segment_mask(segment_ids_bt)
    else:
      if segment_ids_bt is None:
        segment_ids_bt = jnp.ones((b, t), jnp.int32)
      segments_bs = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids_bt.astype(jnp.int32), (0, index))
      mask_b1ts = _decode_mask(segments_bs, segment_ids_bt, index)

    x_btd = self.embed(tokens_bt)
    if cfg.position == "learned":
      x_btd = x_btd + self.pos_embed(positions_bt)
    x_btd = nn.with_logical_constraint(self.dropout(x_btd), ("batch", "length", "embed"))

    layer_caches = None if cache is None else cache.layers
    if cfg.scan_layers:
      x_btd, new_layers = self.layers(x_btd, positions_bt, mask_b1ts, index, layer_caches)
    else:
      new_layers = []
      for i, block in enumerate(self.layers):
        x_btd, layer_cache = block(x_btd, positions_bt, mask_b1ts, index,
                                   None if layer_caches is None else layer_caches[i])
        new_layers.append(layer_cache)
      new_layers = tuple(new_layers)
    hidden_btd = self.final_norm(x_btd)

    new_cache = None
    if cache is not None:
      new_cache = KVCache(layers=new_layers, segment_ids=segments_bs, index=cache.index + t)
    logits_btv = self.lm_logits(hidden_btd) if "lm" in self.heads else None
    rewards_bt = None
    if "reward" in self.heads:
      extra_bt = None
      if self.reward_likelihood > 0:
        if response_start_b is None and self.is_initializing():
          response_start_b = jnp.zeros((b,), jnp.int32)
        if response_start_b is None:
          raise ValueError("this reward model adds the response's log-likelihood (reward_likelihood="
                           f"{self.reward_likelihood}): pass response_start_b, each row's first response position")
        logits_for_reward = logits_btv if logits_btv is not None else self.lm_logits(hidden_btd)
        extra_bt = self.reward_likelihood * response_log_likelihood(logits_for_reward, tokens_bt,
                                                                    jnp.asarray(response_start_b, jnp.int32))
      rewards_bt = self.reward_head(hidden_btd, extra_bt)
    return ModelOutput(hidden=hidden_btd, logits=logits_btv,
                       values=self.value_head(hidden_btd) if "value" in self.heads else None,
                       rewards=rewards_bt, cache=new_cache)

  def lm_logits(self, hidden_btd):
    """(B, T, D) -> (B, T, V) float32 logits: the tied embedding or the untied head."""
    if self.config.tie_embeddings:
      return self.embed.attend(hidden_btd)
    return self.lm_head(hidden_btd)
