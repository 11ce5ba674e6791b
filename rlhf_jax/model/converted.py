"""Our own model format: a directory with `model.json` (the `TransformerConfig`, as `to_dict()` writes it) and
`params/`, an orbax checkpoint of the plain parameter dict. `python -m rlhf_jax.convert` writes it from a Hugging
Face checkpoint; the reward stage saves its normalised model in it; `artifacts.models.load_pretrained` reads it."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax.errors import UserError
from rlhf_jax.model.hf import atomic_directory, check_params, read_json_object
from rlhf_jax.model.transformer import TransformerConfig

MODEL_FILE = "model.json"
PARAMS_DIR = "params"


def save_converted(directory: str, config: TransformerConfig, params: dict, *, overwrite: bool = False) -> None:
  """Writes `directory/model.json` and the orbax checkpoint `directory/params/`, all or nothing."""
  with atomic_directory(directory, overwrite) as scratch:
    with open(os.path.join(scratch, MODEL_FILE), "w") as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
      f.write("\n")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(scratch, PARAMS_DIR), params)
    checkpointer.wait_until_finished()


def load_converted(directory: str) -> tuple[TransformerConfig, dict]:
  """Reads a directory `save_converted` wrote: the config and its parameters as host (numpy) arrays.

  The parameters are checked against the config, so a mismatched pair fails here, naming the parameter.
  """
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file (not a directory written by `convert from-hf`)")
  values = read_json_object(path)
  try:
    config = TransformerConfig.from_config(values)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  params_path = os.path.abspath(os.path.join(directory, PARAMS_DIR))
  if not os.path.isdir(params_path):
    raise UserError(f"{params_path}: no such checkpoint directory")
  params = jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(params_path))
  check_params(config, params, params_path)
  return config, params
