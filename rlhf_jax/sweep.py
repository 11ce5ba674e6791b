"""Run the variations an ablation file lists, and tabulate them.

  python -m rlhf_jax.sweep experiments/ablations/NAME.py[:ARG] --workdir DIR [--config.a.b=value ...]

An ablation file defines
  sweep(arg, workdir) -> [(name, config), ...]   the runs, in order, each into DIR/name; a run may read an
                                                 earlier one's output (shared comparison data, say);
  COLUMNS = ("key", ...)                         summary keys of the results table; a run is a row when its
                                                 summary has the first of them;
  report(arg, workdir, [(name, summary), ...])   optional: the ablation's own figures and tables, drawn from
                                                 the runs' summaries after the table is written.
The overrides apply to every run (e.g. --config.init_from=runs/sft). Each run resumes like any other and a
finished one is skipped, so an interrupted sweep is continued by running the same command again. The table
goes to DIR/results.csv and DIR/results.md (with each run's wall time), and DIR/results.png draws it: one
panel per numeric column, a bar per run. A run with `train.seeds` > 1 reports means over its seeds; their
spread goes into a `<column>/seed_std` column next to each column and into error bars in the plot.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from typing import Optional, Sequence

import jax

from rlhf_jax import compile_cache
from rlhf_jax import config as config_lib
from rlhf_jax import orchestrate
from rlhf_jax.errors import Preempted, UserError
from rlhf_jax.eval.report import new_figure, save_figure


def run_sweep(spec: str, workdir: str, overrides: Sequence[str] = ()) -> list[dict]:
  """Runs every variation of the ablation `spec` (path[:arg]) into `workdir`; returns the table's rows."""
  path, _, arg = spec.partition(":")
  module = config_lib.load_module(path, "ablation")
  for attr in ("sweep", "COLUMNS"):
    if not hasattr(module, attr):
      raise UserError(f"{path}: an ablation file defines sweep(arg, workdir) and COLUMNS; {attr} is missing")
  try:
    runs = module.sweep(arg or None, workdir)
  except (ValueError, KeyError) as e:
    raise UserError(f"{path}: sweep({arg or None!r}) failed: {e}") from None
  runs = [(name, orchestrate.prepare(config, overrides), os.path.join(workdir, name)) for name, config in runs]
  announce = lambda i, name, config, run_dir: print(f"sweep {path}: run {name} ({config.stage}) -> {run_dir}",
                                                    flush=True)
  summaries = orchestrate.run_in_order(runs, announce)
  named = [(name, summary) for (name, _, _), summary in zip(runs, summaries)]
  rows = table_rows(named, module.COLUMNS)
  if jax.process_index() == 0:  # One table, written by one process.
    write_table(workdir, rows)
    if hasattr(module, "report"):  # The ablation's own figures and tables, from every run's summary.
      module.report(arg or None, workdir, named)
  return rows


def table_rows(summaries: Sequence[tuple[str, dict]], columns: Sequence[str]) -> list[dict]:
  """One row per run whose summary has the first column: the run's name, the columns and its wall time. A
  column that some run measured over several seeds (`train.seeds`) is followed by `<column>/seed_std`."""
  spread = {key for key in columns if any(f"{key}/seed_std" in summary for _, summary in summaries)}
  keys = [k for key in columns for k in ((key, f"{key}/seed_std") if key in spread else (key,))]
  keys = list(dict.fromkeys(keys))  # A spread that COLUMNS also lists appears once.
  return [{"run": name, **{k: summary.get(k, float("nan")) for k in keys},
           "wall_time_s": summary.get("wall_time_s", float("nan"))}
          for name, summary in summaries if columns[0] in summary]


def write_table(workdir: str, rows: list[dict]) -> None:
  if not rows:
    return
  columns = list(rows[0])
  with open(os.path.join(workdir, "results.csv.tmp"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(os.path.join(workdir, "results.csv.tmp"), os.path.join(workdir, "results.csv"))
  fmt = lambda v: v if isinstance(v, str) else ("-" if v is None or (isinstance(v, float) and math.isnan(v))
                                                else f"{v:.4g}")
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot_table(os.path.join(workdir, "results.png"), rows, columns[1:-1])
  print("\n".join(lines))


def plot_table(path: str, rows: list[dict], columns: Sequence[str]) -> None:
  """Small multiples of the table: a panel per numeric column (its own scale), a bar per run, with an error
  bar of one standard deviation over seeds where the table has `<column>/seed_std`; a missing or NaN value
  leaves its bar out and says "n/a"."""
  numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  columns = [c for c in columns if any(numeric(row.get(c)) for row in rows) and not c.endswith("/seed_std")]
  if not columns:
    return
  names = [str(row["run"]) for row in rows]
  cols = min(3, len(columns))
  nrows = -(-len(columns) // cols)
  fig, axes = new_figure(nrows, cols, (4.2 * cols, 0.9 + (2.0 + 0.25 * len(rows)) * nrows))
  for ax, column in zip(axes.flat, columns):
    values = [float(row[column]) if numeric(row.get(column)) else math.nan for row in rows]
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    spread = [row.get(f"{column}/seed_std") for row in rows]
    spread = [float(e) if numeric(e) and math.isfinite(e) and math.isfinite(v) else 0.0 for e, v in zip(spread, values)]
    bars = ax.barh(range(len(rows)), finite, xerr=spread if any(spread) else None, capsize=3,
                   color=[f"C{i % 10}" for i in range(len(rows))])
    for bar, v, e in zip(bars, values, spread):
      label = (f"{v:.4g}" + (f" +- {e:.2g}" if e else "")) if math.isfinite(v) else "n/a"
      ax.annotate(label, (bar.get_width() + e, bar.get_y() + bar.get_height() / 2),
                  xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()  # Runs top to bottom in table order.
    ax.set_title(column, fontsize=9)
    ax.margins(x=0.25)
  for ax in list(axes.flat)[len(columns):]:
    ax.set_visible(False)
  save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.sweep", description=__doc__.split("\n\n")[0])
  parser.add_argument("ablation", help="ablation file, path/to/NAME.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="directory for the sweep's runs and table")
  try:
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    compile_cache.enable()  # Every run of a sweep compiles the same programs (rlhf_jax/compile_cache.py).
    run_sweep(args.ablation, args.workdir, config_lib.parse_overrides(rest))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except Preempted as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum
  return 0


if __name__ == "__main__":
  sys.exit(main())
