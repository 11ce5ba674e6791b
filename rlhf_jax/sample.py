"""Sample from a trained model.

  python -m rlhf_jax.sample --workdir DIR --prompt "write a positive review of the lemon ." [--num 4]

DIR is any run's workdir (or a converted checkpoint holding a tokenizer). For a chat model (SFT, PPO) the prompt
is one user turn and the answer ends at the end-of-turn token; for a pretrained model, or with --raw, the
prompt is plain text that the model continues until the end-of-document token.

  --regex '-?\d+ \.'        every answer matches the regular expression in full (rlhf_jax/constrain.py)
  --choices 'yes|no'         every answer is one of the choices
  --num 16 --vote            sample 16 answers and print the majority answer (self-consistency)
  --tool calculator          run the calculator calls an answer writes, "[3+4=" -> "7]" (rlhf_jax/tools.py;
                             default: the run's sampling.tool)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from rlhf_jax.errors import UserError


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="a run's workdir (or a converted checkpoint directory)")
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
  parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
  parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
  parser.add_argument("--max-new-tokens", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                      help="int8: sample from int8 weights, a scale per output channel (model/quant.py)")
  shape = parser.add_mutually_exclusive_group()
  shape.add_argument("--regex", help="every answer matches this regular expression in full (constrain.py)")
  shape.add_argument("--choices", help="every answer is one of these, separated by '|'")
  shape.add_argument("--tool", choices=("none", "calculator"),
                     help="the tool the answers may call (tools.py); default: the run's config key sampling.tool")


class Sampler:
  """A model loaded from a workdir, ready to continue text or to answer a conversation."""

  def __init__(self, args: argparse.Namespace):
    import jax

    from rlhf_jax import mesh as mesh_lib
    from rlhf_jax.artifacts.models import load_pretrained
    from rlhf_jax.model import quant

    mesh = mesh_lib.single_device_mesh()
    self.model, self.params, self.tokenizer = load_pretrained(args.workdir, mesh)
    self.params = quant.for_sampling(self.params, args.quantize)
    if self.tokenizer is None:
      raise UserError(f"{args.workdir}: no tokenizer.model or tokenizer.json next to the checkpoint")
    stage, run_tool = None, ""
    config_path = os.path.join(args.workdir, "config.json")
    if os.path.exists(config_path):
      with open(config_path) as f:
        run_config = json.load(f)
      stage, run_tool = run_config.get("stage"), run_config.get("sampling", {}).get("tool", "")
    self.chat_model = stage not in (None, "pretrain")
    self.args = args
    self.constraint = None
    if getattr(args, "regex", None) or getattr(args, "choices", None):
      from rlhf_jax import constrain
      self.constraint = (constrain.compile_regex(args.regex, self.tokenizer) if args.regex else
                         constrain.compile_choices(args.choices.split("|"), self.tokenizer))
    from rlhf_jax import tools
    tool = getattr(args, "tool", None)
    if tool is None and not self.constraint:
      tool = run_tool
    self.tool = tools.from_name("" if tool in (None, "none") else tool, self.tokenizer)
    self._rng = jax.random.PRNGKey(args.seed)
    self._calls = 0

  def _generate(self, ids_list, stop_ids):
    """(texts, log-probabilities (N,) at the temperature) of one sample per row of `ids_list`."""
    import jax
    import numpy as np

    from rlhf_jax.sampling import generate, prompt_batch, response_token_ids
    prompt_bp, mask_bp = prompt_batch(ids_list, self.tokenizer.pad_id)
    a = self.args
    max_new = a.max_new_tokens
    cfg = self.model.config
    if cfg.position == "learned" and prompt_bp.shape[1] + max_new - 1 > cfg.max_len:
      max_new = cfg.max_len - prompt_bp.shape[1] + 1
      if max_new < 1:
        raise UserError(f"the prompt ({prompt_bp.shape[1]} tokens) does not fit model.max_len={cfg.max_len}")
      print(f"(at most {max_new} new tokens fit the model's {cfg.max_len} positions)", file=sys.stderr)
    self._calls += 1
    rng = jax.random.fold_in(self._rng, self._calls)
    out = generate(self.model, self.params, prompt_bp, mask_bp, rng, max_new_tokens=max_new,
                   temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, greedy=a.greedy, stop_ids=stop_ids,
                   pad_id=self.tokenizer.pad_id, constraint=self.constraint, tool=self.tool)
    host = jax.device_get(out)
    return ([self.tokenizer.decode(t) for t in response_token_ids(host)],
            np.sum(np.where(host.mask, host.log_probs, 0.0), axis=-1))

  def continue_text(self, text: str, num: int = 1, with_log_probs: bool = False):
    """`num` continuations of `text` (and their log-probabilities with `with_log_probs`)."""
    ids = [self.tokenizer.bos_id, *self.tokenizer.encode(text)]
    texts, log_probs = self._generate([ids] * num, stop_ids=(self.tokenizer.eos_id,))
    return (texts, log_probs) if with_log_probs else texts

  def answer(self, messages: Sequence[dict], num: int = 1, with_log_probs: bool = False):
    """`num` answers to the conversation (and their log-probabilities with `with_log_probs`)."""
    from rlhf_jax.data.pipelines import prompt_ids
    ids = list(prompt_ids(self.tokenizer, messages))
    texts, log_probs = self._generate([ids] * num, stop_ids=(self.tokenizer.end_of_turn_id, self.tokenizer.eos_id))
    return (texts, log_probs) if with_log_probs else texts


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.sample", description=__doc__.split("\n\n")[0])
  add_sampling_args(parser)
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--num", type=int, default=1, help="how many samples")
  parser.add_argument("--raw", action="store_true", help="continue the prompt as plain text, even for a chat model")
  parser.add_argument("--vote", action="store_true",
                      help="self-consistency: print only the answer whose final answer (its last number, else its "
                           "text) most of the --num samples give, ties to the likelier sample")
  args = parser.parse_args(argv)
  try:
    sampler = Sampler(args)
    if sampler.chat_model and not args.raw:
      texts, log_probs = sampler.answer([{"role": "user", "content": args.prompt}], args.num, with_log_probs=True)
    else:
      texts, log_probs = sampler.continue_text(args.prompt, args.num, with_log_probs=True)
  except (UserError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.vote:  # On the generated text alone, not the prompt it continues.
    from rlhf_jax.eval.self_consistency import generic_answer, majority
    finals = [generic_answer(t) for t in texts]
    kept = majority(finals, log_probs)
    print(f"(majority of {args.num}: {finals.count(finals[kept])} samples give {finals[kept]!r})", file=sys.stderr)
    texts = [texts[kept]]
  if not sampler.chat_model or args.raw:
    texts = [args.prompt + t for t in texts]
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f"--- sample {i + 1}")
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
