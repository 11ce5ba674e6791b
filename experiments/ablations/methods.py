"""Ablation: every method on one gold-against-KL frontier, from the same SFT model and the same comparisons.

  python -m rlhf_jax.sweep experiments/ablations/methods.py --workdir runs/ablations/methods \
      --config.init_from=runs/quickstart/sft --config.ppo.reward_from=runs/quickstart/reward \
      --config.dpo.reward_from=runs/quickstart/reward --config.data.path=runs/quickstart/comparisons

Runs (`METHODS`): PPO as experiments/toyworld_ppo.py runs it, with its two KL weights (beta in the reward,
the exact KL in the loss) both scaled by 0.3, 1 and 3; GRPO and RLOO (toyworld_ppo.py's :grpo and :rloo);
each for the quickstart's 30 iterations of 64 prompts x 4, 3 seeds in one program (train.seeds, with
ppo.iterations_per_call 5). DPO at beta 0.1 (lr 5e-6) and 0.5 (lr 1e-5) and IPO at beta 0.1
(experiments/toyworld_dpo.py, one epoch over the comparisons the reward model learned from), seeds 0-2 as
runs of their own. Every policy is
evaluated by the one evaluator on the same held-out prompts and keys. `report` writes frontier.png -- held-out
gold, and the RM's score, against KL to SFT, mean +- sd over seeds -- with SFT, SFT sampled at T 0.5 and
best-of-n (n = 1, 2, 4, 8; the reward run's summary: the RM's pick and gold's, at best-of-n's KL bound
log n - (n - 1) / n, which is an upper bound, not a measurement), and frontier.md (the same figures, per task).
`:smoke` runs one seed of PPO, GRPO and DPO from smoke workdirs in seconds.
Expected (2026-12-05, world 0's quickstart SFT, RM and comparisons, 3,056 s alone on the 2-core Xeon): gold
(mean +- sd over seeds) at KL: PPO 0.670 +- 0.007 at 0.35, DPO beta 0.5 0.680 +- 0.005 at 0.40, IPO 0.678 +-
0.005 at 0.34, GRPO 0.631 +- 0.006 at 3.84 (over-optimised); SFT 0.619, the RM's best of 4 0.708. The README
has the whole table; the history is in experiments/NOTES.md.
"""

import json
import math
import os

import numpy as np

from rlhf_jax.config import load_module
from rlhf_jax.eval.report import new_figure, save_figure

_HERE = os.path.dirname(os.path.abspath(__file__))
toyworld_ppo = load_module(os.path.join(_HERE, "..", "toyworld_ppo.py"))
toyworld_dpo = load_module(os.path.join(_HERE, "..", "toyworld_dpo.py"))
common = load_module(os.path.join(_HERE, "..", "common.py"))

# name -> (experiment, variant, {dotted key: value}); PPO's KL weights are the file's times the scale.
METHODS = {
    "ppo_kl0.3x": ("ppo", None, {"ppo.kl_coef": 0.03, "ppo.kl_loss_coef": 0.3}),
    "ppo": ("ppo", None, {}),
    "ppo_kl3x": ("ppo", None, {"ppo.kl_coef": 0.3, "ppo.kl_loss_coef": 3.0}),
    "grpo": ("ppo", "grpo", {}),
    "rloo": ("ppo", "rloo", {}),
    "dpo_beta0.1": ("dpo", None, {"dpo.beta": 0.1}),
    "dpo_beta0.5": ("dpo", None, {"dpo.beta": 0.5, "optim.lr": 1e-5}),
    "ipo_beta0.1": ("dpo", None, {"dpo.loss": "ipo", "dpo.beta": 0.1}),
}
SMOKE = ("ppo", "grpo", "dpo_beta0.1")
SEEDS = 3
TASKS = ("review", "list", "harmful", "repeat", "reverse", "arithmetic")
COLUMNS = ("eval/gold/all", "eval/kl", "eval/rm_score", "eval/win_rate_gold", "eval/gold_gain",
           *(f"eval/gold/{task}" for task in TASKS))


def get_config(arg=None):
  """The RL stage as this ablation runs it before `sweep` varies it (what `--config` on this file loads)."""
  common.parse_variants(arg, "smoke")
  return toyworld_ppo.get_config(arg)


def _config(kind, variant, smoke):
  module = toyworld_ppo if kind == "ppo" else toyworld_dpo
  return module.get_config(",".join(v for v in ("smoke" if smoke else None, variant) if v) or None)


def sweep(arg, workdir):
  common.parse_variants(arg, "smoke")
  smoke = arg == "smoke"
  runs = []
  for name, (kind, variant, settings) in METHODS.items():
    if smoke and name not in SMOKE:
      continue
    seeds = 1 if smoke else SEEDS
    for seed in range(seeds if kind == "dpo" else 1):
      config = _config(kind, variant, smoke)
      for key, value in settings.items():
        section, field = key.split(".")
        config[section][field] = value
      if kind == "ppo":  # The quickstart's budget, the seeds as one program.
        if not smoke:
          config.train.steps = config.train.eval_every = config.train.checkpoint_every = 30
          config.train.log_every = 5
        config.ppo.iterations_per_call = 1 if smoke else 5
        config.train.seeds = seeds
        runs.append((name, config))
      else:
        config.seed = seed
        if not smoke:  # One evaluation, at the end of the epoch (the loop evaluates the last step always).
          config.train.eval_every = config.train.checkpoint_every = 10_000
        runs.append((f"{name}_s{seed}", config))
  return runs


def _seed_values(summary, key):
  """The per-seed values of a summary key: its `/seeds` list (train.seeds), else the one value."""
  if f"{key}/seeds" in summary:
    return [float(v) for v in summary[f"{key}/seeds"]]
  value = summary.get(key)
  return [] if value is None else [float(value)]


def method_figures(named):
  """{method: {key: (mean, sd over seeds, seeds)}} for the COLUMNS keys, DPO's per-seed runs pooled."""
  pooled = {}
  for name, summary in named:
    method = name.rsplit("_s", 1)[0] if name.rsplit("_s", 1)[-1].isdigit() else name
    for key in COLUMNS:
      pooled.setdefault(method, {}).setdefault(key, []).extend(_seed_values(summary, key))
  stat = lambda v: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
  return {m: {k: stat(v) for k, v in keys.items() if v} for m, keys in pooled.items()}


def _baselines(workdir, named):
  """(SFT figures, SFT at T 0.5 figures, best-of-n rows) from the first PPO run's summary and its reward run."""
  for name, summary in named:
    if "sft/gold/all" in summary and "sft_t0.5/gold/all" in summary:
      break
  else:
    return None, None, []
  sft = {"gold": summary["sft/gold/all"], "kl": 0.0, "rm": summary.get("sft/rm_score")}
  cold = {"gold": summary["sft_t0.5/gold/all"], "kl": summary["sft_t0.5/kl"], "rm": summary.get("sft_t0.5/rm_score")}
  bon = []
  config_path = os.path.join(workdir, name, "config.json")
  reward_from = json.load(open(config_path))["ppo"]["reward_from"] if os.path.exists(config_path) else ""
  reward_summary = os.path.join(reward_from, "summary.json")
  if reward_from and os.path.exists(reward_summary):
    rs = json.load(open(reward_summary))
    n = 1
    while f"best_of_n/{n}/gold" in rs:
      bon.append({"n": n, "kl": rs[f"best_of_n/{n}/kl_bound"], "gold": rs[f"best_of_n/{n}/gold"],
                  "oracle": rs[f"best_of_n/{n}/oracle_gold"], "rm": rs.get(f"best_of_n/{n}/rm_score")})
      n *= 2
  return sft, cold, bon


def report(arg, workdir, named):
  """frontier.png and frontier.md from the runs' summaries (module docstring)."""
  figures = method_figures(named)
  sft, cold, bon = _baselines(workdir, named)
  fig, axes = new_figure(1, 2, (13.0, 5.0))
  for ax, key, label in ((axes[0, 0], "eval/gold/all", "held-out gold"), (axes[0, 1], "eval/rm_score", "RM score")):
    for i, (method, f) in enumerate(figures.items()):
      if key in f and "eval/kl" in f:
        (x, xs, _), (y, ys, n) = f["eval/kl"], f[key]
        ax.errorbar([x], [y], xerr=[xs], yerr=[ys], fmt="o", color=f"C{i % 10}", capsize=3,
                    label=f"{method} ({n} seed{'s' * (n > 1)})")
    short = "gold" if key == "eval/gold/all" else "rm"
    if bon and all(row[short] is not None for row in bon):
      ax.plot([r["kl"] for r in bon], [r[short] for r in bon], "k--", marker="s", ms=4,
              label="best-of-n by the RM (n = 1, 2, 4, 8; x = the KL bound)")
      if short == "gold":
        ax.plot([r["kl"] for r in bon], [r["oracle"] for r in bon], ":", color="grey", marker="s", ms=4,
                label="best-of-n by gold (the oracle)")
    for point, name, marker in ((sft, "SFT", "*"), (cold, "SFT at T 0.5", "P")):
      if point and point[short] is not None:
        ax.plot([point["kl"]], [point[short]], marker, color="k", ms=10, label=name)
    ax.set(xlabel="KL to SFT (nats per answer)", ylabel=label, title=f"{label} against KL, 250 held-out prompts")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7, loc="upper right")
  save_figure(fig, os.path.join(workdir, "frontier.png"))
  fmt = lambda f, key: "-" if key not in f else (f"{f[key][0]:.3f} +- {f[key][1]:.3f}" if f[key][2] > 1
                                                 else f"{f[key][0]:.3f}")
  head = ["method", "seeds", "gold", "KL", "RM score", "win rate (gold)", *TASKS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, f in figures.items():
    keys = ("eval/gold/all", "eval/kl", "eval/rm_score", "eval/win_rate_gold", *(f"eval/gold/{t}" for t in TASKS))
    seeds = f["eval/gold/all"][2] if "eval/gold/all" in f else 0
    lines.append("| " + " | ".join([method, str(seeds), *(fmt(f, k) for k in keys)]) + " |")
  for point, name in ((sft, "SFT"), (cold, "SFT at T 0.5")):
    if point:
      lines.append(f"| {name} | - | {point['gold']:.3f} | {point['kl']:.3f} | "
                   f"{'-' if point['rm'] is None else format(point['rm'], '.3f')} | - |" + " - |" * len(TASKS))
  for row in bon:
    if row["n"] > 1:
      lines.append(f"| best of {row['n']} (RM; gold's own pick {row['oracle']:.3f}) | - | {row['gold']:.3f} | "
                   f"<= {row['kl']:.3f} | " + ("-" if row["rm"] is None else f"{row['rm']:.3f}") + " | - |"
                   + " - |" * len(TASKS))
  with open(os.path.join(workdir, "frontier.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  if any(math.isnan(v[0]) for fig_ in figures.values() for v in fig_.values()):
    print("warning: some figures are NaN (a run without an evaluation?)")
