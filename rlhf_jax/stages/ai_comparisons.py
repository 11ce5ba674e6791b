"""The AI-feedback comparisons stage (RLAIF): the policy (init_from) answers each prompt K times, as in the
comparisons stage, and a judge (judge.model, rlhf_jax/judge.py) ranks the answers instead of an annotator --
every pair under every principle of judge.principles, both orders (judge.rank=pairwise), or by its log-odds
of "yes" to "is the answer good?" (pointwise). The files are ordinary comparison JSONL (artifacts/comparisons.py)
with the judge's "confidence" in each record, so the reward stage, DPO and PPO's reward model read them as
they read an annotator's.

  prompts  toyworld's training and held-out instances (the comparisons stage's, so with the same seeds the
           answers are the same and only the labels differ), or data.path's prompt JSONL, whose last
           data.val_fraction is held out
  summary  comparisons kept, the judge's agreement with gold (toyworld, per task: `gold_agreement/TASK`), how
           often its two orders of a pair agree, its mean confidence; and with judge.best_of_n > 0 gold of
           the pointwise judge's pick out of 1, 2, 4, ... of the policy's answers to the held-out evaluation
           prompts, beside gold's own pick (`judge_best_of_n/N/...`, eval/best_of_n.py)
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from rlhf_jax import judge as judge_lib
from rlhf_jax.artifacts import models
from rlhf_jax.artifacts.comparisons import FILES, ensure_comparisons, write_jsonl
from rlhf_jax.data import sources, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval import gold as eval_gold
from rlhf_jax.eval.best_of_n import best_of_n_samples, best_of_n_sizes, best_of_n_table
from rlhf_jax.eval.gold import sample_responses
from rlhf_jax.stages import common
from rlhf_jax.train.loop import read_summary, write_summary


def judge_ranker(judge: judge_lib.Judge, principles: list[str], mode: str):
  """A `comparisons.Ranker` from a judge: pairwise (`Judge.rank`) or pointwise (by `Judge.verdicts`; the
  confidence is then the mean Bradley-Terry probability sigmoid(s_i - s_j) of the ranking's pairs)."""
  if mode == "pairwise":
    return lambda prompts, groups: judge.rank(prompts, groups, principles)

  def pointwise(prompts, groups):
    flat = judge.verdicts([p for p, g in zip(prompts, groups) for _ in g], [r for g in groups for r in g])
    ranks, confidence, start = [], np.zeros(len(groups)), 0
    for n, group in enumerate(groups):
      scores = flat[start:start + len(group)]
      start += len(group)
      distinct = sorted(set(scores.tolist()), reverse=True)
      ranks.append([distinct.index(s) for s in scores.tolist()])
      sure = [1.0 / (1.0 + np.exp(scores[j] - scores[i])) for i in range(len(group)) for j in range(len(group))
              if scores[i] > scores[j]]
      confidence[n] = float(np.mean(sure)) if sure else 0.5
    return ranks, confidence, {}

  return pointwise


def prompt_comparisons(model, params, tokenizer, config, prompts: list, seed: int, rank) -> tuple[list[dict], dict]:
  """data.path's prompts (conversations) answered K times each and ranked: (records, statistics)."""
  k = config.toyworld.responses_per_prompt
  texts, ended = sample_responses(model, params, tokenizer, [p for p in prompts for _ in range(k)],
                                  config.sampling, seed, temperature=config.toyworld.sample_temperature)
  groups = [texts[n * k:(n + 1) * k] for n in range(len(prompts))]
  rankings, confidence, stats = rank(prompts, groups)
  records = [{"prompt": p, "responses": g, "ranking": r, "confidence": float(c)}
             for p, g, r, c in zip(prompts, groups, rankings, confidence) if len(set(r)) > 1]
  return records, {"prompts": len(prompts), "comparisons": len(records), "all_tied": len(prompts) - len(records),
                   "end_of_turn_rate": float(np.mean(ended)), "mean_confidence": float(np.mean(confidence)),
                   **stats}


def judge_best_of_n(config, model, params, tokenizer, judge: judge_lib.Judge, mesh) -> dict:
  """toyworld, judge.best_of_n answers to each held-out evaluation prompt (the evaluations' sampler, so the
  reward stage's best-of-n and `python -m rlhf_jax.best_of_n` see the same answers): gold of the pointwise
  judge's pick out of n, beside gold's own pick, per task."""
  world = toyworld.make_world(config.toyworld.seed)
  instances = toyworld.eval_instances(world, config.toyworld.num_eval_prompts)
  n = config.judge.best_of_n
  texts = best_of_n_samples(model, params, tokenizer, instances, config.sampling, n,
                            eval_gold.eval_seed(config.sampling), mesh)
  repeated = [inst for inst in instances for _ in range(n)]
  scores = judge.verdicts([inst.prompt for inst in repeated], texts).reshape(len(instances), n)
  gold = np.array([toyworld.gold_score(world, inst, t) for inst, t in zip(repeated, texts)]).reshape(scores.shape)
  rows = best_of_n_table(scores, gold, [inst.task for inst in instances], best_of_n_sizes(n))
  return {f"judge_best_of_n/{row['n']}/{key.replace('rm_score', 'judge_log_odds')}": value
          for row in rows for key, value in row.items() if key != "n"}


def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"ai_comparisons: already written in {workdir}; nothing to do")
    return summary
  if not config.init_from:
    raise UserError("config key 'init_from': the answers are sampled from a policy (an SFT model); name its "
                    "workdir")
  toy = config.data.source == "toyworld"
  if not toy and not config.data.path:
    raise UserError("config key 'data.path': the prompts to answer (JSONL with {\"prompt\"} or {\"messages\"}), "
                    "or set data.source='toyworld'")
  principles = judge_lib.principles_of(config)  # Bad files stop the run before anything loads.
  prompts = None
  if not toy:
    source = sources.open_source(config.data.path, "prompts")
    prompts = [source[i]["messages"] for i in range(len(source))]
  mesh = common.make_mesh(config)
  model, params, tokenizer = models.load_pretrained(config.init_from, mesh, config.model)
  common.record_model(config, workdir, model.config)
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer)
  judge = models.load_judge(config, mesh)
  common.write_run_config(config, workdir)
  rank = judge_ranker(judge, principles, config.judge.rank)
  started = time.time()
  if toy:
    stats = ensure_comparisons(config, workdir, model, params, tokenizer, rank)
  else:
    cut = max(1, int(round(len(prompts) * (1.0 - config.data.val_fraction))))
    stats = {}
    for split, chunk, offset in (("train", prompts[:cut], 4), ("heldout", prompts[cut:] or prompts[-1:], 5)):
      records, split_stats = prompt_comparisons(model, params, tokenizer, config, chunk, config.seed + offset, rank)
      stats.update({f"comparisons/{split}/{k}": v for k, v in split_stats.items()})
      if not records:
        raise UserError(f"{config.data.path}: the judge tied all K answers of every {split} prompt")
      if jax.process_index() == 0:
        write_jsonl(os.path.join(workdir, FILES[split]), records)
  stats["comparisons/seconds"] = time.time() - started
  if toy and config.judge.best_of_n > 0:
    stats.update(judge_best_of_n(config, model, params, tokenizer, judge, mesh))
  summary = {**stats, "principles": len(principles), "complete": True, "wall_time_s": time.time() - started}
  write_summary(workdir, summary)
  print(common.result_line("ai_comparisons", summary, ["comparisons/train/comparisons",
                                                      "comparisons/heldout/gold_agreement/all",
                                                      "comparisons/heldout/order_consistency",
                                                      f"judge_best_of_n/{config.judge.best_of_n}/gold"]))
  return summary
