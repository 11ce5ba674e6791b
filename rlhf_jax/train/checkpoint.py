"""Orbax checkpoints of the training state and the data iterator.

A checkpoint holds plain nested dicts of arrays — parameters, optimizer state, step and the root RNG key
(`flax.serialization.to_state_dict` of the TrainState) — plus the grain iterator's position and a small JSON
`meta`. Restoring takes a target of `jax.ShapeDtypeStruct`s carrying shardings, so orbax reads each device's
shard directly, onto whatever mesh the resumed run uses. Saves are asynchronous; orbax writes into a temporary
directory and renames it when complete, so a crash mid-save never damages the previous checkpoint.

Damage from outside -- a disk that filled up, a copy cut short, a file deleted by hand -- orbax does not look
for: it lists every step whose directory was renamed into place, and a restore from a damaged one fails deep
inside tensorstore. So before a step is read, `damage(step)` checks what orbax would need: the items' directories,
the tree metadata, and every array's stored bytes (the last byte of each value in the OCDBT store, so a cut file
is found without reading the checkpoint twice). A run resumes from the newest intact step (orbax's
preservation policy keeps `keep` of them), saying which it skipped and why; a later stage that starts from a
run's checkpoint reads only its newest step, and refuses with one line when that step is damaged.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Optional

import flax
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rlhf_jax.errors import UserError
from rlhf_jax.model import lora as lora_lib


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with the given shardings: the restore target, no memory allocated."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _restore_args(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Read each array straight into its sharding on the current mesh."""
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
  return ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=partial)


def _without_frozen(state: dict) -> dict:
  """A state dict without the frozen weights of LoRA parameters (model/lora.py): a LoRA run's checkpoint
  holds its adapters, new heads and their optimizer state; the base model stays where init_from names it."""
  params = state.get("params")
  if not lora_lib.has_adapters(params):  # (A LoRA PPO state holds only what trains: nothing is dropped.)
    return state
  return {**state, "params": lora_lib.split(params)[1]}


def _short(error: BaseException, directory: str = "") -> str:
  """One line of an exception from orbax or tensorstore: its first line, without the tensorstore spec and the
  step directory's path (the message that quotes it names the directory already)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  text = text.split(" [tensorstore_spec=")[0].split(" See full TensorStore details")[0]
  if directory:
    text = text.replace(f'local file "{directory}/', 'file "').replace(directory + "/", "")
  return text if len(text) <= 240 else text[:237] + "..."


def _cut_values(state_dir: str) -> Optional[str]:
  """What is wrong with the OCDBT store under `state_dir` (None if every value's bytes are all there).

  Lists the store (which reads its manifest and b-tree) and reads the last byte of every value: a data file
  cut short fails that read with OUT_OF_RANGE, as the restore would, without reading whole arrays."""
  import tensorstore as ts

  name = os.path.basename(state_dir)
  try:
    store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state_dir}/"}).result()
    keys = store.list().result()
  except Exception as e:  # tensorstore raises ValueError with a status code (DATA_LOSS, ...).
    return f"{name}/: cannot list its arrays ({_short(e, state_dir)})"
  if not keys:
    return f"{name}/manifest.ocdbt lists no arrays"
  reads = [(key, store.read(key, byte_range=slice(-1, None))) for key in keys]
  cut = []
  for key, read in reads:
    try:
      read.result()
    except Exception as e:  # OUT_OF_RANGE: the value ends past the end of its file.
      try:  # An empty value has no last byte: read it whole before calling it damaged.
        store.read(key).result()
      except Exception:
        cut.append((key.decode(errors="replace"), _short(e, state_dir)))
  if cut:
    first, why = cut[0]
    return f"{name}/: {len(cut)} of its {len(keys)} stored values are cut short, first {first} ({why})"
  return None


class Checkpointer:
  """Saves and restores {state, data iterator, meta} under `directory/<step>/`, keeping the latest `keep`."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    # lightweight_initialize: the steps' own metadata (save time, metrics) is not read when the manager opens;
    # LatestN needs only the steps, and a damaged step is then reported by `damage` alone, in one line.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), enable_async_checkpointing=True,
        lightweight_initialize=True)
    # Handlers named up front: a manager opened only to read (a later stage, `sample`) can then read item
    # metadata and restore parts of the state.
    handlers = dict(state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
                    data=grain.checkpoint.CheckpointHandler())
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def damage(self, step: int, items: tuple[str, ...] = ("state", "meta")) -> Optional[str]:
    """What makes `step` unreadable, in a few words (None if it looks intact).

    Orbax lists only steps it finished writing; this checks what it cannot know about: that the `items`
    directories are there, that the state's tree metadata reads, and that no stored array is cut short."""
    path = self.step_dir(step)
    if not os.path.isdir(path):
      return "the step directory is gone"
    if not os.listdir(path):
      return "the step directory is empty"
    for item in items:
      if not os.path.isdir(os.path.join(path, item)):
        return f"{item}/ is missing"
    state_dir = os.path.join(path, "state")
    for name in ("_METADATA", "manifest.ocdbt"):
      if not os.path.isfile(os.path.join(state_dir, name)):
        return f"state/{name} is missing"
    problem = _cut_values(state_dir)
    if problem:
      return problem
    try:
      tree = self._manager.item_metadata(step)["state"]
    except Exception as e:  # orbax raises ValueError, KeyError or TypeError here.
      return f"state/_METADATA cannot be read ({_short(e, path)})"
    if tree is None:
      return "state/_METADATA cannot be read"
    return None

  def restore_latest(self, state_template: Any, shardings: Any, data_iterator: Any = None) -> tuple[int, Any]:
    """(step, state) from the newest intact checkpoint; (0, `state_template`) when there is none.

    A damaged step is skipped with a one-line warning naming it and what is wrong; its directory is kept, as
    `<step>.damaged`, out of orbax's way (the run will save that step again). A checkpoint that does not fit
    the config is an error, not damage. When every step is damaged the run stops with one line listing them.
    """
    items = ("state", "meta") + (("data",) if data_iterator is not None else ())
    skipped = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      problem = self.damage(step, items)
      if problem is None:
        try:
          state, _ = self.restore(step, state_template, shardings, data_iterator)
        except UserError:
          raise
        except Exception as e:  # Whatever else orbax meets in a damaged step: skip it, saying what.
          problem = _short(e, self.step_dir(step))
        else:
          for bad, why in skipped:
            kept = self._set_aside(bad)
            if jax.process_index() == 0:
              print(f"warning: {self.step_dir(bad)}: damaged checkpoint: {why}; resuming from step {step}, the "
                    f"newest intact one (the damaged directory is kept as {kept})", file=sys.stderr, flush=True)
          if skipped:
            self._sync_after_set_aside()
          return step, state
      skipped.append((step, problem))
    if skipped:
      listed = "; ".join(f"step {step}: {why}" for step, why in skipped)
      raise UserError(f"{self.directory}: no intact checkpoint to resume from ({listed}); move the directory "
                      "away to start this run afresh")
    return 0, state_template

  def latest_intact_step(self, what: str) -> int:
    """The newest step, for reading a finished run's model (`what` says whose): an error naming the step and
    what is wrong when it is damaged -- an older step would silently stand in for the model asked for."""
    step = self.latest_step()
    if step is None:
      raise UserError(f"{self.directory}: no checkpoint to start from")
    problem = self.damage(step)
    if problem is None:
      return step
    older = [s for s in sorted(self._manager.all_steps(), reverse=True) if s < step and self.damage(s) is None]
    rebuild = (f"re-run the command that wrote {what} and it resumes from step {older[0]}, the newest intact one"
               if older else f"no older step is intact either: re-run the command that wrote {what} afresh")
    raise UserError(f"{self.step_dir(step)}: damaged checkpoint: {problem}; it holds the final model of {what}: "
                    f"{rebuild}")

  def _set_aside(self, step: int) -> str:
    """Renames a damaged step's directory so that orbax neither lists it nor refuses to save that step."""
    path = self.step_dir(step)
    target, n = path + ".damaged", 1
    while os.path.exists(target):
      target, n = f"{path}.damaged.{n}", n + 1
    if jax.process_index() == 0:
      os.rename(path, target)
    return target

  def _sync_after_set_aside(self) -> None:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("damaged checkpoints set aside")
    self._manager.reload()

  def save(self, step: int, state: Any, data_iterator: Any = None, meta: Optional[dict] = None) -> None:
    items = dict(state=ocp.args.PyTreeSave(_without_frozen(flax.serialization.to_state_dict(state))),
                 meta=ocp.args.JsonSave(meta or {}))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, state_template: Any, shardings: Any, data_iterator: Any = None):
    """Restores into the structure of `state_template` (a TrainState of arrays or shape structs).

    Returns (state, meta). A checkpoint whose shapes do not match the config is reported by parameter name.
    The frozen weights of a LoRA state are not in the checkpoint: they are the template's (its base model).
    """
    full = flax.serialization.to_state_dict(state_template)
    target = _without_frozen(full)
    self._check_shapes(step, target, exact=True)
    abstract = abstract_like(target, _without_frozen(flax.serialization.to_state_dict(shardings)))
    items = dict(state=_restore_args(abstract), meta=ocp.args.JsonRestore())
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = dict(restored["state"])
    if target is not full:
      state["params"] = lora_lib.join(lora_lib.split(full["params"])[0], state["params"])
    return flax.serialization.from_state_dict(state_template, state), dict(restored["meta"] or {})

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
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(state=_restore_args(abstract, partial=True)))
    except Exception as e:  # Damage that `latest_intact_step` did not see.
      raise UserError(f"{self.step_dir(step)}: damaged checkpoint: {_short(e, self.step_dir(step))}") from None
    return functools.reduce(lambda tree, key: tree[key], path, restored["state"])

  def _check_shapes(self, step: int, target: Any, exact: bool = False) -> None:
    """Every entry of `target` is in the checkpoint with its shape (and, if `exact`, nothing else is there).
    The parameters are compared first: a changed model is reported by a parameter's name."""
    saved = self._manager.item_metadata(step)["state"]
    if saved is None:
      raise UserError(f"{self.step_dir(step)}: damaged checkpoint: state/_METADATA cannot be read")
    saved_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    target_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(target)}
    params_first = lambda key: (not key.startswith("['params']"), key)
    for key in sorted(target_flat, key=params_first):
      if key not in saved_flat:
        raise UserError(f"{self.step_dir(step)}: checkpoint has no entry {key}; it was written by a different "
                        "model or optimizer config")
      shape = tuple(getattr(saved_flat[key], "shape", np.shape(saved_flat[key])))
      if shape != tuple(target_flat[key].shape):
        raise UserError(f"{self.step_dir(step)}: {key} has shape {shape} in the checkpoint but "
                        f"{tuple(target_flat[key].shape)} in the config (vocab_size, model size or train.seeds "
                        "changed?)")
    extra = sorted(set(saved_flat) - set(target_flat), key=params_first) if exact else []
    if extra:
      raise UserError(f"{self.step_dir(step)}: checkpoint has {extra[0]}, which this config's model and optimizer "
                      "do not; it was written by a different model or optimizer config")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
