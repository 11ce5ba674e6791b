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
import signal
import sys
from typing import Optional, Sequence

from rlhf_jax import config as config_lib
from rlhf_jax.errors import Preempted, UserError

def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      prog="python -m rlhf_jax.main", description=__doc__.split("\n\n")[0],
      epilog="Override any config key with --config.KEY=VALUE (for example --config.optim.lr=1e-3).")
  parser.add_argument("--config", required=True, help="experiment file, path/to/NAME.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="directory for this run's outputs")
  args, rest = parser.parse_known_args(argv)
  return args, config_lib.parse_overrides(rest)


def resolve_config(spec: str, overrides: Sequence[str]) -> config_lib.ConfigDict:
  """The experiment's config with overrides applied and checked: what `config.json` records."""
  config = config_lib.load_config(spec)
  config_lib.apply_overrides(config, overrides)
  return config_lib.finalize(config)


def run(argv: Sequence[str]) -> dict:
  args, overrides = parse_args(argv)
  config = resolve_config(args.config, overrides)
  # Imports jax (and every stage) after the cheap checks, before any device use.
  from rlhf_jax import compile_cache
  compile_cache.enable()  # Before the first compilation (rlhf_jax/compile_cache.py).
  if config.stage == "pipeline":  # Several stages, each configured by the pipeline file (rlhf_jax/pipeline.py).
    from rlhf_jax.pipeline import run_pipeline
    return run_pipeline(args.config, args.workdir, overrides)
  from rlhf_jax import orchestrate
  return orchestrate.run_in_order([(config.stage, config, args.workdir)])[0]


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
