"""Converts Hugging Face GPT-2 / Llama checkpoints to our format and back.

  python -m rlhf_jax.convert from-hf HF_DIR OUT_DIR [--scan-layers]   # -> OUT_DIR/model.json, OUT_DIR/params/
  python -m rlhf_jax.convert to-hf IN_DIR HF_DIR                      # -> HF_DIR/config.json, model.safetensors

IN_DIR is a converted directory or a workdir of ours: its final model, as a later stage reads it (a PPO run's
policy; a LoRA run's adapters merged into its init_from's model).

Our format (model/converted.py) is a directory with `model.json` (the `TransformerConfig`, as `to_dict()` writes
it) and `params/`, an orbax checkpoint of the plain parameter dict; a stage can start from it. Neither direction
needs torch or transformers.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.model.converted import MODEL_FILE, PARAMS_DIR, load_converted, save_converted
from rlhf_jax.model.hf import load_hf, save_hf
from rlhf_jax.model.transformer import TransformerConfig

def _num_params(params: dict) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _describe(config: TransformerConfig, params: dict) -> str:
  family = "gpt2" if config.position == "learned" else "llama"
  return (f"{family}-style, {config.n_layers} layers, d_model {config.d_model}, "
          f"{_num_params(params):,} parameters")


def _read_model(path: str) -> tuple[TransformerConfig, dict]:
  """(config, host params) of a converted directory, or of a workdir's final model (`load_pretrained`)."""
  if os.path.exists(os.path.join(path, MODEL_FILE)):
    return load_converted(path)
  from rlhf_jax import mesh as mesh_lib
  from rlhf_jax.artifacts.models import load_pretrained
  mesh = mesh_lib.single_device_mesh()
  model, params, _ = load_pretrained(path, mesh)
  return model.config, jax.device_get(params)


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
      config, params = _read_model(args.in_dir)
      save_hf(args.hf_dir, config, params, overwrite=args.overwrite)
      print(f"wrote {args.hf_dir}/{{config.json,model.safetensors}}: {_describe(config, params)}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
