"""What every stage does the same way: the mesh, the tokenizer, the model's vocabulary, the result line."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp

from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.errors import UserError
from rlhf_jax.model.transformer import Transformer, TransformerConfig, stack_layers, unstack_layers
from rlhf_jax.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, train_sentencepiece


def make_mesh(config):
  """The run's mesh; the global batch must split evenly over its data-parallel axes."""
  mesh = mesh_lib.make_mesh(config.mesh)
  shards = mesh_lib.num_batch_shards(mesh)
  if config.train.batch_size % shards:
    raise UserError(f"config key 'train.batch_size': {config.train.batch_size} rows do not split over the "
                    f"{shards} data-parallel devices of mesh {dict(mesh.shape)}; change the batch or mesh.*")
  return mesh


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def resolve_tokenizer(config, workdir: str, training_texts: Callable[[], Iterable[str]],
                      given: Optional[Tokenizer] = None, save: bool = True) -> Tokenizer:
  """The run's tokenizer, saved in the workdir: reused when the workdir has one (a resumed run), else the
  one `given` (from the checkpoint a stage starts from), else loaded from `data.tokenizer` when that names a
  file or directory, else trained on the training texts. `save=False` leaves the saving to `save_tokenizer`,
  for a stage that builds everything before it knows the run starts (stages/ppo.py:build_ppo writes nothing)."""
  spec = config.data.tokenizer
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(workdir, name)):
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


def model_for(config, workdir: str, tokenizer: Tokenizer) -> Transformer:
  """The model the config describes, with `model.vocab_size` 0 resolved to the tokenizer's size and every
  derived value (head_dim) written back to the config (and so to config.json, when the run starts)."""
  if config.model.vocab_size == 0:
    config.model.vocab_size = tokenizer.vocab_size
  elif config.model.vocab_size < tokenizer.vocab_size:
    raise UserError(f"config key 'model.vocab_size': {config.model.vocab_size} is smaller than the tokenizer's "
                    f"{tokenizer.vocab_size} tokens (set it to 0 to follow the tokenizer)")
  model_config = TransformerConfig.from_config(config.model)
  record_model(config, workdir, model_config)
  return Transformer(model_config)


def check_vocab(tokenizer: Tokenizer, model_config: TransformerConfig, source: str) -> None:
  if tokenizer.vocab_size > model_config.vocab_size:
    raise UserError(f"{source}: the model has {model_config.vocab_size} token embeddings but the tokenizer has "
                    f"{tokenizer.vocab_size} tokens (config key 'data.tokenizer')")


def result_line(stage: str, summary: dict, keys: Iterable[str]) -> str:
  """The stage's last line: its headline figures, each +- its spread over seeds when `train.seeds` > 1."""
  spread = lambda k: f" +- {summary[k + '/seed_std']:.4f}" if summary.get(k + "/seed_std") is not None else ""
  parts = [f"{k} {summary[k]:.4f}{spread(k)}" for k in keys if summary.get(k) is not None]
  return f"{stage} done in {summary.get('wall_time_s', 0.0):.0f} s: " + ", ".join(parts)


# Model keys that are choices of the run, not of the trained weights: a later stage may change them.
RUNTIME_KEYS = ("dtype", "remat", "scan_layers", "attention_impl", "dropout")


def record_model(config, workdir: str, model_config: TransformerConfig) -> None:
  """Makes `config.model` say which model the run really uses. config.json is written from it only when the
  run is known to start (`train_loop`'s `config`, or `write_run_config`), never by a run that is refused."""
  for key, value in model_config.to_dict().items():
    config.model[key] = value


def write_run_config(config, workdir: str) -> None:
  """Writes config.json for a stage without a training loop, once its inputs have been checked."""
  if jax.process_index() == 0:
    config_lib.write_config(config, workdir)


def load_pretrained(path: str, mesh, runtime=None, heads=("lm",)):
  """(Transformer, sharded params, tokenizer or None) from an earlier run or a converted checkpoint.

  `path` may be a workdir of ours (config.json + checkpoints/; of a PPO run, the policy it evaluated: see
  `Checkpointer.policy_path`), a directory written by
  `python -m rlhf_jax.convert from-hf` (model.json + params/), or a Hugging Face GPT-2/Llama directory.
  The architecture comes from the checkpoint; `runtime` (the current config's model section) supplies the
  RUNTIME_KEYS, converting the layer layout if scan_layers differs. Parameters of heads the new model needs
  but the checkpoint lacks (a value head on an SFT model, say) are freshly initialised.
  """
  from rlhf_jax import convert
  from rlhf_jax.model import hf
  from rlhf_jax.train import state as state_lib
  from rlhf_jax.train.checkpoint import Checkpointer

  if not os.path.isdir(path):
    raise UserError(f"{path}: no such directory (expected a workdir, a converted checkpoint or an HF directory)")
  tokenizer = None
  for name in ("tokenizer.model", "tokenizer.json"):
    if os.path.exists(os.path.join(path, name)):
      tokenizer = load_tokenizer(path)
  if os.path.exists(os.path.join(path, "model.json")):
    model_config, params = convert.load_converted(path)
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
    checkpoints = Checkpointer(os.path.join(path, "checkpoints"))
    try:
      step = checkpoints.latest_intact_step(path)  # Its final model, or one line on what is damaged.
      abstract, shardings = state_lib.param_shardings(Transformer(model_config, heads=tuple(heads)), mesh)
      params = checkpoints.restore_params(step, abstract, shardings, checkpoints.policy_path(step))
    finally:
      checkpoints.close()
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
  if set(abstract) - set(params):  # Heads the checkpoint lacks start from their initialisers.
    fresh, _ = state_lib.init_params(model, jax.random.PRNGKey(0), mesh)
    params = {**{k: fresh[k] for k in abstract if k not in params}, **params}
  params = {k: params[k] for k in abstract}
  hf.check_params(model_config, params, path)
  return model, jax.device_put(params, shardings), tokenizer


def train_lm(config, workdir: str, *, model: Transformer, mesh, make_data: Callable[[int], Iterable[dict]],
             eval_batches: Callable[[], Iterable[dict]], evaluate: Callable[[Any, int], dict], desc: str,
             params=None, extra_summary: Optional[dict] = None) -> dict:
  """What the LM stages share: the optimizer, the sharded state (from `params` when a stage starts from a
  pretrained model), the jitted step, and the one loop. `make_data(seed)` is the pipeline of host batches of
  rows that a run with this seed reads; `evaluate(state, seed)` evaluates one model (the seed for any
  sampling it does).

  With `train.seeds` = N > 1, N independent runs train as one compiled program (`jax.vmap` of the step):
  replica i is, to float rounding, the run with seed `config.seed + i` -- its initialisation (unless
  `params` are given: then all start from them), data order, dropout and evaluation. Every state leaf has a
  leading axis of N; the loop logs means over the replicas and `train/loss/seed_std`, and the evaluations
  give each figure's mean, `/seed_std` and `/seeds` (the N values).
  """
  from rlhf_jax.data import pipelines
  from rlhf_jax.train import state as state_lib
  from rlhf_jax.train import steps
  from rlhf_jax.train.loop import LoopConfig, combine_seeds, train_loop

  train = config.train
  tx, schedule = state_lib.make_optimizer(config.optim, train.steps)
  lm_step = steps.make_lm_step(model, tx, schedule, config.optim.grad_accum_steps)
  example = pipelines.to_lm_batch(next(iter(eval_batches())))  # Shapes and structure only.
  seeds = [config.seed + i for i in range(train.seeds)]
  if train.seeds == 1:
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(config.seed), params=params)
    num_params = state_lib.count_params(state.params)
    rng, data = jax.random.PRNGKey(config.seed + 1), iter(make_data(config.seed))
    run_evaluation = lambda state: evaluate(state, config.seed)
  else:
    keys = lambda offset: jnp.stack([jax.random.PRNGKey(seed + offset) for seed in seeds])
    state, shardings = state_lib.create_seed_states(model, tx, mesh, keys(0), params=params)
    num_params = state_lib.count_params(state.params) // train.seeds
    rng, data = keys(1), pipelines.SeedIterators([iter(make_data(seed)) for seed in seeds])
    take = state_lib.unstack_seed(shardings)
    run_evaluation = lambda state: combine_seeds([evaluate(take(state, i), seed) for i, seed in enumerate(seeds)])
  step = steps.jit_step(lm_step, shardings, example, mesh, seed_axis=train.seeds > 1)
  loop = LoopConfig(total_steps=train.steps, log_every=train.log_every, eval_every=train.eval_every,
                    checkpoint_every=train.checkpoint_every,
                    tokens_per_step=train.seeds * train.batch_size * train.seq_len,  # Of all the replicas.
                    keep_checkpoints=train.keep_checkpoints, desc=desc)
  extra = {"num_params": num_params, **(extra_summary or {})}
  _, summary = train_loop(
      loop, workdir=workdir, state=state, shardings=shardings, step_fn=step, rng=rng, data=data,
      make_batch=lambda rows: mesh_lib.shard_batch(pipelines.to_lm_batch(rows), mesh, seed_axis=train.seeds > 1),
      evaluate=run_evaluation, extra_summary=extra, config=config)
  return summary
