"""What every stage does the same way: the mesh, the model the config describes, config.json, the result line,
and the LM stages' training. What one stage writes and another reads (models, tokenizers, reward models,
comparisons, documents) is in rlhf_jax/artifacts/, below the stages."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp

from rlhf_jax import config as config_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.errors import UserError
from rlhf_jax.data import pipelines
from rlhf_jax.model.transformer import Transformer, TransformerConfig
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.loop import LoopConfig, combine_seeds, train_loop


def make_mesh(config):
  """The run's mesh; the global batch must split evenly over its data-parallel axes."""
  mesh = mesh_lib.make_mesh(config.mesh)
  shards = mesh_lib.num_batch_shards(mesh)
  if config.train.batch_size % shards:
    raise UserError(f"config key 'train.batch_size': {config.train.batch_size} rows do not split over the "
                    f"{shards} data-parallel devices of mesh {dict(mesh.shape)}; change the batch or mesh.*")
  return mesh


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


def epoch_steps(epochs: float, num_examples: int, train) -> int:
  """Training steps for `epochs` passes over `num_examples` examples in batches of train.batch_size (the last
  step may wrap around into the next pass); train.steps when `epochs` <= 0."""
  return train.steps if epochs <= 0 else max(1, math.ceil(epochs * num_examples / train.batch_size))


def result_line(stage: str, summary: dict, keys: Iterable[str]) -> str:
  """The stage's last line: its headline figures, each +- its spread over seeds when `train.seeds` > 1."""
  spread = lambda k: f" +- {summary[k + '/seed_std']:.4f}" if summary.get(k + "/seed_std") is not None else ""
  parts = [f"{k} {summary[k]:.4f}{spread(k)}" for k in keys if summary.get(k) is not None]
  return f"{stage} done in {summary.get('wall_time_s', 0.0):.0f} s: " + ", ".join(parts)


def record_model(config, workdir: str, model_config: TransformerConfig) -> None:
  """Makes `config.model` say which model the run really uses. config.json is written from it only when the
  run is known to start (`train_loop`'s `config`, or `write_run_config`), never by a run that is refused."""
  for key, value in model_config.to_dict().items():
    config.model[key] = value


def write_run_config(config, workdir: str) -> None:
  """Writes config.json for a stage without a training loop, once its inputs have been checked."""
  if jax.process_index() == 0:
    config_lib.write_config(config, workdir)


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
