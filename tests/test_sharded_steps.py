"""Sharded == unsharded on 8 fake CPU devices, and one trace per step function, for the reward-model step,
generation and a PPO iteration (generation, the rollout pass, the update), each built and called the way its
stage builds and calls it (the LM step's twin is in test_sharding.py).

The 8-device mesh is data 2 x fsdp 2 x tensor 2: rows split 4 ways, parameters over fsdp and tensor. The
one-device run is the reference; results agree to float tolerance (the reductions run in another order).
Traces are counted with a Python side effect inside the jitted function (it runs only while tracing), and
XLA compilations with jax's monitoring events: a later call whose inputs are laid out differently (the
state a bare `jax.jit` hands back, say) would compile again without tracing again.
"""

import contextlib

import jax
import ml_collections
import numpy as np

from conftest import tiny_model
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import LMBatch, RMBatch
from rlhf_jax.config import base_config
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.rl import iteration as iteration_lib
from rlhf_jax.rl.rollout import make_collect
from rlhf_jax.sampling import make_generate
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps

PAD, EOT = 0, 3
STOP_IDS = (EOT, 4, 5, 6, 7, 8)  # Several stop tokens: some rows end early, some run to the last step.


def _meshes():
  make = lambda data, fsdp, tensor, devices: mesh_lib.make_mesh(
      ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)), devices)
  assert jax.device_count() == 8
  return {"one": make(1, 1, 1, jax.devices()[:1]), "eight": make(2, 2, 2, jax.devices())}


@contextlib.contextmanager
def _no_compilation(what):
  """Fails if XLA compiles anything inside the block (jax records each backend compilation as an event), or
  fetches a compiled program from the persistent compilation cache (conftest.py turns it on): a program
  compiled again and served from that cache is still a program the step did not reuse."""
  events = []

  def listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  def listen_cache(event, **kwargs):
    if event == "/jax/compilation_cache/compile_requests_use_cache":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  jax.monitoring.register_event_listener(listen_cache)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
    jax.monitoring.unregister_event_listener(listen_cache)
  assert not events, f"{what}: compiled {len(events)} more time(s)"


def _counted(fn, traces):
  def wrapper(*args):
    traces.append(1)  # Runs only while tracing.
    return fn(*args)
  return wrapper


def _assert_close(a, b, atol, what):
  """Float leaves to `atol`; integer and boolean leaves (tokens, masks) exactly."""
  def check(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "biu":
      np.testing.assert_array_equal(x, y, err_msg=what)
    else:
      np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=what)
  jax.tree.map(check, a, b)


def _spans_mesh(x, mesh):
  return len(x.sharding.device_set) == mesh.size


# ---------------------------------------------------------------------------------------------------------
# The reward-model step (stages/reward.py: steps.jit_step(steps.make_rm_step(...), shardings, example, mesh)).


def _rm_batch(vocab, seed, rows=8, k=3, length=12):
  """`rows` prompts with `k` ranked responses each, right-padded; no two responses of a prompt tie."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(9, vocab, (rows, k, length)).astype(np.int32)
  start = rng.integers(3, 6, (rows, k)).astype(np.int32)
  end = rng.integers(7, length, (rows, k)).astype(np.int32)
  tokens[np.arange(length) > end[..., None]] = PAD
  ranks = np.stack([rng.permutation(k) for _ in range(rows)]).astype(np.int32)
  return RMBatch(tokens=tokens, start=start, end=end, ranks=ranks)


def test_reward_model_step_on_a_2x2x2_mesh_matches_one_device_and_traces_once():
  cfg = tiny_model("gpt2", vocab_size=64, n_layers=1)
  model = Transformer(cfg, heads=("reward",))
  tx, schedule = state_lib.make_optimizer(base_config().optim, total_steps=10)
  example = _rm_batch(cfg.vocab_size, 0)
  rng = jax.random.PRNGKey(1)
  results = {}
  for name, mesh in _meshes().items():
    traces = []
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0))
    step = steps.jit_step(_counted(steps.make_rm_step(model, tx, schedule), traces), shardings, example, mesh)
    batches = [mesh_lib.shard_batch(_rm_batch(cfg.vocab_size, i), mesh) for i in range(3)]
    state, metrics = step(state, batches[0], rng)
    losses = [float(metrics["train/loss"])]
    with _no_compilation(f"{name}: reward-model steps 2 and 3"):
      for batch in batches[1:]:
        state, metrics = step(state, batch, rng)
        losses.append(float(metrics["train/loss"]))
    assert len(traces) == 1, f"{name}: traced {len(traces)} times in 3 steps"
    assert int(state.step) == 3 and all(np.isfinite(losses)) and len(set(losses)) == 3, (name, losses)
    if name == "eight":  # The run really is split: rows over 4 devices, the q projection over fsdp and tensor.
      assert tuple(shardings.params["layers_0"]["attn"]["q"]["kernel"].spec)[:2] == ("fsdp", "tensor")
      assert len(batch.tokens.addressable_shards) == 8 and batch.tokens.addressable_shards[0].data.shape[0] == 2
    results[name] = (losses, jax.device_get(state.params))
  np.testing.assert_allclose(results["eight"][0], results["one"][0], atol=1e-5, rtol=0)
  _assert_close(results["eight"][1], results["one"][1], 1e-5, "reward-model params after 3 steps")


# ---------------------------------------------------------------------------------------------------------
# Generation (stages/ppo.py: make_generate(lm, ...) called on the mesh's params and batch, no mesh active).


def _prompts(vocab, seed, rows=8, width=6):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, width + 1, rows)
  tokens = np.where(np.arange(width) >= width - lengths[:, None], rng.integers(9, vocab, (rows, width)), PAD)
  return tokens.astype(np.int32), np.arange(width) >= width - lengths[:, None]


def test_generation_on_a_2x2x2_mesh_matches_one_device_and_compiles_once():
  cfg = tiny_model("llama", vocab_size=64, n_layers=1)
  lm = Transformer(cfg, heads=("lm",))
  keys = [jax.random.PRNGKey(10 + i) for i in range(2)]
  results = {}
  for name, mesh in _meshes().items():
    params, _ = state_lib.init_params(lm, jax.random.PRNGKey(0), mesh)
    generate = make_generate(lm, max_new_tokens=8, temperature=0.7, stop_ids=STOP_IDS, pad_id=PAD)
    prompts = [mesh_lib.shard_batch(_prompts(cfg.vocab_size, i), mesh) for i in range(2)]
    outs = [generate(params, *prompts[0], keys[0])]
    with _no_compilation(f"{name}: generation on new prompts of the same shape"):
      outs.append(generate(params, *prompts[1], keys[1]))
    assert all(_spans_mesh(out.tokens, mesh) for out in outs), name
    results[name] = jax.device_get(outs)
  for one, eight in zip(results["one"], results["eight"]):
    assert 0 < one.ended.sum() < len(one.ended)  # Rows that stop early and rows that run out of steps.
    for field in ("tokens", "mask", "lengths", "ended", "num_steps"):
      np.testing.assert_array_equal(getattr(eight, field), getattr(one, field), err_msg=field)
    np.testing.assert_allclose(eight.log_probs, one.log_probs, atol=1e-5, rtol=0)
  assert not np.array_equal(results["one"][0].tokens, results["one"][1].tokens)


# A PPO iteration as stages/ppo.py runs it (make_ppo_step): generation, the rollout pass (make_collect), the
# update (steps.jit_ppo_update over make_ppo_update) on the state of create_ppo_state, the prompts and ptx rows
# sharded over the batch axes (batch_maker), ref_params for the exact KL in the loss.


def test_ppo_iteration_on_a_2x2x2_mesh_matches_one_device_and_compiles_once():
  """Two iterations on one device and on the 8-device mesh: the same answers, rollouts, metrics and final
  parameters, EMA and beta; the update traced once, and nothing compiled in the second iteration -- the state
  the update hands back, and what generation and the rollout pass hand on, are laid out as the next call
  expects. And the compiled iteration on the 8-device mesh (rl/iteration.py: both iterations scanned in one
  program, from the same root key) gives the metrics, parameters, EMA and beta of the two Python iterations
  on the mesh and on one device."""
  cfg = tiny_model("llama", vocab_size=64, n_layers=1)
  actor, critic, rm = (Transformer(cfg, heads=(head,)) for head in ("lm", "value", "reward"))
  reference = actor.clone(heads=("lm",))
  one = _meshes()["one"]
  init = lambda model, seed: jax.device_get(state_lib.init_params(model, jax.random.PRNGKey(seed), one)[0])
  actor_params, critic_params, rm_params = init(actor, 0), init(critic, 1), init(rm, 2)
  ref_params = jax.tree.map(lambda x: x + np.float32(0.01), actor_params)  # A reference a little apart.
  # The smoke config's settings: 2 samples a prompt with a group baseline, 2 epochs of 2 minibatches, the
  # critic, PPO-ptx, the exact KL in the loss, an adaptive beta and an EMA of the actor.
  settings = steps.PPOSettings.from_config(
      base_config().ppo, temperature=0.7, epochs=2, minibatches=2, samples_per_prompt=2, group_baseline=True,
      critic_free=False, ptx_coef=0.5, kl_loss_coef=0.1, adaptive_kl=True, ema_decay=0.5)
  prompts = [np.repeat(x, 2, 0) for x in _prompts(cfg.vocab_size, 0, rows=4)]  # 4 prompts x 2 answers.
  ptx = LMBatch.from_sequences(np.random.default_rng(4).integers(9, cfg.vocab_size, (8, 10)))  # 2 x 2 x 2 rows.
  tx = state_lib.make_optimizer(base_config().optim, total_steps=10)[0]
  txs = {"actor": tx, "critic": tx}
  root = jax.random.PRNGKey(10)  # Iteration i samples with fold_in(fold_in(root, i), 0), updates with ..., 1).
  keys = [tuple(jax.random.fold_in(jax.random.fold_in(root, i), j) for j in range(2)) for i in range(2)]

  results = {}
  for name, mesh in _meshes().items():
    traces = []
    state, shardings = state_lib.create_ppo_state({"actor": actor, "critic": critic}, txs,
                                                  {"actor": actor_params, "critic": critic_params}, mesh,
                                                  jax.random.PRNGKey(0), kl_coef=0.1, ema=True)
    ref = jax.device_put(ref_params, state_lib.param_shardings(reference, mesh)[1])
    scorer = jax.device_put(rm_params, state_lib.param_shardings(rm, mesh)[1])
    prompt, prompt_mask = mesh_lib.shard_batch(prompts, mesh)
    ptx_batch = mesh_lib.shard_batch(ptx, mesh)
    generate = make_generate(actor, max_new_tokens=8, temperature=0.7, stop_ids=STOP_IDS, pad_id=PAD)
    collect = make_collect(actor, reference, critic, rm, temperature=0.7, end_of_turn_id=EOT, reward_id=None,
                           pad_id=PAD, unfinished_penalty=1.0)
    update_fn = steps.make_ppo_update(actor, critic, txs, settings, reference)
    update = steps.jit_ppo_update(_counted(update_fn, traces), shardings, jax.tree.map(lambda x: x.sharding, ref),
                                  mesh)

    def iteration(state, sample_key, update_key):
      sample = generate(state.params["actor"], prompt, prompt_mask, sample_key)
      rollout = collect(state.params["actor"], state.params["critic"], ref, scorer, prompt, prompt_mask, sample)
      state, metrics = update(state, rollout, ptx_batch, update_key, ref)
      return state, (sample, rollout, metrics)

    state, first = iteration(state, *keys[0])
    with _no_compilation(f"{name}: the second PPO iteration"):
      state, second = iteration(state, *keys[1])
    assert len(traces) == 1, f"{name}: the update traced {len(traces)} times in 2 iterations"
    if name == "eight":
      q = state.params["actor"]["layers_0"]["attn"]["q"]["kernel"]
      assert _spans_mesh(second[1].tokens, mesh) and _spans_mesh(q, mesh)
    results[name] = jax.device_get(([first, second], (state.params, state.ema, state.kl_coef)))
    if name == "one":
      continue
    # The same two iterations as one compiled call, on the two prompt batches stacked.
    state, _ = state_lib.create_ppo_state({"actor": actor, "critic": critic}, txs,
                                          {"actor": actor_params, "critic": critic_params}, mesh,
                                          jax.random.PRNGKey(0), kl_coef=0.1, ema=True)
    frozen = {"ref": ref, "rm": scorer}
    run = iteration_lib.jit_iterations(
        iteration_lib.make_ppo_iteration(generate, collect, update_fn, kl_in_loss=True, mesh=mesh), shardings,
        jax.tree.map(lambda x: x.sharding, frozen), mesh, per_call=2, seeds=1)
    batches = mesh_lib.shard_batch({"prompt": np.stack([prompts[0]] * 2), "prompt_mask": np.stack([prompts[1]] * 2),
                                    "ptx": jax.tree.map(lambda x: np.stack([x] * 2), ptx)}, mesh, leading=1)
    state, metrics = run(state, batches, root, frozen)
    compiled = jax.device_get((metrics, (state.params, state.ema, state.kl_coef)))
    for reference in ("one", "eight"):
      for i, (_, _, python_metrics) in enumerate(results[reference][0]):
        for key, value in python_metrics.items():
          np.testing.assert_allclose(compiled[0][key][i], value, atol=1e-5, rtol=1e-5,
                                     err_msg=f"compiled, iteration {i}, against {reference}: {key}")
      _assert_close(compiled[1], results[reference][1], 1e-5, f"compiled against Python on {reference}")

  for i, (one, eight) in enumerate(zip(results["one"][0], results["eight"][0])):
    (sample_one, rollout_one, metrics_one), (sample_eight, rollout_eight, metrics_eight) = one, eight
    np.testing.assert_array_equal(sample_eight.tokens, sample_one.tokens, err_msg=f"iteration {i}: answers")
    _assert_close(rollout_eight, rollout_one, 1e-5, f"iteration {i}: rollout")
    assert set(metrics_eight) == set(metrics_one)
    for key, value in metrics_one.items():
      np.testing.assert_allclose(metrics_eight[key], value, atol=1e-5, rtol=1e-5, err_msg=f"iteration {i}: {key}")
    # Every part of the loss is live, so a wrong shard of any would show.
    for key in ("ppo/policy_loss", "ppo/value_loss", "ppo/ptx_loss", "ppo/kl_loss", "ppo/approx_kl"):
      assert np.isfinite(metrics_one[key]) and metrics_one[key] != 0, (i, key)
  assert 0 < results["one"][0][0][0].ended.sum() < 8  # Answers that stop and answers cut off.
  _assert_close(results["eight"][1], results["one"][1], 1e-5, "params, EMA and beta after 2 iterations")
