"""The pipeline's report: `report.md` with PNG plots of every stage, the figures InstructGPT reports, and
each stage's answers to the same prompts.

  write_report(workdir, {"pretrain": DIR, "sft": DIR, "reward": DIR, "ppo": DIR}) -> numbers (strict JSON)

Everything is read back from the stages' workdirs (metrics.jsonl, summary.json, checkpoints), so a report
can be written for any finished (or partial) set of runs; a stage that is missing is left out.

  plots/<stage>_loss.png   train/loss and eval/loss against step, for each stage that logged them
  plots/ppo_scores.png     PPO's reward-model score, gold score and KL to SFT against iteration: the rollout
                           means (ppo/score, ppo/gold, ppo/kl) as lines, the held-out evaluations (eval/*,
                           with 95% intervals) as points
  plots/gold_vs_kl.png     gold and RM score of the evaluations against their KL, SFT at KL 0: over-
                           optimisation shows as gold falling while the RM score still rises
  plots/rm_calibration.png the reward model's predicted probability that it orders a held-out pair like the
                           labeler against how often it does (reward summary's "calibration" rows)

Tables: per stage its held-out loss, gold score per task (SFT; PPO beside SFT on the same prompts and keys),
the RM's accuracy against labels and gold, KL to SFT, the held-out pretraining loss, and PPO's win rate
against SFT by gold and by the RM with 95% half-widths. Then sample answers: every stage's model on the same
prompts (by default a handful of toyworld held-out prompts, one per task), sampled with the same key, each
with its gold score.

Plots use matplotlib's Agg canvas directly (no pyplot state), so writing a report from a notebook leaves its
inline backend alone.
"""

from __future__ import annotations

import html
import math
import os
import types
from typing import Any, Optional, Sequence

import jax

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts.models import load_pretrained
from rlhf_jax.data import toyworld
from rlhf_jax.eval.gold import eval_seed, sample_answers
from rlhf_jax.model.hf import read_json_object
from rlhf_jax.train.loop import read_summary
from rlhf_jax.train.metrics import read_metrics

STAGES = ("pretrain", "sft", "reward", "ppo")
TITLES = {"pretrain": "Pretraining", "sft": "Instruction tuning (SFT)", "reward": "Reward model", "ppo": "PPO"}
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
NUM_SAMPLE_PROMPTS = 5


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
  """(figure, axes array of shape (rows, cols)) on an Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=size)
  FigureCanvasAgg(fig)
  return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path + ".tmp", dpi=100, format="png")
  os.replace(path + ".tmp", path)


def finite(value: Any) -> Optional[float]:
  """A float, or None for anything that is not a finite number (JSON's null)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def integer_steps(ax) -> None:
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of the rows that logged a finite `key`."""
  points = [(row["step"], finite(row.get(key))) for row in rows if "step" in row]
  points = [(s, v) for s, v in points if v is not None]
  return [s for s, _ in points], [v for _, v in points]


# ---------------------------------------------------------------------------------------------------------
# Plots. Each returns True when it drew something.


def plot_losses(path: str, stage: str, rows: Sequence[dict]) -> bool:
  curves = [(key, *series(rows, key)) for key in ("train/loss", "eval/loss")]
  curves = [c for c in curves if c[1]]
  if not curves:
    return False
  fig, axes = new_figure()
  ax = axes[0, 0]
  for key, steps, values in curves:
    ax.plot(steps, values, marker="o" if key.startswith("eval") or len(steps) < 20 else None, label=key)
  ax.set(xlabel="step", ylabel="loss", title=f"{TITLES[stage]}: loss")
  integer_steps(ax)
  ax.legend()
  ax.grid(alpha=0.3)
  save_figure(fig, path)
  return True


def plot_ppo_scores(path: str, rows: Sequence[dict]) -> bool:
  panels = (("reward-model score", "ppo/score", "eval/rm_score"), ("gold score", "ppo/gold", "eval/gold/all"),
            ("KL to SFT (nats)", "ppo/kl", "eval/kl"))
  if not any(series(rows, key)[0] for _, train, evals in panels for key in (train, evals)):
    return False
  fig, axes = new_figure(1, 3, (13.0, 3.8))
  for ax, (label, train_key, eval_key) in zip(axes[0], panels):
    steps, values = series(rows, train_key)
    if steps:
      ax.plot(steps, values, alpha=0.7, label=f"{train_key} (rollouts)")
    steps, values = series(rows, eval_key)
    if steps:
      ci = dict(zip(*series(rows, eval_key + "_ci")))
      ax.errorbar(steps, values, yerr=[ci.get(s, 0.0) for s in steps], fmt="o", capsize=3,
                  label=f"{eval_key} (held-out, 95% CI)")
    ax.set(xlabel="PPO iteration", title=label)
    integer_steps(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  save_figure(fig, path)
  return True


def plot_gold_vs_kl(path: str, rows: Sequence[dict], summary: dict) -> bool:
  evals = [row for row in rows if finite(row.get("eval/kl")) is not None]
  if not evals:
    return False
  fig, axes = new_figure(1, 2, (10.0, 3.8))
  for ax, key, label in ((axes[0, 0], "eval/gold/all", "gold score"), (axes[0, 1], "eval/rm_score", "RM score")):
    points = [(finite(r["eval/kl"]), finite(r.get(key)), finite(r.get(key + "_ci")) or 0.0, r["step"])
              for r in evals if finite(r.get(key)) is not None]
    base = finite(summary.get(key.replace("eval/", "sft/")))
    if base is not None:  # The SFT model on the same prompts: KL 0 by definition.
      points.insert(0, (0.0, base, finite(summary.get(key.replace("eval/", "sft/") + "_ci")) or 0.0, "SFT"))
    if not points:
      ax.set_visible(False)
      continue
    kl, value, ci, step = zip(*points)
    ax.errorbar(kl, value, yerr=ci, fmt="-o", capsize=3)
    for x, y, s in zip(kl, value, step):
      ax.annotate(str(s), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set(xlabel="KL(policy || SFT), nats per response", ylabel=label, title=f"{label} against KL (points: step)")
    ax.grid(alpha=0.3)
  save_figure(fig, path)
  return True


def plot_calibration(path: str, table: Sequence[dict]) -> bool:
  rows = [r for r in table if finite(r.get("predicted")) is not None and finite(r.get("observed")) is not None]
  if not rows:
    return False
  fig, axes = new_figure(1, 1, (4.8, 4.4))
  ax = axes[0, 0]
  ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="gray", label="perfect calibration")
  counts = [r.get("count") or 0 for r in rows]
  ax.scatter([r["predicted"] for r in rows], [r["observed"] for r in rows],
             s=[20 + 200 * c / max(max(counts), 1) for c in counts], zorder=3, label="held-out pairs (size: count)")
  for r, c in zip(rows, counts):
    ax.annotate(str(c), (r["predicted"], r["observed"]), xytext=(5, -10), textcoords="offset points", fontsize=8)
  ax.set(xlabel="predicted P(model orders the pair like the labeler)", ylabel="observed fraction",
         title="Reward-model calibration", xlim=(0.45, 1.02), ylim=(-0.02, 1.02))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  save_figure(fig, path)
  return True


# ---------------------------------------------------------------------------------------------------------
# Tables.


def _fmt(value: Optional[float], ci: Optional[float] = None) -> str:
  if value is None:
    return "-"
  return f"{value:.4g}" if ci is None else f"{value:.4g} ± {ci:.2g}"


def _tasks(summary: dict, prefix: str) -> list[str]:
  """"all" then the tasks present under `prefix` (e.g. eval/gold/)."""
  skip = {"all", "end_of_turn_rate", "mean_words"}
  names = sorted({k[len(prefix):] for k in summary if k.startswith(prefix) and "/" not in k[len(prefix):]
                  and not k.endswith("_ci")} - skip)
  return (["all"] if prefix + "all" in summary else []) + names


def stage_tables(summaries: dict) -> tuple[dict[str, list[str]], dict]:
  """Markdown lines per stage, and the numbers shown as {"<stage>/<summary key>": value}."""
  tables, numbers = {}, {}

  def get(stage, key):
    value = finite(summaries[stage].get(key))
    numbers[f"{stage}/{key}"] = value
    return value

  def show(stage, key, ci_key=None):
    """The value (± its 95% CI under `ci_key`), and for a `train.seeds` run its spread over the seeds: the
    summary holds the mean, `<key>/seed_std` and `<key>/seeds`."""
    summary = summaries[stage]
    text = _fmt(get(stage, key), get(stage, ci_key) if ci_key and ci_key in summary else None)
    std, runs = finite(summary.get(f"{key}/seed_std")), summary.get(f"{key}/seeds") or []
    if std is not None and len(runs) > 1:
      numbers[f"{stage}/{key}/seed_std"] = std
      text += f" (sd {std:.2g} over {len(runs)} seeds)"
    return text

  def simple(stage, rows):
    lines = ["| | |", "|---|---|"]
    for label, key in rows:
      if key in summaries[stage]:
        lines.append(f"| {label} | {show(stage, key)} |")
    return lines

  if "pretrain" in summaries:
    tables["pretrain"] = simple("pretrain", [("held-out loss", "eval/loss"), ("held-out perplexity", "eval/perplexity"),
                                             ("training loss (last logged)", "train/loss"), ("steps", "step"),
                                             ("wall time (s)", "wall_time_s")])
  if "sft" in summaries:
    rows = [("held-out loss", "eval/loss")]
    rows += [(f"gold score: {task}", f"eval/gold/{task}") for task in _tasks(summaries["sft"], "eval/gold/")]
    rows += [("end-of-turn rate", "eval/gold/end_of_turn_rate"),
             ("demonstrators' gold score: all", "demonstrator/all"), ("wall time (s)", "wall_time_s")]
    tables["sft"] = simple("sft", rows)
  if "reward" in summaries:
    tables["reward"] = simple("reward", [
        ("accuracy vs labels (held-out pairs)", "eval/label_accuracy"),
        ("accuracy vs gold, clear pairs", "eval/gold_accuracy_clear/all"),
        ("accuracy vs gold, all pairs", "eval/gold_accuracy/all"),
        ("Spearman vs gold", "eval/spearman/all"), ("expected calibration error", "eval/ece"),
        ("wall time (s)", "wall_time_s")])
    ns = sorted({int(k.split("/")[1]) for k in summaries["reward"] if k.startswith("best_of_n/")})
    if ns:  # What the RM's ranking is worth: its pick out of n SFT answers, against the gold scorer's pick.
      tables["reward"] += ["", "Best-of-n on the held-out prompts (SFT answers; the RM's pick against the gold "
                           "scorer's; KL bound log n - (n-1)/n):", "",
                           "| n | KL bound | gold of the RM's pick | gold of the oracle's pick |", "|---|---|---|---|"]
      for n in ns:
        cells = [_fmt(get("reward", f"best_of_n/{n}/{key}")) for key in ("kl_bound", "gold", "oracle_gold")]
        tables["reward"].append(f"| {n} | " + " | ".join(cells) + " |")
  if "ppo" in summaries:
    s = summaries["ppo"]
    # PPO against what a user gets without RL, on the same held-out prompts: SFT (same keys), SFT sampled colder
    # (the free baseline), and best-of-4 SFT answers picked by the reward model and by gold (the reward stage's).
    bon = summaries.get("reward", {})
    cold = next((k.split("/")[0] for k in s if k.startswith("sft_t") and k.endswith("/gold/all")), None)
    extra = [(f"SFT at T {cold[5:]}", "ppo", f"{cold}/")] if cold else []
    if "best_of_n/4/gold" in bon:
      extra += [("RM's best of 4", "reward", "best_of_n/4/"), ("gold's best of 4", "reward", "best_of_n/4/oracle_")]
    lines = ["| | PPO | SFT (same prompts and keys) | " + " | ".join(e[0] for e in extra) + " |",
             "|---|---|---|" + "---|" * len(extra)]
    rows = [(f"gold score: {task}", f"gold/{task}") for task in _tasks(s, "eval/gold/")]
    rows += [("reward-model score", "rm_score"), ("KL to SFT (nats)", "kl"),
             ("held-out pretraining loss", "pretrain/loss"), ("end-of-turn rate", "end_of_turn_rate")]
    for label, key in rows:
      if f"eval/{key}" in s or f"sft/{key}" in s:
        cells = [show("ppo", f"{side}/{key}", f"{side}/{key}_ci") for side in ("eval", "sft")]
        for _, stage, prefix in extra:
          name = prefix + ("gold" if stage == "reward" and key == "gold/all" else key)
          cells.append(_fmt(get(stage, name)) if key.startswith("gold/") and name in summaries[stage] else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, key in (("win rate vs SFT, by gold", "eval/win_rate_gold"),
                       ("win rate vs SFT, by the RM", "eval/win_rate_rm"),
                       ("gold gain over SFT, paired", "eval/gold_gain")):
      if key in s:
        lines.append(f"| {label} (± 95% CI) | {show('ppo', key, key + '_ci')} | "
                     + ("0.5" if "win" in key else "0") + " |" + " |" * len(extra))
    tables["ppo"] = lines
  return tables, numbers


# ---------------------------------------------------------------------------------------------------------
# Samples.


def _run_config(stage_dir: str) -> dict:
  return read_json_object(os.path.join(stage_dir, "config.json"))


def default_prompts(config: dict, num: int = NUM_SAMPLE_PROMPTS):
  """Toyworld held-out instances, one per task (None when the runs are not on toyworld)."""
  if config.get("data", {}).get("source") != "toyworld":
    return None
  seed = config["toyworld"]["seed"]
  world = toyworld.make_world(seed)
  return world, toyworld.eval_instances(world, num)


def stage_samples(stage_dirs: dict, prompts: Sequence[str], instances, world, sampling) -> dict:
  """{stage: (texts, gold scores or None)} for the LM stages present, all on the same prompts and key."""
  out = {}
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  for stage in ("pretrain", "sft", "ppo"):
    if stage not in stage_dirs or (_run_config(stage_dirs[stage]).get("train") or {}).get("seeds", 1) > 1:
      continue  # A `train.seeds` workdir holds several models: its tables give their means and spreads.
    model, params, tokenizer = load_pretrained(stage_dirs[stage], mesh)
    texts = sample_answers(model, params, tokenizer, list(prompts), sampling, seed=eval_seed(sampling),
                           mesh=mesh).texts
    gold = None if instances is None else [toyworld.gold_score(world, inst, t) for inst, t in zip(instances, texts)]
    out[stage] = (texts, gold)
  return out


def _cell(text: str) -> str:
  """Text as a markdown table cell: HTML-escaped code, pipes and unprintable characters replaced."""
  text = "".join(c if c.isprintable() else "\ufffd" for c in text.replace("\n", " ")).strip()
  return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>" if text else "*(empty)*"


def sample_section(samples: dict, prompts: Sequence[str]) -> list[str]:
  stages = list(samples)
  scored = lambda s: samples[s][1] is not None
  lines = ["| prompt | " + " | ".join(TITLES[s] + (" (gold)" if scored(s) else "") for s in stages) + " |",
           "|---|" + "---|" * len(stages)]
  for i, prompt in enumerate(prompts):
    cells = []
    for s in stages:
      texts, gold = samples[s]
      cells.append(_cell(texts[i]) + ("" if gold is None else f" ({gold[i]:.2f})"))
    lines.append(f"| {_cell(prompt)} | " + " | ".join(cells) + " |")
  return lines


# ---------------------------------------------------------------------------------------------------------


def write_report(workdir: str, stage_dirs: dict[str, str], sample_prompts: Optional[list[str]] = None) -> dict:
  """Writes WORKDIR/report.md and WORKDIR/plots/*.png for the stages in `stage_dirs` (any of "pretrain",
  "sft", "reward", "ppo", each naming its workdir; missing ones are skipped). `sample_prompts` (user turns)
  replaces the default toyworld held-out prompts; gold scores are given only for the default ones.

  Returns the report's numbers, strict-JSON-ready (non-finite values are None): "<stage>/<summary key>" for
  every table entry, "samples/<stage>/gold" (mean gold of the sample answers), "report" (the path of
  report.md) and "plots" (the PNG file names, relative to WORKDIR).
  """
  unknown = set(stage_dirs) - set(STAGES)
  if unknown:
    raise ValueError(f"unknown stages {sorted(unknown)}; expected some of {', '.join(STAGES)}")
  stage_dirs = {s: stage_dirs[s] for s in STAGES if stage_dirs.get(s) and os.path.isdir(stage_dirs[s])}
  plots_dir = os.path.join(workdir, PLOTS_DIR)
  os.makedirs(plots_dir, exist_ok=True)
  metrics = {s: read_metrics(d) for s, d in stage_dirs.items()}
  summaries = {s: read_summary(d) or {} for s, d in stage_dirs.items()}

  plots: dict[str, list[tuple[str, str]]] = {s: [] for s in stage_dirs}  # stage -> [(caption, file)]

  def plot(stage, name, caption, draw, *args):
    if draw(os.path.join(plots_dir, name), *args):
      plots[stage].append((caption, f"{PLOTS_DIR}/{name}"))

  for stage in stage_dirs:
    plot(stage, f"{stage}_loss.png", "training (train/loss) and held-out (eval/loss) loss", plot_losses, stage,
         metrics[stage])
  if "reward" in stage_dirs:
    plot("reward", "rm_calibration.png", "calibration on held-out pairs", plot_calibration,
         summaries["reward"].get("calibration") or [])
  if "ppo" in stage_dirs:
    plot("ppo", "ppo_scores.png", "RM score, gold score and KL to SFT per iteration", plot_ppo_scores,
         metrics["ppo"])
    plot("ppo", "gold_vs_kl.png", "gold and RM score against KL (held-out evaluations)", plot_gold_vs_kl,
         metrics["ppo"], summaries["ppo"])

  tables, numbers = stage_tables(summaries)

  samples, prompts = {}, []
  lm_stages = [s for s in ("ppo", "sft", "pretrain") if s in stage_dirs]
  if lm_stages:
    config = _run_config(stage_dirs[lm_stages[0]])
    world = instances = None
    if sample_prompts is not None:
      prompts = list(sample_prompts)
    else:
      found = default_prompts(config)
      if found is not None:
        world, instances = found
        prompts = [inst.prompt for inst in instances]
    if prompts:
      sampling = dict(config.get("sampling", {}))  # As the held-out evaluations sample (eval/gold.py).
      sampling["batch_size"] = len(prompts)
      samples = stage_samples(stage_dirs, prompts, instances, world, types.SimpleNamespace(**sampling))
      for stage, (_, gold) in samples.items():
        if gold is not None:
          numbers[f"samples/{stage}/gold"] = finite(sum(gold) / len(gold))

  lines = ["# RLHF pipeline report", ""]
  lines += ["Stages: " + ", ".join(f"{TITLES[s]} (`{d}`)" for s, d in stage_dirs.items()), ""]
  for stage in stage_dirs:
    lines += [f"## {TITLES[stage]}", ""]
    lines += tables.get(stage, [])
    lines.append("")
    for caption, name in plots[stage]:
      lines += [f"![{caption}]({name})", "", f"*{caption}* (`{name}`)", ""]
  if samples:
    lines += ["## Sample answers", "",
              f"Each model's answer to the same prompts, sampled as the held-out evaluations sample, with the "
              f"same keys (sampling.eval_seed {sampling.get('eval_seed', 0)}, temperature "
              f"{sampling['temperature']}, up to {sampling['max_new_tokens']} tokens)"
              + ("; gold score in parentheses." if instances is not None else "."), ""]
    lines += sample_section(samples, prompts)
    lines.append("")
  path = os.path.join(workdir, REPORT_FILE)
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(path + ".tmp", path)
  return {**numbers, "report": path, "plots": [name for stage in plots for _, name in plots[stage]]}
