"""Orbax checkpoints of the training state and the data iterator.

A checkpoint holds plain nested dicts of arrays — parameters, optimizer state, step and the root RNG key
(`flax.serialization.to_state_dict` of the TrainState) — plus the grain iterator's position and a small JSON
`meta`. Restoring takes a target of `jax.ShapeDtypeStruct`s carrying shardings, so orbax reads each device's
shard directly, onto whatever mesh the resumed run uses. Saves are asynchronous; orbax writes into a temporary
directory and renames it when complete, so a crash mid-save never damages the previous checkpoint.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import flax
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax.errors import UserError


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with the given shardings: the restore target, no memory allocated."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _restore_args(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Read each array straight into its sharding on the current mesh."""
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
  return ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=partial)


class Checkpointer:
  """Saves and restores {state, data iterator, meta} under `directory/<step>/`, keeping the latest `keep`."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), enable_async_checkpointing=True)
    # Handlers named up front: a manager opened only to read (a later stage, `sample`) can then read item
    # metadata and restore parts of the state.
    handlers = dict(state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
                    data=grain.checkpoint.CheckpointHandler())
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any = None, meta: Optional[dict] = None) -> None:
    items = dict(state=ocp.args.PyTreeSave(flax.serialization.to_state_dict(state)),
                 meta=ocp.args.JsonSave(meta or {}))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, state_template: Any, shardings: Any, data_iterator: Any = None):
    """Restores into the structure of `state_template` (a TrainState of arrays or shape structs).

    Returns (state, meta). A checkpoint whose shapes do not match the config is reported by parameter name.
    """
    target = flax.serialization.to_state_dict(state_template)
    self._check_shapes(step, target)
    abstract = abstract_like(target, flax.serialization.to_state_dict(shardings))
    items = dict(state=_restore_args(abstract), meta=ocp.args.JsonRestore())
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return flax.serialization.from_state_dict(state_template, restored["state"]), dict(restored["meta"] or {})

  def policy_path(self, step: int) -> tuple[str, ...]:
    """Where the checkpoint keeps the language model a later stage, a sampler or a report should use:
    "params" for pretraining, SFT and the reward model; for PPO (params keyed "actor", "critic") the actor's
    moving average when the run kept one -- the policy it evaluated -- and otherwise params/actor."""
    state = self._manager.item_metadata(step)["state"]
    if "actor" not in state["params"]:
      return ("params",)
    return ("ema",) if isinstance(state.get("ema"), dict) and state["ema"] else ("params", "actor")

  def restore_params(self, step: int, abstract_params: Any, shardings: Any,
                     path: tuple[str, ...] = ("params",)) -> Any:
    """Only the parameters of a checkpoint (no optimizer state): to start a later stage, sample or chat.

    `path` names the subtree of the saved state that holds them (see `policy_path`). Top-level entries the
    checkpoint lacks (a head the earlier stage did not have) are left out of the result.
    """
    saved = self._manager.item_metadata(step)["state"]
    for key in path:
      saved = saved[key]
    abstract_params = {k: v for k, v in abstract_params.items() if k in saved}
    shardings = {k: v for k, v in shardings.items() if k in saved}
    nest = lambda tree: functools.reduce(lambda inner, key: {key: inner}, reversed(path), tree)
    self._check_shapes(step, nest(abstract_params))
    abstract = nest(abstract_like(abstract_params, shardings))
    restored = self._manager.restore(step, args=ocp.args.Composite(state=_restore_args(abstract, partial=True)))
    return functools.reduce(lambda tree, key: tree[key], path, restored["state"])

  def _check_shapes(self, step: int, target: Any) -> None:
    saved = self._manager.item_metadata(step)["state"]
    saved_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
      key = jax.tree_util.keystr(path)
      if key not in saved_flat:
        raise UserError(f"{self.directory}/{step}: checkpoint has no entry {key}; it was written by a different "
                        "model or optimizer config")
      shape = tuple(getattr(saved_flat[key], "shape", np.shape(saved_flat[key])))
      if shape != tuple(leaf.shape):
        raise UserError(f"{self.directory}/{step}: {key} has shape {shape} in the checkpoint but {tuple(leaf.shape)} "
                        "in the config (vocab_size, model size or train.seeds changed?)")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
