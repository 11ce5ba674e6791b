"""The one orchestrator: which function runs each stage, and running several configured runs in order.

`python -m rlhf_jax.main` runs one stage (or a pipeline), `python -m rlhf_jax.sweep` the runs of an ablation
file, and a pipeline file's stages run the same way (rlhf_jax/pipeline.py): each caller turns its file into
(name, config) pairs, finalises every config with the command line's overrides (`prepare`) before anything
runs, and hands them to `run_in_order`, which starts multi-host JAX once and runs each into its workdir. A finished
run is skipped by its stage and an interrupted one resumes, so re-running the command continues.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.errors import UserError
from rlhf_jax.stages import ai_comparisons, comparisons, dpo, ppo, pretrain, reward, sft

# Every stage's entry point: `run(config, workdir) -> summary`.
STAGES: dict[str, Callable[..., dict]] = {
    "pretrain": pretrain.run,
    "sft": sft.run,
    "comparisons": comparisons.run,
    "ai_comparisons": ai_comparisons.run,
    "reward": reward.run,
    "ppo": ppo.run,
    "dpo": dpo.run,
}


def prepare(config, overrides: Sequence[str] = (), fill: Optional[Callable] = None):
  """A run's config as it will run: locked, the command line's overrides applied, `fill(config)` (a
  pipeline's placeholders) and the checks of `config_lib.finalize`."""
  config.lock()
  config_lib.apply_overrides(config, overrides)
  if fill is not None:
    fill(config)
  return config_lib.finalize(config)


def check_stage(config) -> None:
  """One line when `config.stage` names no stage of the registry."""
  if config.stage not in STAGES:
    raise UserError(f"config key 'stage': stage {config.stage!r} cannot run yet in this version "
                    f"(available: {', '.join(STAGES)}, pipeline)")


def run_stage(config, workdir: str) -> dict:
  """Runs `config.stage` into `workdir`; returns its summary."""
  check_stage(config)
  return STAGES[config.stage](config, workdir)


def run_in_order(runs: Sequence[tuple[str, object, str]],
                 announce: Optional[Callable[[int, str, object, str], None]] = None) -> list[dict]:
  """Runs (name, finalised config, workdir) triples in order and returns their summaries. Every stage name
  is checked before the first run starts, and multi-host JAX is started once, before any device is touched
  (a process may call jax.distributed.initialize only once). `announce(i, name, config, workdir)` prints the
  line before each run."""
  for _, config, _ in runs:
    check_stage(config)
  if runs:
    mesh_lib.maybe_initialize_distributed(runs[0][1].mesh)
  summaries = []
  for i, (name, config, workdir) in enumerate(runs):
    if announce is not None:
      announce(i, name, config, workdir)
    summaries.append(run_stage(config, workdir))
  return summaries
