"""Models one run writes and another reads: a workdir's final model, a converted or Hugging Face checkpoint, and
the tokenizer that goes with it."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Optional

import jax
from jax.experimental import multihost_utils

from rlhf_jax import judge as judge_lib
from rlhf_jax.errors import UserError
from rlhf_jax.model import hf
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.model.converted import load_converted
from rlhf_jax.model.transformer import Transformer, TransformerConfig, stack_layers, unstack_layers
from rlhf_jax.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, train_sentencepiece
from rlhf_jax.train import state as state_lib
from rlhf_jax.train.checkpoint import Checkpointer

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def resolve_tokenizer(config, workdir: str, training_texts: Callable[[], Iterable[str]],
                      given: Optional[Tokenizer] = None, save: bool = True) -> Tokenizer:
  """The run's tokenizer, saved in the workdir: reused when the workdir has one (a resumed run), else the
  one `given` (from the checkpoint a stage starts from), else loaded from `data.tokenizer` when that names a
  file or directory, else trained on the training texts. `save=False` leaves the saving to `save_tokenizer`,
  for a stage that builds everything before it knows the run starts (stages/ppo.py:build_ppo writes nothing)."""
  spec = config.data.tokenizer
  found = any(os.path.exists(os.path.join(workdir, name)) for name in TOKENIZER_FILES)
  if jax.process_count() > 1:  # Every process looks before process 0 may write one (`save_tokenizer`).
    multihost_utils.sync_global_devices("tokenizer looked up")
  if found:
    return load_tokenizer(workdir)
  if given is not None:
    tokenizer = given
  elif spec == "char":
    tokenizer = CharTokenizer.from_text("".join(training_texts()))
  elif spec == "sentencepiece":
    tokenizer = train_sentencepiece(training_texts(), config.data.tokenizer_vocab_size)
  elif os.path.exists(spec):
    tokenizer = load_tokenizer(spec)
  else:
    raise UserError(f"config key 'data.tokenizer': {spec!r} is not sentencepiece, char, or an existing path")
  if save:
    save_tokenizer(workdir, tokenizer)
  return tokenizer


def save_tokenizer(workdir: str, tokenizer: Tokenizer) -> None:
  """Writes the run's tokenizer into its workdir (process 0 only), unless the workdir has one already: a
  resumed run's, which `resolve_tokenizer` read."""
  if jax.process_index() == 0 and not any(os.path.exists(os.path.join(workdir, n)) for n in TOKENIZER_FILES):
    tokenizer.save(workdir)


def check_vocab(tokenizer: Tokenizer, model_config: TransformerConfig, source: str) -> None:
  if tokenizer.vocab_size > model_config.vocab_size:
    raise UserError(f"{source}: the model has {model_config.vocab_size} token embeddings but the tokenizer has "
                    f"{tokenizer.vocab_size} tokens (config key 'data.tokenizer')")


# Model keys that are choices of the run, not of the trained weights: a later stage may change them.
RUNTIME_KEYS = ("dtype", "remat", "scan_layers", "attention_impl", "dropout")


def _lora_base(path: str, run_config: dict, mesh, heads) -> dict:
  """The base parameters a LoRA workdir's adapters were trained on: its init_from's model, in the layout that
  run used (its heads as `heads` asks, fresh where the base lacks one)."""
  base_path = run_config.get("init_from") or ""
  if not os.path.isdir(base_path):
    raise UserError(f"{os.path.join(path, 'config.json')}: a LoRA run (lora.rank={run_config['lora']['rank']}) "
                    f"holds adapters on the model init_from={base_path!r}, which is not a directory; put that "
                    "model back where it was (or run from the directory the run was started in)")
  return load_pretrained(base_path, mesh, run_config["model"], heads)[1]


def load_pretrained(path: str, mesh, runtime=None, heads=("lm",)):
  """(Transformer, sharded params, tokenizer or None) from an earlier run or a converted checkpoint.

  `path` may be a workdir of ours (config.json + checkpoints/; of a PPO run, the policy it evaluated: see
  `Checkpointer.policy_path`; of a LoRA run, its adapters merged into its init_from's model), a directory
  written by
  `python -m rlhf_jax.convert from-hf` (model.json + params/), or a Hugging Face GPT-2/Llama directory.
  The architecture comes from the checkpoint; `runtime` (the current config's model section) supplies the
  RUNTIME_KEYS, converting the layer layout if scan_layers differs. Parameters of heads the new model needs
  but the checkpoint lacks (a value head on an SFT model, say) are freshly initialised.
  """
  if not os.path.isdir(path):
    raise UserError(f"{path}: no such directory (expected a workdir, a converted checkpoint or an HF directory)")
  tokenizer = None
  for name in ("tokenizer.model", "tokenizer.json"):
    if os.path.exists(os.path.join(path, name)):
      tokenizer = load_tokenizer(path)
  if os.path.exists(os.path.join(path, "model.json")):
    model_config, params = load_converted(path)
  elif os.path.exists(os.path.join(path, "checkpoints")):
    config_path = os.path.join(path, "config.json")
    run_config = hf.read_json_object(config_path)
    if not isinstance(run_config.get("model"), dict):
      raise UserError(f"{config_path}: no 'model' section (not a workdir of this project?)")
    model_config = TransformerConfig.from_config(run_config["model"])
    seeds = (run_config.get("train") or {}).get("seeds", 1)
    if seeds != 1:  # Which of them would be arbitrary: pick one by training it alone.
      raise UserError(f"{path}: this workdir holds {seeds} models (config.json has train.seeds={seeds}); start "
                      "from a run with train.seeds=1 (rerun it with --config.train.seeds=1 --config.seed=S)")
    spec = lora_lib.LoraSpec.from_config(run_config.get("lora"))
    if spec is not None:  # Its checkpoints hold adapters: read its base first.
      base_params = _lora_base(path, run_config, mesh, heads)
    checkpoints = Checkpointer(os.path.join(path, "checkpoints"))
    try:
      step = checkpoints.latest_intact_step(path)  # Its final model, or one line on what is damaged.
      abstract, shardings = state_lib.param_shardings(Transformer(model_config, heads=tuple(heads), lora=spec), mesh)
      if spec is not None:
        abstract, shardings = lora_lib.split(abstract)[1], lora_lib.split(shardings)[1]
      params = checkpoints.restore_params(step, abstract, shardings, checkpoints.policy_path(step))
    finally:
      checkpoints.close()
    if spec is not None:
      params = lora_lib.merge(lora_lib.join(base_params, params), spec)
  elif os.path.exists(os.path.join(path, "config.json")):
    model_config, params = hf.load_hf(path)
  else:
    raise UserError(f"{path}: neither a workdir (config.json + checkpoints/), a converted checkpoint "
                    "(model.json) nor a Hugging Face directory (config.json + safetensors)")
  if runtime is not None:
    saved = model_config
    model_config = dataclasses.replace(model_config, **{k: runtime[k] for k in RUNTIME_KEYS})
    if saved.scan_layers and not model_config.scan_layers:
      params = unstack_layers(params, saved.n_layers)
    elif model_config.scan_layers and not saved.scan_layers:
      params = stack_layers(params, saved.n_layers)
  model = Transformer(model_config, heads=tuple(heads))
  abstract, shardings = state_lib.param_shardings(model, mesh)
  missing = set(abstract) - set(params)
  if missing:  # Heads the checkpoint lacks start from their initialisers (only theirs are compiled and run).
    fresh, _ = state_lib.init_params(model, jax.random.PRNGKey(0), mesh, only=missing)
    params = {**fresh, **params}
  params = {k: params[k] for k in abstract}
  hf.check_params(model_config, params, path)
  return model, jax.device_put(params, shardings), tokenizer


def load_judge(config, mesh):
  """The judge of the config's `judge` section (rlhf_jax/judge.py): `judge.model` loaded like any LM, with its
  own tokenizer, asked the section's questions."""
  path = config.judge.model
  if not path:
    raise UserError("config key 'judge.model': name the judge's workdir or checkpoint")
  spec = judge_lib.JudgeSpec.from_config(config.judge)
  model, params, tokenizer = load_pretrained(path, mesh, config.model, heads=("lm",))
  if tokenizer is None:
    raise UserError(f"{path}: no tokenizer.model or tokenizer.json next to the judge's checkpoint")
  return judge_lib.Judge(model, params, tokenizer, spec, mesh, chunk=config.judge.batch_size)
