"""What the experiment files share: the check of the variant `file.py:ARG` names, and the smoke stages' common
evaluation. Not an experiment (it has no get_config). experiments/ is not a package, so the experiment files load
it by path with rlhf_jax.config.load_module, as they load each other.
"""


def parse_variants(arg, *allowed, combine=False) -> frozenset:
  """The variants `arg` names: none (None), one of `allowed`, or with `combine` several joined by commas.

  Anything else raises a ValueError naming it, which load_config turns into one line naming the file.
  """
  names = (arg.split(",") if combine else [arg]) if arg else []
  unknown = [name for name in names if name not in allowed]
  if unknown:
    expected = ", ".join(allowed) + (", several of them (comma-separated)" if combine else "") + " or nothing"
    raise ValueError(f"unknown variant {','.join(unknown)!r}; expected {expected}")
  return frozenset(names)


def smoke_evaluation(config) -> None:
  """The held-out evaluation of every smoke stage (SFT, reward, PPO): 8 prompts, answers of up to 8 tokens in
  one batch. The same settings in each stage give the same answers from the same model (eval/gold.py keys
  them by prompt and sampling.eval_seed): PPO's SFT baseline is the SFT stage's own figure (tests/test_report.py)."""
  config.toyworld.num_eval_prompts = 8
  config.sampling.batch_size = 8
  config.sampling.max_new_tokens = 8
