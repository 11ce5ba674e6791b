"""Locked configs, command-line overrides, and the CLI's one-line errors."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest

from rlhf_jax import config as config_lib
from rlhf_jax import losses
from rlhf_jax.errors import UserError
from rlhf_jax.main import parse_args, resolve_config
from rlhf_jax.model.transformer import TransformerConfig
from rlhf_jax.rl import advantages
from rlhf_jax.train import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "experiments", "shakespeare_char.py")


def _config():
  return config_lib.load_config(SHAKESPEARE + ":smoke")


def test_variants_and_overrides_of_every_type():
  full, smoke = config_lib.load_config(SHAKESPEARE), _config()
  assert full.train.steps == 2000 and smoke.train.steps < 20
  config_lib.apply_overrides(smoke, ["optim.lr=3e-4", "train.steps=7", "model.scan_layers=true",
                                     "data.path=some file.txt", "optim.weight_decay=0", "model.dtype=bfloat16"])
  assert smoke.optim.lr == 3e-4 and smoke.train.steps == 7 and smoke.model.scan_layers is True
  assert smoke.data.path == "some file.txt" and smoke.optim.weight_decay == 0.0
  assert isinstance(smoke.optim.weight_decay, float)
  with pytest.raises(UserError, match="shakespeare_char.py.*'big'"):
    config_lib.load_config(SHAKESPEARE + ":big")


@pytest.mark.parametrize("override, key", [
    ("model.d_modle=3", "model.d_modle"),
    ("trian.steps=3", "trian.steps"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("optim.lr=fast", "optim.lr"),
    ("model.scan_layers=maybe", "model.scan_layers"),
    ("model=3", "model"),
])
def test_bad_overrides_name_the_key(override, key):
  with pytest.raises(UserError) as e:
    config_lib.apply_overrides(_config(), [override])
  message = str(e.value)
  assert f"'{key}'" in message and "\n" not in message


def test_finalize_checks_cross_key_constraints():
  config = _config()
  config_lib.apply_overrides(config, ["optim.grad_accum_steps=3"])  # Does not divide batch_size 4.
  with pytest.raises(UserError, match="optim.grad_accum_steps"):
    config_lib.finalize(config)
  for overrides, key in ((["ppo.samples_per_prompt=3"], "ppo.samples_per_prompt"),  # batch_size 4.
                          (["ppo.group_baseline=true"], "ppo.group_baseline"),  # One answer per prompt.
                          (["ppo.group_std=true"], "ppo.group_std")):  # Divides a group's centred scores.
    config = _config()
    config_lib.apply_overrides(config, overrides)
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
      config_lib.finalize(config)
  config = _config()
  config_lib.apply_overrides(config, ["model.n_heads=5"])
  with pytest.raises(UserError, match="model.n_heads"):
    config_lib.finalize(config)


def test_parse_args_accepts_both_override_forms():
  args, overrides = parse_args(["--config", "x.py:smoke", "--workdir", "w", "--config.a.b=1", "--config.c", "2"])
  assert args.config == "x.py:smoke" and overrides == ["a.b=1", "c=2"]
  with pytest.raises(UserError, match="--bogus"):
    parse_args(["--config", "x.py", "--workdir", "w", "--bogus"])


def test_resolve_config_and_write_json(tmp_path):
  config = resolve_config(SHAKESPEARE + ":smoke", ["train.steps=5"])
  path = config_lib.write_config(config, str(tmp_path))
  written = json.load(open(path))
  assert written["train"]["steps"] == 5 and written["model"]["d_model"] == 32


@pytest.mark.parametrize("override, key", [("--config.model.d_modle=3", "model.d_modle"),
                                           ("--config.train.steps=abc", "train.steps")])
def test_cli_exits_nonzero_with_one_line_and_leaves_the_workdir_alone(tmp_path, override, key):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"earlier": "run"}\n')
  proc = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", SHAKESPEARE + ":smoke",
                         "--workdir", str(workdir), override], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and f"'{key}'" in lines[0], proc.stderr
  assert (workdir / "config.json").read_text() == '{"earlier": "run"}\n'


def test_cli_missing_experiment_file(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "experiments/nope.py",
                         "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2 and "experiments/nope.py" in proc.stderr and len(proc.stderr.splitlines()) == 1


# Config keys chosen from a registry: (key, the registry, its names as the docs list them).
REGISTRIES = [("reward.loss", losses.REWARD_LOSSES, ("pairwise", "margin", "per_token", "reward_token")),
              ("ppo.kl_estimator", advantages.KL_ESTIMATORS, ("k1", "k3"))]


@pytest.mark.parametrize("key, registry, names", REGISTRIES)
def test_finalize_accepts_exactly_the_registry_names(monkeypatch, key, registry, names):
  """Every name of the registry passes finalize, an unknown one stops it with one line naming the key and
  the choices, and adding a dict entry is all it takes to add a variant (config.py keeps no list of its own)."""
  assert tuple(registry) == names
  section, name = key.split(".")

  def finalize_with(value):
    config = config_lib.base_config()
    config[section][name] = value
    return config_lib.finalize(config)

  for value in names:
    finalize_with(value)
  with pytest.raises(UserError) as e:
    finalize_with("bogus")
  assert str(e.value) == f"config key '{key}': 'bogus' is not one of {', '.join(names)}"
  monkeypatch.setitem(registry, "bogus", registry[names[0]])
  finalize_with("bogus")


def test_model_and_ppo_settings_come_from_the_schema():
  """TransformerConfig and PPOSettings have no defaults of their own: built from base_config() they hold the
  values their dataclass defaults used to restate, and a model section missing keys (a config.json written
  before a key existed) takes the schema's value for each."""
  model = TransformerConfig.from_config(config_lib.base_config().model)
  assert dataclasses.asdict(model) == dict(
      vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32, d_ff=512, max_len=256,
      position="learned", rope_theta=10000.0, norm="layernorm", norm_eps=1e-5, mlp="dense",
      activation="gelu_tanh", use_bias=True, tie_embeddings=True, dropout=0.0, init_std=0.02, dtype="float32",
      remat="none", scan_layers=False, attention_impl="xla")
  for family in ("gpt2", "llama"):
    assert set(config_lib.model_config(family)) == {f.name for f in dataclasses.fields(TransformerConfig)}
  old = {k: v for k, v in config_lib.model_config(d_model=64, n_heads=2).items() if k != "attention_impl"}
  assert TransformerConfig.from_config(old) == dataclasses.replace(model, d_model=64, n_heads=2, n_kv_heads=2)
  with pytest.raises(TypeError):
    TransformerConfig()

  settings = steps.PPOSettings.from_config(config_lib.base_config().ppo)
  # The dataclass default of temperature said 1.0 after the config moved to 0.7 (sampling.temperature's).
  assert dataclasses.asdict(settings) == dict(
      temperature=0.7, epochs=4, minibatches=1, microbatches=1, clip_eps=0.2, value_clip_eps=0.2, gamma=1.0, lam=0.95,
      vf_coef=0.1, ent_coef=0.0, kl_estimator="k1", adaptive_kl=False, kl_target=6.0, kl_horizon=10000,
      reward_clip=0.0, whiten_advantages=True, samples_per_prompt=1, group_baseline=False, group_std=False,
      ptx_coef=0.0,
      ema_decay=0.0, critic_free=False, critic_warmup=0, reward_norm=False, kl_loss_coef=0.0, kl_loss="exact",
      loss_aggregation="token_mean")
  overridden = steps.PPOSettings.from_config(config_lib.base_config().ppo, epochs=1, gamma=0.9)
  assert overridden == dataclasses.replace(settings, epochs=1, gamma=0.9)
  with pytest.raises(TypeError):
    steps.PPOSettings.from_config(config_lib.base_config().ppo, epoch=1)


# Every experiment and ablation file, with the variants it accepts beyond None and "smoke".
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "**", "*.py"), recursive=True)
                     if os.path.basename(p) != "common.py")
MORE_VARIANTS = {"shakespeare_char.py": ("nanogpt", "nanogpt,smoke", "smoke,nanogpt"), "kl_coef.py": ("pair",),
                 "quickstart.py": ("calculator", "short", "short,calculator", "smoke,calculator"),
                 "toyworld_sft.py": ("lora", "smoke,lora"), "toyworld_ppo.py": ("lora", "smoke,lora,rloo")}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_experiment_variant_loads_and_finalises(path, tmp_path):
  """Each variant of each experiment file (and the stages of a pipeline, the runs of an ablation) passes
  finalize; an unknown variant is one line naming the file and the variant."""
  assert set(MORE_VARIANTS) <= {os.path.basename(p) for p in EXPERIMENTS}
  for arg in (None, "smoke") + MORE_VARIANTS.get(os.path.basename(path), ()):
    config_lib.finalize(config_lib.load_config(path if arg is None else f"{path}:{arg}"))
    module = config_lib.load_module(path)
    extra = module.stages(arg) if hasattr(module, "stages") else []
    extra += module.sweep(arg, str(tmp_path)) if hasattr(module, "sweep") else []
    for name, config in extra:
      try:
        config_lib.finalize(config)
      except UserError as e:
        raise AssertionError(f"{path}:{arg}: {name}: {e}") from None
  with pytest.raises(UserError) as e:
    config_lib.load_config(f"{path}:bogus")
  assert path in str(e.value) and "'bogus'" in str(e.value) and "\n" not in str(e.value)
