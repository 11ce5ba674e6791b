"""The command line's persistent compilation cache (rlhf_jax/compile_cache.py): where it goes, how it is turned
off, that a second process reads back what the first compiled, and that every command turns it on."""

import json
import os
import subprocess
import sys

import jax
import pytest

from rlhf_jax import compile_cache
from rlhf_jax import main as main_lib

from conftest import ROOT


def test_directory_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.directory_from_environment() == str(tmp_path / "xdg" / "rlhf_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.directory_from_environment() == str(tmp_path / "home" / ".cache" / "rlhf_jax" / "xla")
  monkeypatch.setenv(compile_cache.ENV, "~/elsewhere")
  assert compile_cache.directory_from_environment() == str(tmp_path / "home" / "elsewhere")
  for off in ("0", "off", "OFF", "false", "no"):
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.directory_from_environment() is None


def test_a_directory_already_set_is_kept(tmp_path):
  current = jax.config.jax_compilation_cache_dir  # The test session's own (conftest.py).
  assert current
  assert compile_cache.enable(str(tmp_path / "other")) == current
  assert jax.config.jax_compilation_cache_dir == current
  assert not (tmp_path / "other").exists()


PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from rlhf_jax import compile_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
directory = compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # This program compiles in milliseconds.
def f(x):
  for _ in range(8):
    x = jnp.tanh(x @ x.T + 1.0)
  return x.sum()
value = float(jax.jit(f)(jnp.arange(64.0).reshape(8, 8) / 64.0))
print(json.dumps({"directory": directory, "hits": len(hits), "value": value,
                  "cap": jax.config.jax_compilation_cache_max_size}))
"""


def _run(env: dict) -> dict:
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


def test_a_second_process_reads_back_what_the_first_compiled(tmp_path):
  env = {**os.environ, compile_cache.ENV: str(tmp_path / "cache"), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  first = _run(env)
  assert first["directory"] == str(tmp_path / "cache") and first["hits"] == 0
  assert first["cap"] == compile_cache.CAP_BYTES  # Eviction on: JAX locks the directory around each access.
  written = [p for p in os.listdir(tmp_path / "cache") if p.endswith("-cache")]
  assert written
  second = _run(env)
  assert second["hits"] >= 1 and second["value"] == first["value"]
  off = _run({**env, compile_cache.ENV: "0"})
  assert off["directory"] is None and off["hits"] == 0


@pytest.mark.parametrize("module", ["main", "sweep", "evaluate"])
def test_every_command_turns_it_on(monkeypatch, tmp_path, module):
  calls = []
  monkeypatch.setattr(compile_cache, "enable", lambda *a, **k: calls.append(1))
  missing = str(tmp_path / "missing")
  if module == "main":
    argv = ["--config", os.path.join(ROOT, "experiments", "toyworld_sft.py") + ":smoke", "--workdir",
            str(tmp_path / "run"), f"--config.init_from={missing}"]
    assert main_lib.main(argv) == 2
  elif module == "sweep":
    from rlhf_jax import sweep
    argv = [os.path.join(ROOT, "experiments", "ablations", "kl_coef.py"), "--workdir", str(tmp_path / "run"),
            f"--config.init_from={missing}"]
    sweep.main(argv)
  else:
    from rlhf_jax import evaluate
    assert evaluate.main(["--ppo", missing]) == 2
  assert calls


def test_an_unwritable_directory_runs_without_the_cache(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  env = {**os.environ, compile_cache.ENV: str(tmp_path / "file" / "cache"), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = _run(env)
  assert out["directory"] is None and out["hits"] == 0
  assert f"cannot create {tmp_path / 'file' / 'cache'}" in out["stderr"] and compile_cache.ENV in out["stderr"]
  assert (tmp_path / "file").read_text() == "not a directory"
