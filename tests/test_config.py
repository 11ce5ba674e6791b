"""Locked configs, command-line overrides, and the CLI's one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from rlhf_jax import config as config_lib
from rlhf_jax.errors import UserError
from rlhf_jax.main import parse_args, resolve_config

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
                          (["ppo.group_baseline=true"], "ppo.group_baseline")):  # One answer per prompt.
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
