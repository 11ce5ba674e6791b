"""LoRA (model/lora.py): the adapted layer against a NumPy reference, a fresh adapter is the base model, merging
equals the adapted model, only adapters train, 8 devices equal one, and the stages' LoRA runs (checkpoints of
adapters, exact resume, the merged model a later stage reads)."""

import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, checkpoint_state, run_preempted, run_smoke, tiny_model
from rlhf_jax import main as main_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts import models
from rlhf_jax.batches import LMBatch
from rlhf_jax.config import base_config
from rlhf_jax.data.pipelines import stack_rows
from rlhf_jax.model import lora
from rlhf_jax.model.transformer import Linear, Transformer, unbox
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps

SPEC = lora.LoraSpec(rank=4, alpha=8.0)


def _tokens(vocab, rows=4, length=12, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (rows, length), 0, vocab)


def _adapted_params(model, base_params, seed=3, b_scale=0.0):
  """`base_params` completed with the adapted model's fresh adapters; B drawn N(0, b_scale^2) when b_scale > 0
  (a fresh adapter's B is zero, which would hide every error in the adapter path)."""
  fresh = unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32))["params"])
  params = lora.init_adapters(base_params, fresh)
  if b_scale:
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 64))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: b_scale * jax.random.normal(next(keys), x.shape) if p[-1].key == "lora_b" else x, params)
  return params


def test_adapted_linear_matches_numpy():
  """A (3-D in, 1-D out) projection like attention's output: with B = 0 the plain layer to the bit, and
  y = x W + b + (alpha / r) x A B by NumPy."""
  layer = Linear((5,), ("heads", "kv", "embed"), in_ndim=2, use_bias=True, lora=lora.LoraSpec(2, 6.0, targets=("o",)),
                 name="o")
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 7, 2, 4)))
  params = unbox(layer.init(jax.random.PRNGKey(1), x)["params"])
  params["lora_b"] = np.asarray(jax.random.normal(jax.random.PRNGKey(2), params["lora_b"].shape))
  params["bias"] = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (5,)))
  assert params["lora_a"].shape == (2, 4, 2) and params["lora_b"].shape == (2, 5)
  fresh_y = layer.apply({"params": {**params, "lora_b": np.zeros_like(params["lora_b"])}}, x)
  plain = Linear((5,), ("heads", "kv", "embed"), in_ndim=2, use_bias=True, name="o")
  np.testing.assert_array_equal(fresh_y, plain.apply({"params": {"kernel": params["kernel"], "bias": params["bias"]}}, x))
  y = layer.apply({"params": params}, x)
  flat = x.reshape(3, 7, 8)
  a, b, w = (np.asarray(params[k], np.float64) for k in ("lora_a", "lora_b", "kernel"))
  expected = flat @ w.reshape(8, 5) + params["bias"] + 3.0 * (flat @ a.reshape(8, 2)) @ b
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5, rtol=1e-5)


# Llama with scanned layers: gated MLP, grouped-query attention, the leading L axis (GPT-2's dense, unscanned
# layers are the LoRA SFT smoke model's, merged in test_lora_sft_checkpoints_adapters_and_...).
@pytest.mark.parametrize("family,scan", [("llama", True)])
def test_fresh_adapters_are_the_base_model_and_merge_is_the_adapted_model(family, scan):
  cfg = tiny_model(family, scan_layers=scan)
  base_model, model = _Jitted(Transformer(cfg)), _Jitted(Transformer(cfg, lora=SPEC))
  tokens = _tokens(cfg.vocab_size)
  base = unbox(base_model.init(jax.random.PRNGKey(0), tokens)["params"])
  base_logits = base_model.apply({"params": base}, tokens).logits
  fresh = _adapted_params(model, base)
  # Zero-initialised B: the base model (to XLA's rounding: the two are different programs; op by op, without
  # jit, they are equal to the bit, test_adapted_linear_matches_numpy).
  np.testing.assert_allclose(model.apply({"params": fresh}, tokens).logits, base_logits, atol=1e-6, rtol=0)
  # The adapted model on parameters without adapters is the base model (PPO's and DPO's reference).
  np.testing.assert_array_equal(model.apply({"params": base}, tokens).logits, base_logits)
  trained = _adapted_params(model, base, b_scale=0.05)
  adapted_logits = model.apply({"params": trained}, tokens).logits
  assert float(jnp.abs(adapted_logits - base_logits).max()) > 0.05  # The adapters do change the model.
  merged = lora.merge(trained, SPEC)
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  np.testing.assert_allclose(base_model.apply({"params": merged}, tokens).logits, adapted_logits, atol=2e-5)
  # Every projection is adapted, and nothing else.
  flat = {"/".join(p) for p in __import__("flax").traverse_util.flatten_dict(trained) if p[-1] == "lora_a"}
  expected = {"attn/q", "attn/k", "attn/v", "attn/o"} | ({"mlp/gate", "mlp/up", "mlp/down"} if family == "llama"
                                                         else {"mlp/fc_in", "mlp/fc_out"})
  layers = ["layers"] if scan else [f"layers_{i}" for i in range(cfg.n_layers)]
  assert flat == {f"{layer}/{name}/lora_a" for layer in layers for name in expected}


class _Jitted:
  """A model whose init and apply are compiled (op-by-op dispatch of a whole model is slow on CPU)."""
  def __init__(self, model):
    self.model, self.init, self.apply = model, jax.jit(model.init), jax.jit(model.apply)


def _batch(vocab, seed=0, rows=8, length=16):
  seqs = np.random.default_rng(seed).integers(0, vocab, (rows, length + 1))
  return LMBatch.from_sequences(seqs)


def _mesh(data, fsdp, tensor, n=None):
  cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  return mesh_lib.make_mesh(cfg, jax.devices()[:n] if n else jax.devices())


def _train(model, base, mesh, n_steps=3):
  """`n_steps` LoRA steps of the LM objective on one batch from `base`: (state, losses)."""
  config = base_config()
  config.optim.lr, config.optim.warmup_steps = 1e-2, 1
  tx, schedule = state_lib.make_optimizer(config.optim, total_steps=10)
  state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0), params=base)
  step = steps.jit_step(steps.make_lm_step(model, tx, schedule), shardings, _batch(model.config.vocab_size), mesh)
  losses = []
  for i in range(n_steps):
    state, metrics = step(state, mesh_lib.shard_batch(_batch(model.config.vocab_size), mesh), jax.random.PRNGKey(1))
    losses.append(float(metrics["train/loss"]))
  return state, losses


def test_only_adapters_train_and_the_optimizer_holds_only_them():
  cfg = tiny_model("llama", vocab_size=64)
  model = Transformer(cfg, lora=SPEC)
  mesh = _mesh(1, 1, 1, n=1)
  base = jax.device_get(state_lib.init_params(Transformer(cfg), jax.random.PRNGKey(0), mesh)[0])
  state, losses = _train(model, base, mesh)
  assert losses[-1] < losses[0]
  frozen, trainable = lora.split(jax.device_get(state.params))
  jax.tree.map(np.testing.assert_array_equal, frozen, base)  # Not one frozen weight moved.
  fresh = lora.split(_adapted_params(model, base, seed=0))[1]
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), trainable, jax.device_get(fresh))
  assert min(jax.tree.leaves(moved)) > 0  # A and B of every projection moved (A from the second step on).
  # Adam's two moments of the adapters, and nothing of the base: 2 x the trainable bytes, plus counters.
  opt_bytes = lora.nbytes([x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0])
  assert opt_bytes == 2 * lora.nbytes(trainable) and lora.nbytes(trainable) < 0.2 * lora.nbytes(base)


def test_adapted_training_on_a_2x2x2_mesh_matches_one_device():
  cfg = tiny_model("llama", vocab_size=64)
  model = Transformer(cfg, lora=SPEC)
  results = {}
  for name, mesh in (("one", _mesh(1, 1, 1, n=1)), ("eight", _mesh(2, 2, 2))):
    base, _ = state_lib.init_params(Transformer(cfg), jax.random.PRNGKey(0), mesh)
    state, losses = _train(model, base, mesh)
    if name == "eight":  # The adapters are split as their kernel is: A over fsdp (width), B over tensor (heads).
      q = state.params["layers_0"]["attn"]["q"]
      assert tuple(q["lora_a"].sharding.spec)[:1] == ("fsdp",)
      assert tuple(q["lora_b"].sharding.spec)[1:2] == ("tensor",)
    results[name] = (losses, jax.device_get(state.params))
  np.testing.assert_allclose(results["eight"][0], results["one"][0], atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), results["eight"][1], results["one"][1])


def test_lora_config_errors_name_the_key():
  bad = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": "attn,ffn"}
  with pytest.raises(Exception, match="lora.targets.*'ffn'"):
    lora.LoraSpec.from_config(bad)
  with pytest.raises(Exception, match="lora.dropout"):
    lora.LoraSpec.from_config({**bad, "targets": "attn", "dropout": 1.0})
  assert lora.LoraSpec.from_config({**bad, "rank": 0}) is None
  assert lora.LoraSpec.from_config({**bad, "targets": "q,mlp"}).targets == ("q", "fc_in", "fc_out", "gate", "up",
                                                                            "down")


def _sft_argv(workdir, pretrain, *extra):
  return ["--config", os.path.join(ROOT, "experiments", "toyworld_sft.py") + ":smoke", "--workdir", str(workdir),
          "--config.train.batch_size=8", f"--config.init_from={pretrain}", "--config.lora.rank=4",
          "--config.lora.dropout=0.1", *extra]


@pytest.fixture(scope="module")
def lora_sft(toyworld_smoke, tmp_path_factory):
  """A LoRA SFT smoke run (rank 4, dropout 0.1) from the smoke pretraining model: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("lora") / "sft"
  assert main_lib.main(_sft_argv(workdir, toyworld_smoke["pretrain"][0])) == 0
  return workdir, json.loads((workdir / "summary.json").read_text())


def test_lora_sft_checkpoints_adapters_and_a_later_stage_reads_the_merged_model(lora_sft, toyworld_smoke, tmp_path):
  workdir, summary = lora_sft
  assert summary["num_trainable_params"] < 0.2 * summary["num_params"]
  step, saved = checkpoint_state(workdir)
  names = {p[-1] for p in __import__("flax").traverse_util.flatten_dict(saved["params"])}
  assert names == {"lora_a", "lora_b"}  # No base weight in the checkpoint: they stay in init_from.
  mesh = _mesh(1, 1, 1, n=1)
  base_model, base, _ = models.load_pretrained(str(toyworld_smoke["pretrain"][0]), mesh)
  model, merged, _ = models.load_pretrained(str(workdir), mesh)
  assert model.lora is None and jax.tree.structure(merged) == jax.tree.structure(base)
  spec = lora.LoraSpec(4, 16.0)
  tokens = _tokens(model.config.vocab_size)
  adapted = Transformer(model.config, lora=spec).apply({"params": lora.join(base, saved["params"])}, tokens).logits
  np.testing.assert_allclose(model.apply({"params": merged}, tokens).logits, adapted, atol=2e-5)
  assert float(jnp.abs(adapted - base_model.apply({"params": base}, tokens).logits).max()) > 1e-3
  # The Hugging Face export of the workdir is the merged model.
  from rlhf_jax import convert
  from rlhf_jax.model.hf import load_hf
  assert convert.main(["to-hf", str(workdir), str(tmp_path / "hf")]) == 0
  hf_config, hf_params = load_hf(str(tmp_path / "hf"))
  np.testing.assert_allclose(Transformer(hf_config).apply({"params": hf_params}, tokens).logits, adapted, atol=2e-5)


def test_lora_sft_resume_after_preemption_is_exact(lora_sft, toyworld_smoke, tmp_path, monkeypatch):
  """SIGTERM after step 2 (checkpoints every 2): exit 143; the same command resumes, and its adapters and
  their optimizer state equal the uninterrupted run's to the bit."""
  workdir = tmp_path / "sft"
  argv = _sft_argv(workdir, toyworld_smoke["pretrain"][0])
  assert run_preempted(monkeypatch, argv) == 128 + signal.SIGTERM
  assert checkpoint_state(workdir)[0] < checkpoint_state(lora_sft[0])[0]
  assert main_lib.main(argv) == 0
  (step_a, a), (step_b, b) = checkpoint_state(lora_sft[0]), checkpoint_state(workdir)
  assert step_a == step_b
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_lora_workdir_without_its_base_says_where(lora_sft, toyworld_smoke, tmp_path, capsys):
  """A LoRA workdir whose init_from is gone: one line naming its config.json and the missing base."""
  moved = tmp_path / "sft"
  shutil.copytree(lora_sft[0], moved)
  config = json.loads((moved / "config.json").read_text())
  config["init_from"] = str(tmp_path / "gone")
  (moved / "config.json").write_text(json.dumps(config))
  with pytest.raises(Exception, match=r"config.json: a LoRA run .*init_from=.*gone"):
    models.load_pretrained(str(moved), _mesh(1, 1, 1, n=1))


def test_lora_stage_choices_are_checked(toyworld_smoke, tmp_path, capsys):
  """lora.rank in a stage that has no adapters (pretraining) stops with one line naming the key."""
  argv = ["--config", os.path.join(ROOT, "experiments", "toyworld_pretrain.py") + ":smoke", "--workdir",
          str(tmp_path / "pt"), "--config.lora.rank=4"]
  assert main_lib.main(argv) == 2
  assert "lora.rank" in capsys.readouterr().err and not (tmp_path / "pt").exists()


def test_lora_reward_model_saves_the_merged_model(toyworld_smoke, lora_sft, tmp_path):
  """The reward stage with adapters from a LoRA SFT model: the reward head trains with them, and the saved
  reward model (what PPO reads) is a plain model that scores as the adapted one did."""
  summary = run_smoke("toyworld_reward.py", tmp_path / "rm", f"--config.init_from={lora_sft[0]}",
                      "--config.lora.rank=4")
  assert 0 < summary["num_trainable_params"] < 0.2 * summary["num_params"]
  step, saved = checkpoint_state(tmp_path / "rm")
  assert "reward_head" in saved["params"] and "embed" not in saved["params"]
  from rlhf_jax.artifacts.reward_model import load_reward_model
  loaded = load_reward_model(str(tmp_path / "rm"), _mesh(1, 1, 1, n=1))
  assert loaded[0].lora is None and not lora.has_adapters(loaded[1])


# ---------------------------------------------------------------------------------------------------------
# PPO with a LoRA actor: its frozen base is the reference.


@pytest.fixture(scope="module")
def lora_ppo_args(toyworld_smoke, toyworld_reward_smoke):
  return (f"--config.init_from={toyworld_smoke['sft'][0]}", f"--config.ppo.reward_from={toyworld_reward_smoke[0]}",
          "--config.lora.rank=4")


def test_lora_ppo_state_resume_compiled_path_and_merged_policy(tmp_path, lora_ppo_args, toyworld_smoke):
  """The smoke PPO setup (critic, EMA, PPO-ptx, adaptive beta) with LoRA, four iterations:
  - the state holds the actor's adapters and their EMA, never its weights (the reference's are its base), and
    the critic's adapters and value head (the reward model's trunk is its base);
  - checkpointed after two and restored, it ends exactly where the run that never stopped ends;
  - the compiled program (ppo.iterations_per_call=2) gives the same state to float rounding;
  - the checkpoint read as a later stage reads a policy is the adapted model merged (EMA adapters on SFT)."""
  from rlhf_jax import config as config_lib
  from rlhf_jax.config import parse_overrides
  from rlhf_jax.stages import ppo as ppo_stage
  from rlhf_jax.train.checkpoint import Checkpointer
  resolve = lambda k: main_lib.resolve_config(
      os.path.join(ROOT, "experiments", "toyworld_ppo.py") + ":smoke",
      parse_overrides([*lora_ppo_args, f"--config.ppo.iterations_per_call={k}", "--config.train.log_every=2"]))
  config = resolve(0)
  workdir = tmp_path / "ppo"
  setup = ppo_stage.build_ppo(config, str(workdir))
  leaf_names = lambda tree: {p[-1] for p in __import__("flax").traverse_util.flatten_dict(tree)}
  assert leaf_names(setup.state.params["actor"]) == leaf_names(setup.state.ema) == {"lora_a", "lora_b"}
  # The critic too: its adapters and value head, on the reward model's trunk (which the state does not hold).
  assert leaf_names(setup.state.params["critic"]) == {"lora_a", "lora_b", "kernel", "bias"}
  assert set(setup.state.params["critic"]) == {"layers_0", "layers_1", "value_head"}
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), setup.state)
  data = setup.data()
  rows = [next(data) for _ in range(4)]
  checkpoints = Checkpointer(str(workdir / "checkpoints"))
  state = setup.state
  for i in range(4):
    state, _ = setup.step_fn(state, setup.make_batch(rows[i]), setup.rng)
    if i == 1:
      checkpoints.save(2, state)
      checkpoints.wait()
  straight = jax.device_get(state)
  resumed, _ = checkpoints.restore(2, template, setup.shardings)
  for i in (2, 3):
    resumed, _ = setup.step_fn(resumed, setup.make_batch(rows[i]), setup.rng)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), straight)

  compiled = ppo_stage.build_ppo(resolve(2), str(tmp_path / "compiled"))
  state = compiled.state
  for i in (0, 2):
    state, _ = compiled.step_fn(state, compiled.make_batch(stack_rows(rows[i:i + 2])), compiled.rng)
  pick = lambda s: {"params": s.params, "ema": s.ema, "kl_coef": s.kl_coef}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), pick(jax.device_get(state)),
               pick(straight))

  checkpoints.save(4, straight)
  checkpoints.close()
  config_lib.write_config(config, str(workdir))
  mesh = _mesh(1, 1, 1, n=1)
  _, sft, _ = models.load_pretrained(str(toyworld_smoke["sft"][0]), mesh)
  policy, merged, _ = models.load_pretrained(str(workdir), mesh)
  tokens = _tokens(policy.config.vocab_size)
  adapted = policy.clone(lora=lora.LoraSpec(4, 16.0)).apply({"params": lora.join(sft, straight.ema)}, tokens).logits
  np.testing.assert_allclose(policy.apply({"params": merged}, tokens).logits, adapted, atol=2e-5)
  assert float(jnp.abs(adapted - policy.apply({"params": sft}, tokens).logits).max()) > 1e-4
