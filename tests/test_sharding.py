"""Sharded == unsharded on 8 fake CPU devices, one trace per step function, and the mesh arithmetic."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_model
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import LMBatch
from rlhf_jax.config import base_config
from rlhf_jax.errors import UserError
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps


def _mesh(data, fsdp, tensor, n=None):
  cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  devices = jax.devices()[:n] if n else jax.devices()
  return mesh_lib.make_mesh(cfg, devices)


def _batch(vocab, rows=8, length=16, seed=0):
  rng = np.random.default_rng(seed)
  seqs = rng.integers(0, vocab, (rows, length + 1))
  segments = np.repeat(np.array([[1] * 9 + [2] * 6 + [0] * 2]), rows, 0)  # Two documents and padding.
  positions = np.concatenate([np.arange(9), np.arange(6), np.arange(2)])[None].repeat(rows, 0)
  return LMBatch.from_sequences(seqs, segment_ids_bt1=segments, positions_bt1=positions)


def _loss_and_grads(model, mesh, params, batch):
  """Mean loss and its gradient, jitted over `mesh` with the parameters' own shardings."""
  def f(params, batch):
    total, count, _, grads = steps.lm_loss_and_grads(model, params, batch, jax.random.PRNGKey(0))
    return total / count, jax.tree.map(lambda g: g / count, grads)
  with mesh_lib.activate(mesh):
    return jax.jit(f)(params, mesh_lib.shard_batch(batch, mesh))


def test_loss_and_gradients_on_a_2x2x2_mesh_match_one_device(family):
  assert jax.device_count() == 8
  cfg = tiny_model(family, vocab_size=64, n_heads=4, n_kv_heads=2 if family == "llama" else 4)
  model = Transformer(cfg)
  batch = _batch(cfg.vocab_size)

  one = _mesh(1, 1, 1, n=1)
  params_one, _ = state_lib.init_params(model, jax.random.PRNGKey(0), one)
  loss_one, grads_one = _loss_and_grads(model, one, params_one, batch)

  eight = _mesh(2, 2, 2)
  params_eight, shardings = state_lib.init_params(model, jax.random.PRNGKey(0), eight)
  # The parameters really are split: the q projection over fsdp (width) and tensor (heads).
  q_spec = shardings["layers_0"]["attn"]["q"]["kernel"].spec
  assert tuple(q_spec)[:2] == ("fsdp", "tensor")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params_eight, params_one)
  loss_eight, grads_eight = _loss_and_grads(model, eight, params_eight, batch)

  np.testing.assert_allclose(loss_eight, loss_one, atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), grads_eight, grads_one)


def test_init_params_of_some_names_equals_those_of_the_whole_tree():
  # A fresh head on a loaded model (artifacts/models.py:load_pretrained) initialises only what it lacks.
  model = Transformer(tiny_model("gpt2", vocab_size=64), heads=("lm", "reward", "value"))
  mesh = _mesh(2, 2, 2)
  whole, _ = state_lib.init_params(model, jax.random.PRNGKey(3), mesh)
  some, shardings = state_lib.init_params(model, jax.random.PRNGKey(3), mesh, only={"reward_head", "value_head"})
  assert set(some) == set(shardings) == {"reward_head", "value_head"}
  jax.tree.map(np.testing.assert_array_equal, some, {k: whole[k] for k in some})
  assert float(jnp.abs(some["reward_head"]["kernel"]).sum()) > 0  # Not zeros: its normal initialiser ran.


def test_train_step_is_traced_once_and_matches_one_device():
  cfg = tiny_model("llama", vocab_size=64)
  model = Transformer(cfg)
  config = base_config()
  tx, schedule = state_lib.make_optimizer(config.optim, total_steps=10)
  traces = []

  def counted(step):
    def wrapper(state, batch, rng):
      traces.append(1)  # Runs only while tracing.
      return step(state, batch, rng)
    return wrapper

  results = {}
  for name, mesh in (("one", _mesh(1, 1, 1, n=1)), ("eight", _mesh(2, 2, 2))):
    traces.clear()
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0))
    batch = _batch(cfg.vocab_size)
    step = steps.jit_step(counted(steps.make_lm_step(model, tx, schedule)), shardings, batch, mesh)
    losses = []
    for i in range(3):
      state, metrics = step(state, mesh_lib.shard_batch(_batch(cfg.vocab_size, seed=i), mesh), jax.random.PRNGKey(1))
      losses.append(float(metrics["train/loss"]))
    assert len(traces) == 1, f"{name}: traced {len(traces)} times in 3 steps"
    assert int(state.step) == 3
    results[name] = (losses, state.params)
  np.testing.assert_allclose(results["eight"][0], results["one"][0], atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), results["eight"][1], results["one"][1])


def test_gradient_accumulation_gives_the_whole_batch_update():
  cfg = tiny_model("gpt2", vocab_size=64)
  model = Transformer(cfg)
  config = base_config()
  tx, schedule = state_lib.make_optimizer(config.optim, total_steps=10)
  mesh = _mesh(1, 1, 1, n=1)
  # Uneven token counts per row, so averaging per microbatch (instead of sum / total) would differ.
  batch = _batch(cfg.vocab_size)
  batch = batch.replace(loss_mask=batch.loss_mask * (np.arange(8)[:, None] % 3 != 0))
  params = {}
  for accum in (1, 4):
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0))
    step = steps.jit_step(steps.make_lm_step(model, tx, schedule, grad_accum_steps=accum), shardings, batch, mesh)
    state, metrics = step(state, mesh_lib.shard_batch(batch, mesh), jax.random.PRNGKey(1))
    state, metrics = step(state, mesh_lib.shard_batch(batch, mesh), jax.random.PRNGKey(1))
    params[accum] = state.params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params[4], params[1])


def test_weight_decay_mask_by_name():
  cfg = tiny_model("gpt2")
  params = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
  mask = state_lib.decay_mask(unbox(params["params"]))
  assert mask["layers_0"]["attn"]["q"]["kernel"] and mask["layers_0"]["mlp"]["fc_in"]["kernel"]
  assert not mask["layers_0"]["attn"]["q"]["bias"] and not mask["layers_0"]["attn_norm"]["scale"]
  assert not mask["embed"]["embedding"] and not mask["pos_embed"]["embedding"]


def test_mesh_sizes_resolve_and_errors_name_the_key():
  assert mesh_lib.mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
  assert mesh_lib.mesh_shape(dict(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
  with pytest.raises(UserError, match="mesh.fsdp"):
    mesh_lib.mesh_shape(dict(data=3, fsdp=-1, tensor=1), 8)
  with pytest.raises(UserError, match="mesh.data, mesh.fsdp"):
    mesh_lib.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  with pytest.raises(UserError, match="needs 4 devices"):
    mesh_lib.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)


def test_dimensions_a_mesh_axis_does_not_divide_are_replicated():
  # Two key/value heads on 4-way tensor parallelism: the heads axis cannot be split 4 ways.
  cfg = tiny_model("llama", n_heads=4, n_kv_heads=2)
  _, shardings = state_lib.param_shardings(Transformer(cfg), _mesh(1, 2, 4))
  attn = shardings["layers_0"]["attn"]
  assert tuple(attn["q"]["kernel"].spec)[:2] == ("fsdp", "tensor")
  assert tuple(attn["k"]["kernel"].spec)[:2] == ("fsdp", None)
