"""Stage 3, the reward model (RM): learn from comparisons to score the responses annotators prefer higher
(InstructGPT section 3.5; the Fudan seed article's per-token variant; Ziegler et al. 2019's normalisation).

  model, params, tokenizer <- init_from (an SFT workdir); the reward head starts fresh on the SFT trunk
  comparisons <- data.path (a comparisons directory, or JSONL/ArrayRecord/TFDS), or, for toyworld without a
                 path, sampled from the SFT model and ranked by the simulated annotator into WORKDIR/comparisons/
  batch element = one prompt with its K responses (K rows of one forward pass); the loss averages over the
                 prompt's ordered pairs (reward.loss: pairwise | margin | per_token | reward_token)
  train in the one loop, evaluating held-out accuracy (vs labels, and vs gold for toyworld) as it goes
  normalise: sample the SFT model on training prompts, set the head's gain and bias so those samples score
             mean 0, std 1; write the normalised model to WORKDIR/reward_model/ (model.json, params/,
             reward.json) -- what PPO and every later scorer load
  evaluate the final model: accuracy vs labels and gold (per task), Spearman vs gold, calibration, and
             (toyworld, reward.best_of_n > 0) best-of-n: the gold of the RM's pick out of n SFT answers to the
             held-out evaluation prompts next to the oracle's pick (eval/best_of_n.py) -- what the RM's
             ranking is worth before any RL
  `generate_comparisons` samples toyworld's comparisons into the workdir; `build_reward` builds the rest (a
  `RewardSetup`) without training or writing anything; `run` trains, normalises, saves and evaluates it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts import comparisons, models
from rlhf_jax.artifacts.reward_model import MODEL_DIR, SPEC_FILE, RewardModelSpec, normalize_params
from rlhf_jax.data import pipelines, toyworld
from rlhf_jax.data.pipelines import encode_responses
from rlhf_jax.errors import UserError
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.eval import gold as eval_gold
from rlhf_jax.eval.best_of_n import best_of_n_metrics, best_of_n_rows, best_of_n_samples
from rlhf_jax.eval.gold import sample_responses
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.model.converted import save_converted
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.stages import common
from rlhf_jax.stages.common import encode_comparisons, read_path_comparisons
from rlhf_jax.tokenizer import CharTokenizer, Tokenizer
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.loop import LoopConfig, read_summary, train_loop, write_summary
from rlhf_jax.train.metrics import MetricsWriter

COMPARISONS_DIR = "comparisons"  # Toyworld's sampled comparisons, in the workdir.


def normalization_samples(config, policy, params, tokenizer, records: list[dict]) -> list[str]:
  """SFT samples on training prompts (one each, cycling through the prompts): what the scores are
  normalised on."""
  n = config.reward.norm_samples
  prompts = [records[i % len(records)]["prompt"] for i in range(n)]
  texts, _ = sample_responses(policy, params, tokenizer, prompts, config.sampling, config.seed + 7)
  return list(zip(prompts, texts))


def warn_unused_tokenizer(config, tokenizer) -> None:
  """A reward model reads text as its SFT model does: `models.resolve_tokenizer` takes the tokenizer that came
  with init_from (`tokenizer`; None when it had none) over data.tokenizer, so a data.tokenizer that names
  another kind, or a file, is unused. One warning line says so."""
  spec = config.data.tokenizer
  kind = "char" if isinstance(tokenizer, CharTokenizer) else "sentencepiece"
  if tokenizer is not None and spec != kind:
    print(f"warning: config key 'data.tokenizer' ({spec!r}) is not used: the reward model reads text with its SFT "
          f"model's tokenizer ({kind}, {tokenizer.vocab_size} tokens; init_from {config.init_from})",
          file=sys.stderr)


def require_init_from(config) -> None:
  """The reward model starts from an SFT model: a run without one stops first, before any data is read."""
  if not config.init_from:
    raise UserError("config key 'init_from': the reward model starts from an SFT model; name its workdir")


def load_sft(config, workdir: str, mesh) -> tuple[Transformer, dict, Tokenizer]:
  """(the SFT model from init_from with a fresh reward head on its trunk, its params, the run's tokenizer),
  checked before anything is sampled from it: train.seq_len fits the model's learned positions, the tokenizer
  its embeddings. The tokenizer is the workdir's (a resumed run) or init_from's, and a data.tokenizer naming
  another is reported unused (`warn_unused_tokenizer`). Nothing is written (`run` saves the tokenizer)."""
  require_init_from(config)
  policy, params, tokenizer = models.load_pretrained(config.init_from, mesh, config.model, heads=("lm", "reward"))
  common.record_model(config, workdir, policy.config)
  warn_unused_tokenizer(config, tokenizer)
  seq_len = config.train.seq_len
  if policy.config.position == "learned" and seq_len > policy.config.max_len:
    raise UserError(f"config key 'train.seq_len': {seq_len} is longer than the model's "
                    f"{policy.config.max_len} learned positions ({config.init_from})")
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer, save=False)
  models.check_vocab(tokenizer, policy.config, config.init_from)
  return policy, params, tokenizer


def lm_only(policy: Transformer, params: dict) -> tuple[Transformer, dict]:
  """The SFT model as a plain language model (LM head only): what samples the answers."""
  return policy.clone(heads=("lm",)), {k: v for k, v in params.items() if k != "reward_head"}


def generate_comparisons(config, workdir: str, mesh) -> tuple[Transformer, dict, Tokenizer] | None:
  """The run's data generation, before `build_reward` reads the data: toyworld without data.path samples its
  comparisons from the SFT model into WORKDIR/comparisons/ (`comparisons.ensure_comparisons`; a resumed run
  keeps those there). Returns the SFT model it loaded (`load_sft`) for `build_reward` to reuse; None, having loaded and
  written nothing, when the comparisons come from data.path (or there are none: `read_path_comparisons`)."""
  if config.data.path or config.data.source != "toyworld":
    return None
  policy, params, tokenizer = sft = load_sft(config, workdir, mesh)
  comparisons.ensure_comparisons(config, os.path.join(workdir, COMPARISONS_DIR), *lm_only(policy, params),
                                 tokenizer)
  if jax.process_count() > 1:  # Every process reads the files process 0 wrote (`read_sampled_comparisons`).
    multihost_utils.sync_global_devices("reward comparisons written")
  return sft


def read_sampled_comparisons(config, workdir: str) -> tuple[list[dict], list[dict], dict]:
  """(training records, held-out records, statistics) of the toyworld comparisons that `generate_comparisons`
  sampled into WORKDIR/comparisons/."""
  directory = os.path.join(workdir, COMPARISONS_DIR)
  stats_path = os.path.join(directory, "comparisons.json")
  if not os.path.exists(stats_path):
    raise UserError(f"{directory}: no sampled comparisons (comparisons.json is missing); the reward stage's run "
                    "samples them from the SFT model first (generate_comparisons), or give them as data.path")
  with open(stats_path) as f:
    stats = json.load(f)
  train, heldout = comparisons.read_comparisons(directory, config.data.val_fraction)
  return train, heldout, stats


def best_of_n_inputs(config, lm: Transformer, lm_params: dict, tokenizer, mesh
                     ) -> tuple[toyworld.World | None, list | None, list[str] | None]:
  """(world, held-out evaluation instances, the SFT model's reward.best_of_n answers to each:
  `best_of_n_samples`) for the best-of-n evaluation (toyworld, reward.best_of_n > 0): sampled before
  training, scored by the trained model after. (None, None, None) without it."""
  if config.reward.best_of_n <= 0 or config.data.source != "toyworld":
    return None, None, None
  world = toyworld.make_world(config.toyworld.seed)
  instances = toyworld.eval_instances(world, config.toyworld.num_eval_prompts)
  texts = best_of_n_samples(lm, lm_params, tokenizer, instances, config.sampling, config.reward.best_of_n,
                            eval_gold.eval_seed(config.sampling), mesh)
  return world, instances, texts


def reward_model_from(policy: Transformer, params: dict, weight: float) -> tuple[Transformer, dict]:
  """(reward model, initial params): the SFT trunk with the reward head; with a likelihood term (`weight` > 0)
  the LM head too, and the reward head's kernel zeroed so that the untrained model scores by likelihood alone."""
  model = policy.clone(heads=("reward",), reward_likelihood=weight)
  rm_params = {k: v for k, v in params.items() if k != "lm_head" or weight}
  if weight:  # A zero head: the untrained RM scores by likelihood alone (0.772 vs 0.650 gold accuracy, toyworld).
    head = rm_params["reward_head"]
    rm_params["reward_head"] = {**head, "kernel": jax.numpy.zeros_like(head["kernel"])}
  return model, rm_params


def make_evaluate(scorer: Callable, val_examples: list[dict], val_records: list[dict]) -> Callable:
  """`evaluate(state) -> metrics`: the held-out accuracies (vs labels, and vs gold for toyworld) of
  `state.params`, as the training loop reports them."""

  def evaluate(state) -> dict:
    metrics, _ = rm_eval.comparison_metrics(rm_eval.score_examples(scorer, state.params, val_examples), val_records)
    return metrics

  return evaluate


def reward_steps(config, num_examples: int) -> int:
  """The number of training steps: reward.epochs passes over the `num_examples` training comparisons (one by
  default: InstructGPT, "multiple epochs overfit quickly"; Gao et al. 2022, fresh data beats repeated data),
  which only the data knows; train.steps when reward.epochs <= 0 (`common.epoch_steps`)."""
  return common.epoch_steps(config.reward.epochs, num_examples, config.train)


@dataclasses.dataclass(frozen=True)
class RewardSetup:
  """Everything one reward run is made of, built by `build_reward` and not yet trained: `run` trains `model`
  from `params` for `num_steps` steps on `train_examples`, then normalises, saves and evaluates it.

    model            the reward model (`reward_model_from`): the SFT trunk with the reward head (and the LM head
                     with a likelihood term, `likelihood_weight` > 0); `params` its initial params
    tokenizer        the run's tokenizer: a resumed run's, else the SFT model's (`run` saves it in the workdir)
    train_records    the comparison records (data.path, or toyworld's sampled ones), `val_records` the held-out
                     ones, `data_stats` the account of them the summary reports; `train_examples` and
                     `val_examples` them encoded (`encode_comparisons`), K = `k_max` responses each
    scorer           `rm_eval.make_scorer`'s `(params, tokens (N, T), start (N,), end (N,)) -> scores (N,)`
    evaluate         `(state) -> metrics`: held-out accuracies of `state.params` (`make_evaluate`)
    num_steps        training steps (`reward_steps`)
    norm_pairs       (prompt, SFT answer) pairs the trained model is normalised on (`normalization_samples`);
                     None when a resumed run has saved the normalised model already
    bon_texts        the SFT model's best-of-n answers to `bon_instances` of `world` (`best_of_n_inputs`), or None
  and the finalised config, the mesh and `reward_token` (reward.loss reads the score at an appended token).
  """
  config: Any
  mesh: Any
  tokenizer: Tokenizer
  model: Transformer
  params: dict
  likelihood_weight: float
  reward_token: bool
  train_records: list[dict]
  val_records: list[dict]
  data_stats: dict
  k_max: int
  train_examples: list[dict]
  val_examples: list[dict]
  scorer: Callable
  evaluate: Callable
  num_steps: int
  norm_pairs: list | None
  world: toyworld.World | None
  bon_instances: list | None
  bon_texts: list[str] | None


def build_reward(config, workdir: str, mesh=None, sft: tuple[Transformer, dict, Tokenizer] | None = None
                 ) -> RewardSetup:
  """Builds everything a reward run needs (see `RewardSetup`) from a finalised config without training or
  writing anything. It samples from the SFT model -- the normalisation answers and the best-of-n answers --
  and reads `workdir` for three things: a resumed run's tokenizer, the toyworld comparisons that
  `generate_comparisons` sampled into WORKDIR/comparisons/ (toyworld without data.path; a UserError if there
  are none), and whether the normalised model is saved already (then no normalisation answers are drawn).
  `mesh`: the run's mesh (default: from `config.mesh`); `sft`: the SFT model as `load_sft` returns it, when
  the caller has loaded it already (`run`, to sample the comparisons), else it is loaded here."""
  require_init_from(config)
  from_path = read_path_comparisons(config)  # First: bad data stops the run before the model is loaded.
  mesh = common.make_mesh(config) if mesh is None else mesh
  policy, params, tokenizer = load_sft(config, workdir, mesh) if sft is None else sft
  lm, lm_params = lm_only(policy, params)
  train_records, val_records, data_stats = from_path or read_sampled_comparisons(config, workdir)
  k_max, train_examples, val_examples = encode_comparisons(config, tokenizer, train_records, val_records)
  saved = os.path.exists(os.path.join(workdir, MODEL_DIR, SPEC_FILE))
  norm_pairs = None if saved else normalization_samples(config, lm, lm_params, tokenizer, train_records)
  world, bon_instances, bon_texts = best_of_n_inputs(config, lm, lm_params, tokenizer, mesh)
  weight = float(config.reward.likelihood_weight)
  model, rm_params = reward_model_from(policy, params, weight)
  model = common.adapted(config, model)  # With lora.rank > 0: adapters and the reward head train.
  scorer = rm_eval.make_scorer(model, mesh, chunk=config.train.batch_size * k_max)
  return RewardSetup(
      config=config, mesh=mesh, tokenizer=tokenizer, model=model, params=rm_params, likelihood_weight=weight,
      reward_token=config.reward.loss == "reward_token", train_records=train_records, val_records=val_records,
      data_stats=data_stats, k_max=k_max, train_examples=train_examples, val_examples=val_examples,
      scorer=scorer, evaluate=make_evaluate(scorer, val_examples, val_records),
      num_steps=reward_steps(config, len(train_examples)), norm_pairs=norm_pairs, world=world,
      bon_instances=bon_instances, bon_texts=bon_texts)


def save_reward_model(setup: RewardSetup, workdir: str, final_params) -> RewardModelSpec:
  """Normalises the trained model -- gain and bias such that the SFT answers `setup.norm_pairs` score mean 0,
  std 1 -- and writes it to WORKDIR/reward_model/ (model.json, params/, the tokenizer, reward.json): a complete
  model on its own, what `load_reward_model` reads. Returns its spec, reward.json, read back (a resumed run
  that had saved the model already only reads it)."""
  spec_path = os.path.join(workdir, MODEL_DIR, SPEC_FILE)
  if setup.norm_pairs is not None:
    seq_len = setup.config.train.seq_len
    tokens, start, end = encode_responses(setup.tokenizer, setup.norm_pairs, seq_len, setup.reward_token)
    merged = final_params if setup.model.lora is None else lora_lib.merge(final_params, setup.model.lora)
    host = jax.device_get(merged)
    fit = rm_eval.fit_normalization(setup.scorer(final_params, tokens, start, end),
                                    float(host["reward_head"]["gain"]), float(host["reward_head"]["bias"]))
    spec = RewardModelSpec(loss=setup.config.reward.loss, reward_token=setup.reward_token, seq_len=seq_len,
                           likelihood_weight=setup.likelihood_weight, normalization=fit)
    if jax.process_index() == 0:
      save_converted(os.path.join(workdir, MODEL_DIR), setup.model.config, normalize_params(host, fit),
                             overwrite=True)
      setup.tokenizer.save(os.path.join(workdir, MODEL_DIR))
      spec.write(spec_path)
  return RewardModelSpec.read(spec_path)


def final_metrics(setup: RewardSetup, final_params, spec: RewardModelSpec) -> tuple[dict, list[dict]]:
  """(metrics, calibration table) of the trained model: held-out accuracies, rank correlation and calibration,
  the normalisation, and best-of-n. Accuracies and rank correlation do not change under the (positive)
  normalisation; the calibration is of the trained model's own Bradley-Terry probabilities, so it uses the raw
  scores; best-of-n reads the saved (normalised) scale."""
  val_scores = rm_eval.score_examples(setup.scorer, final_params, setup.val_examples)
  metrics, table = rm_eval.comparison_metrics(val_scores, setup.val_records)
  for row in table:
    name = f"eval/calibration/{row['low']:.1f}-{row['high']:.1f}"
    metrics.update({f"{name}/predicted": row["predicted"], f"{name}/observed": row["observed"],
                    f"{name}/count": row["count"]})
  fit = spec.normalization
  metrics.update({"norm/gain": fit["gain"], "norm/bias": fit["bias"], "norm/raw_mean": fit["raw_mean"],
                  "norm/raw_std": fit["raw_std"]})
  if setup.bon_texts is not None:  # Scores on the saved (normalised) scale: (raw - raw_mean) / raw_std.
    normalised = lambda *args: (setup.scorer(*args) - fit["raw_mean"]) / fit["raw_std"]
    rows = best_of_n_rows(normalised, final_params, setup.tokenizer, setup.world, setup.bon_instances,
                          setup.bon_texts, setup.config.train.seq_len, setup.reward_token)
    metrics.update(best_of_n_metrics(rows))
  return metrics, table


def write_results(setup: RewardSetup, workdir: str, loop_summary: dict, metrics: dict, table: list[dict]) -> dict:
  """Writes the final evaluation to the metrics log and the completed summary (with the data's account and
  the run's settings); returns the summary."""
  writer = MetricsWriter(workdir)
  writer.write(setup.num_steps, metrics)
  writer.close()
  summary = {**loop_summary, **setup.data_stats, **metrics, "calibration": table,
             "reward_loss": setup.config.reward.loss, "reward/likelihood_weight": setup.likelihood_weight,
             "comparisons/train_prompts": len(setup.train_records),
             "comparisons/heldout_prompts": len(setup.val_records), "reward/steps": setup.num_steps,
             "complete": True}
  write_summary(workdir, summary)
  return summary


def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"reward: already finished in {workdir}; nothing to do")
    return summary
  require_init_from(config)
  mesh = common.make_mesh(config)
  setup = build_reward(config, workdir, mesh, sft=generate_comparisons(config, workdir, mesh))
  models.save_tokenizer(workdir, setup.tokenizer)
  final_params, loop_summary = _train(setup, workdir)
  metrics, table = final_metrics(setup, final_params, save_reward_model(setup, workdir, final_params))
  summary = write_results(setup, workdir, loop_summary, metrics, table)
  print(common.result_line("reward", summary, ["train/loss", "eval/label_accuracy", "eval/gold_accuracy/all",
                                              "eval/gold_accuracy_clear/all", "eval/spearman/all", "eval/ece"]))
  return summary


def _train(setup: RewardSetup, workdir: str):
  """The reward model's run of the one loop, `setup.num_steps` steps. Returns (final params, loop summary)."""
  config, model, mesh, examples = setup.config, setup.model, setup.mesh, setup.train_examples
  train, rcfg = config.train, config.reward
  tx, schedule = state_lib.make_optimizer(config.optim, setup.num_steps)
  state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(config.seed),
                                                  params=setup.params)
  example = pipelines.to_rm_batch({k: np.stack([v] * train.batch_size) for k, v in examples[0].items()})
  step = steps.jit_step(steps.make_rm_step(model, tx, schedule, config.optim.grad_accum_steps, rcfg.loss,
                                           rcfg.margin, rcfg.threshold), shardings, example, mesh)
  loop = LoopConfig(total_steps=setup.num_steps, log_every=train.log_every, eval_every=train.eval_every,
                    checkpoint_every=train.checkpoint_every,
                    tokens_per_step=train.batch_size * setup.k_max * train.seq_len,
                    keep_checkpoints=train.keep_checkpoints, desc="reward")
  data = pipelines.comparison_pipeline(examples, train.batch_size, config.seed)
  state, summary = train_loop(
      loop, workdir=workdir, state=state, shardings=shardings, step_fn=step,
      rng=jax.random.PRNGKey(config.seed + 1), data=iter(data),
      make_batch=lambda rows: mesh_lib.shard_batch(pipelines.to_rm_batch(rows), mesh), evaluate=setup.evaluate,
      extra_summary=state_lib.param_counts(state.params), config=config)
  return state.params, summary
