"""The comparisons stage: the SFT policy (init_from) answers toyworld's training and held-out prompts K times
each, the simulated annotator ranks the answers, and the files go into the workdir (artifacts/comparisons.py
says what they hold). The reward stage reads them as data.path; the ablations share one set between variants.
"""

from __future__ import annotations

from rlhf_jax.artifacts import models
from rlhf_jax.artifacts.comparisons import ensure_comparisons
from rlhf_jax.errors import UserError
from rlhf_jax.stages import common
from rlhf_jax.train.loop import read_summary, write_summary

def run(config, workdir: str) -> dict:
  summary = read_summary(workdir)
  if summary is not None and summary.get("complete"):
    print(f"comparisons: already written in {workdir}; nothing to do")
    return summary
  if not config.init_from:
    raise UserError("config key 'init_from': the comparisons are sampled from an SFT model; name its workdir")
  if config.data.source != "toyworld":
    raise UserError("config key 'data.source': the comparisons stage simulates annotators, which needs "
                    "'toyworld' (for your own data, write comparison JSONL and give it to the reward stage)")
  mesh = common.make_mesh(config)
  model, params, tokenizer = models.load_pretrained(config.init_from, mesh, config.model)
  common.record_model(config, workdir, model.config)
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer)
  common.write_run_config(config, workdir)
  stats = ensure_comparisons(config, workdir, model, params, tokenizer)
  summary = {**stats, "complete": True, "wall_time_s": stats["comparisons/seconds"]}
  write_summary(workdir, summary)
  print(common.result_line("comparisons", summary, ["comparisons/train/comparisons",
                                                   "comparisons/heldout/comparisons",
                                                   "comparisons/train/sample_gold/all"]))
  return summary
