"""The trained reward model as the reward stage saves it and PPO, best-of-n and the evaluators read it:
WORKDIR/reward_model/ holds the normalised model (model/converted.py's format), its tokenizer, and reward.json,
the spec (`RewardModelSpec`) that says how it reads an answer and what its scores mean."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from rlhf_jax.artifacts.models import load_pretrained
from rlhf_jax.errors import UserError

MODEL_DIR = "reward_model"
SPEC_FILE = "reward.json"


@dataclasses.dataclass(frozen=True)
class RewardModelSpec:
  """reward.json: the loss variant the model was trained with (`reward.loss`), whether its score is read at
  an appended reward token, the sequence length it was trained at, the weight of its likelihood term, and the
  normalisation (`eval.rm.fit_normalization`: gain, bias, the raw scores' mean and std on SFT samples)."""
  loss: str
  reward_token: bool
  seq_len: int
  likelihood_weight: float
  normalization: dict

  @classmethod
  def read(cls, path: str) -> "RewardModelSpec":
    """The spec in the JSON file `path`; a missing or mistyped field is one line naming the file and field."""
    with open(path) as f:
      try:
        values = json.load(f)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    types = {"loss": str, "reward_token": bool, "seq_len": int, "likelihood_weight": (int, float),
             "normalization": dict}
    for field, kind in types.items():
      if not isinstance(values, dict) or not isinstance(values.get(field), kind):
        raise UserError(f"{path}: field {field!r} is missing or not a {getattr(kind, '__name__', 'number')}")
    return cls(**{field: values[field] for field in types})

  def write(self, path: str) -> None:
    """Writes the spec to `path` atomically (a crash leaves the old file or the new one)."""
    with open(path + ".tmp", "w") as f:
      json.dump(dataclasses.asdict(self), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def normalize_params(params: dict, fit: dict) -> dict:
  head = {**params["reward_head"], "gain": np.float32(fit["gain"]), "bias": np.float32(fit["bias"])}
  return {**params, "reward_head": head}


def load_reward_model(path: str, mesh, runtime=None):
  """(model with the reward head, normalised params, tokenizer, `RewardModelSpec`) from a reward workdir or the
  `reward_model` directory in it."""
  directory = path if os.path.exists(os.path.join(path, SPEC_FILE)) else os.path.join(path, MODEL_DIR)
  spec_path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(spec_path):
    raise UserError(f"{path}: no trained reward model ({MODEL_DIR}/{SPEC_FILE} is missing; has the reward "
                    "stage finished?)")
  spec = RewardModelSpec.read(spec_path)
  weight = float(spec.likelihood_weight)
  heads = ("lm", "reward") if weight else ("reward",)
  model, params, tokenizer = load_pretrained(directory, mesh, runtime, heads=heads)
  return model.clone(heads=("reward",), reward_likelihood=weight), params, tokenizer, spec


def check_shared_tokenizer(reward_path: str, rm_tokenizer, policy_path: str, tokenizer) -> None:
  """A policy and the reward model that scores it must share one tokenizer (the RM reads the policy's ids)."""
  if rm_tokenizer is not None and rm_tokenizer.vocab_size != tokenizer.vocab_size:
    raise UserError(f"{reward_path}: the reward model's tokenizer has {rm_tokenizer.vocab_size} tokens, the "
                    f"policy's ({policy_path}) {tokenizer.vocab_size}: they must share one tokenizer")
