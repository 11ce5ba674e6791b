"""The command line: run the stage an experiment file names.

  python -m rlhf_jax.main --config experiments/NAME.py[:ARG] --workdir DIR [--config.a.b=value ...]

Loads the experiment's locked config, applies the overrides (an unknown key or a wrongly typed value stops
here with one line naming the key), starts multi-host JAX if configured and runs `config.stage`, which writes
the resolved config to DIR/config.json once its data, model and checkpoint have been checked: a re-run that is
refused leaves DIR as it was. Re-running the same command on the same DIR resumes that run.
Bad input of any kind ends with one `error: ...` line on stderr and exit status 2. SIGTERM ends a run with
status 143 (128 + 15) in any phase: in the training loop after a checkpoint at the current step (train/loop.py),
elsewhere at once, the finished files intact.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Optional, Sequence

from rlhf_jax import config as config_lib
from rlhf_jax.errors import Preempted, UserError

# The module that runs each stage; each defines `run(config, workdir) -> dict` (the run's summary).
STAGE_MODULES = {
    "pretrain": "rlhf_jax.stages.pretrain",
    "sft": "rlhf_jax.stages.sft",
    "comparisons": "rlhf_jax.stages.comparisons",
    "reward": "rlhf_jax.stages.reward",
    "ppo": "rlhf_jax.stages.ppo",
}


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      prog="python -m rlhf_jax.main", description=__doc__.split("\n\n")[0],
      epilog="Override any config key with --config.KEY=VALUE (for example --config.optim.lr=1e-3).")
  parser.add_argument("--config", required=True, help="experiment file, path/to/NAME.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="directory for this run's outputs")
  args, rest = parser.parse_known_args(argv)
  return args, parse_overrides(rest)


def parse_overrides(rest: Sequence[str]) -> list[str]:
  """`--config.KEY=VALUE` (or `--config.KEY VALUE`) arguments -> ["KEY=VALUE", ...]."""
  overrides, i = [], 0
  while i < len(rest):
    item = rest[i]
    if not item.startswith("--config."):
      raise UserError(f"unrecognised argument {item!r}; config overrides look like --config.KEY=VALUE")
    item = item[len("--config."):]
    if "=" not in item:  # --config.KEY VALUE
      if i + 1 >= len(rest):
        raise UserError(f"--config.{item}: missing value")
      item, i = f"{item}={rest[i + 1]}", i + 1
    overrides.append(item)
    i += 1
  return overrides


def resolve_config(spec: str, overrides: Sequence[str]) -> config_lib.ConfigDict:
  """The experiment's config with overrides applied and checked: what `config.json` records."""
  config = config_lib.load_config(spec)
  config_lib.apply_overrides(config, overrides)
  return config_lib.finalize(config)


def run(argv: Sequence[str]) -> dict:
  args, overrides = parse_args(argv)
  config = resolve_config(args.config, overrides)
  if config.stage == "pipeline":  # Several stages, each configured by the pipeline file (stages/pipeline.py).
    from rlhf_jax.stages.pipeline import run_pipeline
    return run_pipeline(args.config, args.workdir, overrides)
  if config.stage not in STAGE_MODULES:
    raise UserError(f"config key 'stage': stage {config.stage!r} cannot run yet in this version "
                    f"(available: {', '.join(STAGE_MODULES)}, pipeline)")
  from rlhf_jax import mesh as mesh_lib  # Imports jax: after the cheap checks, before any device use.
  mesh_lib.maybe_initialize_distributed(config.mesh)
  stage = importlib.import_module(STAGE_MODULES[config.stage])
  return stage.run(config, args.workdir)


class Terminated(Exception):
  """SIGTERM outside the training loop (loading data, compiling, a final evaluation after the loop): the run
  stops where it is; its checkpoints and finished files are intact, and a re-run continues from them."""

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(f"stopped by {signal.Signals(signum).name} outside the training loop; the workdir's "
                     "checkpoints are intact. Re-run the same command to resume.")


def _terminate(signum, frame):
  raise Terminated(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
  # Inside the training loop its own handler takes over (a checkpoint at the current step, then `Preempted`).
  try:
    previous = signal.signal(signal.SIGTERM, _terminate)
  except ValueError:  # Not the main thread: no signal handling there.
    previous = None
  try:
    run(sys.argv[1:] if argv is None else argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (Preempted, Terminated) as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum  # The shell's convention for "ended by this signal".
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  return 0


if __name__ == "__main__":
  sys.exit(main())
