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
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np

from rlhf_jax import convert
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.data import pipelines, sources, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval import best_of_n as bon
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.eval import gold as eval_gold
from rlhf_jax.eval.gold import sample_answers, sample_responses
from rlhf_jax.stages import common, comparisons
from rlhf_jax.tokenizer import CharTokenizer
from rlhf_jax.train.loop import read_summary, write_summary
from rlhf_jax.train.metrics import MetricsWriter

MODEL_DIR = "reward_model"
SPEC_FILE = "reward.json"


def read_path_comparisons(config) -> tuple[list[dict], list[dict], dict] | None:
  """data.path's (training records, held-out records, account of the invalid records left out under
  data.max_bad_records, each also a warning line); None for toyworld without a path (`sample_comparisons`)."""
  if not config.data.path:
    if config.data.source != "toyworld":
      raise UserError("config key 'data.path': the reward stage needs comparisons (a JSONL file, or a "
                      "directory with train.jsonl and heldout.jsonl); or set data.source='toyworld'")
    return None
  bad = sources.BadRecords(config.data.max_bad_records)
  train, heldout = comparisons.read_comparisons(config.data.path, config.data.val_fraction, bad)
  for line in bad.warnings():
    print(line, file=sys.stderr)
  return train, heldout, bad.summary()


def sample_comparisons(config, workdir: str, policy, params, tokenizer) -> tuple[list[dict], list[dict], dict]:
  """(training records, held-out records, statistics) of toyworld comparisons sampled from the SFT model and
  ranked by the simulated annotator into WORKDIR/comparisons/ (read back when a run resumes)."""
  directory = os.path.join(workdir, "comparisons")
  stats = comparisons.ensure_comparisons(config, directory, policy, params, tokenizer)
  train, heldout = comparisons.read_comparisons(directory, config.data.val_fraction)
  return train, heldout, stats


def normalization_samples(config, policy, params, tokenizer, records: list[dict]) -> list[str]:
  """SFT samples on training prompts (one each, cycling through the prompts): what the scores are
  normalised on."""
  n = config.reward.norm_samples
  prompts = [records[i % len(records)]["prompt"] for i in range(n)]
  texts, _ = sample_responses(policy, params, tokenizer, prompts, config.sampling, config.seed + 7)
  return list(zip(prompts, texts))


def encode_responses(tokenizer, pairs, seq_len: int, reward_token: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prompt, response text) pairs -> tokens (N, T), start (N,), end (N,) for `make_scorer`."""
  tokens = np.full((len(pairs), seq_len), tokenizer.pad_id, np.int32)
  start = np.zeros(len(pairs), np.int32)
  end = np.zeros(len(pairs), np.int32)
  for n, (prompt, text) in enumerate(pairs):
    ids, start[n], end[n] = pipelines.scored_sequence(tokenizer, pipelines.prompt_ids(tokenizer, prompt),
                                                      tokenizer.encode(text), seq_len, reward_token)
    tokens[n, :len(ids)] = ids
  return tokens, start, end


def best_of_n_samples(model, params, tokenizer, instances, sampling, n: int, seed: int, mesh=None) -> list[str]:
  """n answers per toyworld instance (instance-major) from the policy, for `best_of_n_rows`: the held-out
  evaluations' sampler, so each prompt's first answer is the one the other evaluations score."""
  return sample_answers(model, params, tokenizer, [inst.prompt for inst in instances], sampling, seed=seed,
                        num_samples=n, mesh=mesh).texts


def best_of_n_rows(score, params, tokenizer, world, instances, texts: list[str], seq_len: int,
                   reward_token: bool) -> list[dict]:
  """`bon.best_of_n_table` of the answers `texts` (n per instance, from `best_of_n_samples`) scored by the
  reward model (`score`, `params`: `rm_eval.make_scorer`) and by gold, for n = 1, 2, 4, ... and n itself."""
  n = len(texts) // len(instances)
  repeated = [inst for inst in instances for _ in range(n)]
  pairs = [([{"role": "user", "content": inst.prompt}], text) for inst, text in zip(repeated, texts)]
  tokens, start, end = encode_responses(tokenizer, pairs, seq_len, reward_token)
  scores = score(params, tokens, start, end).reshape(len(instances), n)
  gold = np.array([toyworld.gold_score(world, inst, t) for inst, t in zip(repeated, texts)]).reshape(scores.shape)
  ns = sorted({2 ** k for k in range(n.bit_length()) if 2 ** k <= n} | {n})
  return bon.best_of_n_table(scores, gold, [inst.task for inst in instances], ns)


def best_of_n_metrics(rows: list[dict]) -> dict:
  """Summary keys best_of_n/N/{gold, oracle_gold, rm_score, kl_bound}, and gold per task, for every N."""
  return {f"best_of_n/{row['n']}/{k}": v for row in rows for k, v in row.items() if k != "n"}


def normalize_params(params: dict, fit: dict) -> dict:
  head = {**params["reward_head"], "gain": np.float32(fit["gain"]), "bias": np.float32(fit["bias"])}
  return {**params, "reward_head": head}


def load_reward_model(path: str, mesh, runtime=None):
  """(model with the reward head, normalised params, tokenizer, spec) from a reward workdir or the
  `reward_model` directory in it. `spec` is reward.json: the loss variant, whether the score is read at an
  appended reward token, the likelihood term's weight, and the normalisation."""
  directory = path if os.path.exists(os.path.join(path, SPEC_FILE)) else os.path.join(path, MODEL_DIR)
  spec_path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(spec_path):
    raise UserError(f"{path}: no trained reward model ({MODEL_DIR}/{SPEC_FILE} is missing; has the reward "
                    "stage finished?)")
  with open(spec_path) as f:
    spec = json.load(f)
  weight = float(spec.get("likelihood_weight", 0.0))
  model, params, tokenizer = common.load_pretrained(directory, mesh, runtime,
                                                    heads=("lm", "reward") if weight else ("reward",))
  return model.clone(heads=("reward",), reward_likelihood=weight), params, tokenizer, spec


def check_shared_tokenizer(reward_path: str, rm_tokenizer, policy_path: str, tokenizer) -> None:
  """A policy and the reward model that scores it must share one tokenizer (the RM reads the policy's ids)."""
  if rm_tokenizer is not None and rm_tokenizer.vocab_size != tokenizer.vocab_size:
    raise UserError(f"{reward_path}: the reward model's tokenizer has {rm_tokenizer.vocab_size} tokens, the "
                    f"policy's ({policy_path}) {tokenizer.vocab_size}: they must share one tokenizer")


def warn_unused_tokenizer(config, tokenizer) -> None:
  """A reward model reads text as its SFT model does: `common.resolve_tokenizer` takes the tokenizer that came
  with init_from (`tokenizer`; None when it had none) over data.tokenizer, so a data.tokenizer that names
  another kind, or a file, is unused. One warning line says so."""
  spec = config.data.tokenizer
  kind = "char" if isinstance(tokenizer, CharTokenizer) else "sentencepiece"
  if tokenizer is not None and spec != kind:
    print(f"warning: config key 'data.tokenizer' ({spec!r}) is not used: the reward model reads text with its SFT "
          f"model's tokenizer ({kind}, {tokenizer.vocab_size} tokens; init_from {config.init_from})",
          file=sys.stderr)


def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"reward: already finished in {workdir}; nothing to do")
    return summary
  if not config.init_from:
    raise UserError("config key 'init_from': the reward model starts from an SFT model; name its workdir")
  from_path = read_path_comparisons(config)  # First: bad data stops the run before anything is written.
  rcfg, train = config.reward, config.train
  mesh = common.make_mesh(config)
  policy, params, tokenizer = common.load_pretrained(config.init_from, mesh, config.model, heads=("lm", "reward"))
  common.record_model(config, workdir, policy.config)
  warn_unused_tokenizer(config, tokenizer)
  if policy.config.position == "learned" and train.seq_len > policy.config.max_len:
    raise UserError(f"config key 'train.seq_len': {train.seq_len} is longer than the model's "
                    f"{policy.config.max_len} learned positions ({config.init_from})")
  tokenizer = common.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer)  # Saved in the workdir.
  common.check_vocab(tokenizer, policy.config, config.init_from)
  sft = policy.clone(heads=("lm",))
  sft_params = {k: v for k, v in params.items() if k != "reward_head"}

  train_records, val_records, data_stats = from_path or sample_comparisons(config, workdir, sft, sft_params, tokenizer)
  k_max = max(len(r["responses"]) for r in train_records + val_records)
  if k_max > rcfg.max_responses:
    raise UserError(f"config key 'reward.max_responses': the comparisons have up to {k_max} responses per "
                    f"prompt, more than {rcfg.max_responses}")
  reward_token = rcfg.loss == "reward_token"
  encode = lambda records: [pipelines.comparison_example(tokenizer, r, train.seq_len, k_max, reward_token)
                            for r in records]
  train_examples, val_examples = encode(train_records), encode(val_records)

  spec_path = os.path.join(workdir, MODEL_DIR, SPEC_FILE)
  norm_pairs = None if os.path.exists(spec_path) else normalization_samples(config, sft, sft_params, tokenizer,
                                                                           train_records)
  bon_instances = bon_texts = None
  if rcfg.best_of_n > 0 and config.data.source == "toyworld":  # Sampled now, scored by the trained RM below.
    world = toyworld.make_world(config.toyworld.seed)
    bon_instances = toyworld.eval_instances(world, config.toyworld.num_eval_prompts)
    bon_texts = best_of_n_samples(sft, sft_params, tokenizer, bon_instances, config.sampling,
                                  rcfg.best_of_n, eval_gold.eval_seed(config.sampling), mesh)
  del sft_params

  weight = float(rcfg.likelihood_weight)
  model = policy.clone(heads=("reward",), reward_likelihood=weight)
  rm_params = {k: v for k, v in params.items() if k != "lm_head" or weight}
  if weight:  # A zero head: the untrained RM scores by likelihood alone (0.772 vs 0.650 gold accuracy, toyworld).
    head = rm_params["reward_head"]
    rm_params["reward_head"] = {**head, "kernel": jax.numpy.zeros_like(head["kernel"])}
  scorer = rm_eval.make_scorer(model, mesh, chunk=train.batch_size * k_max)

  def evaluate(state) -> dict:
    metrics, _ = rm_eval.comparison_metrics(rm_eval.score_examples(scorer, state.params, val_examples), val_records)
    return metrics

  # One epoch by default (InstructGPT: "multiple epochs overfit quickly"; Gao et al. 2022: fresh data beats
  # repeated data): the number of steps follows the comparisons kept, which only the data knows.
  num_steps = train.steps if rcfg.epochs <= 0 else max(1, math.ceil(rcfg.epochs * len(train_examples)
                                                                    / train.batch_size))
  final_params, loop_summary = _train(config, workdir, model, mesh, rm_params, train_examples, k_max, evaluate,
                                      num_steps)

  # Normalisation: gain and bias such that SFT samples on training prompts score mean 0, std 1.
  if norm_pairs is not None:
    tokens, start, end = encode_responses(tokenizer, norm_pairs, train.seq_len, reward_token)
    host = jax.device_get(final_params)
    fit = rm_eval.fit_normalization(scorer(final_params, tokens, start, end), float(host["reward_head"]["gain"]),
                                    float(host["reward_head"]["bias"]))
    spec = {"loss": rcfg.loss, "reward_token": reward_token, "normalization": fit, "seq_len": train.seq_len,
            "likelihood_weight": weight}
    if jax.process_index() == 0:
      convert.save_converted(os.path.join(workdir, MODEL_DIR), model.config, normalize_params(host, fit),
                             overwrite=True)
      tokenizer.save(os.path.join(workdir, MODEL_DIR))  # The directory is a complete model on its own.
      with open(spec_path + ".tmp", "w") as f:
        json.dump(spec, f, indent=2, sort_keys=True)
      os.replace(spec_path + ".tmp", spec_path)
  with open(spec_path) as f:
    spec = json.load(f)

  # Final evaluation. Accuracies and rank correlation do not change under the (positive) normalisation; the
  # calibration is of the trained model's own Bradley-Terry probabilities, so it uses the raw scores.
  val_scores = rm_eval.score_examples(scorer, final_params, val_examples)
  metrics, table = rm_eval.comparison_metrics(val_scores, val_records)
  for row in table:
    name = f"eval/calibration/{row['low']:.1f}-{row['high']:.1f}"
    metrics.update({f"{name}/predicted": row["predicted"], f"{name}/observed": row["observed"],
                    f"{name}/count": row["count"]})
  fit = spec["normalization"]
  metrics.update({"norm/gain": fit["gain"], "norm/bias": fit["bias"], "norm/raw_mean": fit["raw_mean"],
                  "norm/raw_std": fit["raw_std"]})
  if bon_texts is not None:  # Scores on the saved (normalised) scale: (raw - raw_mean) / raw_std.
    normalised = lambda *args: (scorer(*args) - fit["raw_mean"]) / fit["raw_std"]
    rows = best_of_n_rows(normalised, final_params, tokenizer, world, bon_instances, bon_texts, train.seq_len,
                          reward_token)
    metrics.update(best_of_n_metrics(rows))
  writer = MetricsWriter(workdir)
  writer.write(num_steps, metrics)
  writer.close()
  summary = {**loop_summary, **data_stats, **metrics, "calibration": table, "reward_loss": rcfg.loss,
             "reward/likelihood_weight": weight,
             "comparisons/train_prompts": len(train_records), "comparisons/heldout_prompts": len(val_records),
             "reward/steps": num_steps,
             "complete": True}
  write_summary(workdir, summary)
  print(common.result_line("reward", summary, ["train/loss", "eval/label_accuracy", "eval/gold_accuracy/all",
                                              "eval/gold_accuracy_clear/all", "eval/spearman/all", "eval/ece"]))
  return summary


def _train(config, workdir, model, mesh, params, examples, k_max, evaluate, num_steps):
  """The reward model's run of the one loop, `num_steps` steps. Returns (final params, loop summary)."""
  from rlhf_jax.train import state as state_lib
  from rlhf_jax.train import steps
  from rlhf_jax.train.loop import LoopConfig, train_loop

  train, rcfg = config.train, config.reward
  tx, schedule = state_lib.make_optimizer(config.optim, num_steps)
  state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(config.seed), params=params)
  example = pipelines.to_rm_batch({k: np.stack([v] * train.batch_size) for k, v in examples[0].items()})
  step = steps.jit_step(steps.make_rm_step(model, tx, schedule, config.optim.grad_accum_steps, rcfg.loss,
                                           rcfg.margin, rcfg.threshold), shardings, example, mesh)
  loop = LoopConfig(total_steps=num_steps, log_every=train.log_every, eval_every=train.eval_every,
                    checkpoint_every=train.checkpoint_every,
                    tokens_per_step=train.batch_size * k_max * train.seq_len,
                    keep_checkpoints=train.keep_checkpoints, desc="reward")
  data = pipelines.comparison_pipeline(examples, train.batch_size, config.seed)
  state, summary = train_loop(
      loop, workdir=workdir, state=state, shardings=shardings, step_fn=step,
      rng=jax.random.PRNGKey(config.seed + 1), data=iter(data),
      make_batch=lambda rows: mesh_lib.shard_batch(pipelines.to_rm_batch(rows), mesh), evaluate=evaluate,
      extra_summary={"num_params": state_lib.count_params(state.params)}, config=config)
  return state.params, summary
