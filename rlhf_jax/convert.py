"""Converts Hugging Face GPT-2 / Llama checkpoints to our format and back.

  python -m rlhf_jax.convert from-hf HF_DIR OUT_DIR [--scan-layers]   # -> OUT_DIR/model.json, OUT_DIR/params/
  python -m rlhf_jax.convert to-hf IN_DIR HF_DIR                      # -> HF_DIR/config.json, model.safetensors

Our format is a directory with `model.json` (the `TransformerConfig`, as `to_dict()` writes it) and
`params/`, an orbax checkpoint of the plain parameter dict. `load_converted` reads it back, so a stage can
start from a converted model. Neither direction needs torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax.errors import UserError
from rlhf_jax.model.hf import atomic_directory, check_params, load_hf, read_json_object, save_hf
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


def _num_params(params: dict) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _describe(config: TransformerConfig, params: dict) -> str:
  family = "gpt2" if config.position == "learned" else "llama"
  return (f"{family}-style, {config.n_layers} layers, d_model {config.d_model}, "
          f"{_num_params(params):,} parameters")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  from_hf = commands.add_parser("from-hf", help="Hugging Face directory -> model.json + orbax params")
  from_hf.add_argument("hf_dir")
  from_hf.add_argument("out_dir")
  from_hf.add_argument("--scan-layers", action="store_true",
                       help="stack the blocks under `layers` (the scan_layers layout)")
  to_hf = commands.add_parser("to-hf", help="model.json + orbax params -> Hugging Face directory")
  to_hf.add_argument("in_dir")
  to_hf.add_argument("hf_dir")
  for command in (from_hf, to_hf):
    command.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  args = parser.parse_args(argv)
  try:
    if args.command == "from-hf":
      config, params = load_hf(args.hf_dir, scan_layers=args.scan_layers)
      save_converted(args.out_dir, config, params, overwrite=args.overwrite)
      print(f"wrote {args.out_dir}/{{{MODEL_FILE},{PARAMS_DIR}/}}: {_describe(config, params)}")
    else:
      config, params = load_converted(args.in_dir)
      save_hf(args.hf_dir, config, params, overwrite=args.overwrite)
      print(f"wrote {args.hf_dir}/{{config.json,model.safetensors}}: {_describe(config, params)}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
