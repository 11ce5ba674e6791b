"""Talk to a chat model, turn by turn.

  python -m rlhf_jax.chat --workdir DIR [--system "..."] [--temperature 0.7]

Each line you type is a user turn; the model's answer is printed and kept in the conversation. Type /reset to
start over and /quit (or end the input) to leave.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from rlhf_jax.errors import UserError
from rlhf_jax.sample import Sampler, add_sampling_args


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.chat", description=__doc__.split("\n\n")[0])
  add_sampling_args(parser)
  parser.add_argument("--system", default="", help="a system turn to start the conversation with")
  args = parser.parse_args(argv)
  try:
    sampler = Sampler(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  start = [{"role": "system", "content": args.system}] if args.system else []
  messages = list(start)
  interactive = sys.stdin.isatty()
  if interactive:
    print("chat with the model; /reset starts over, /quit leaves")
  while True:
    if interactive:
      print("you> ", end="", flush=True)
    line = sys.stdin.readline()
    if not line or line.strip() == "/quit":
      return 0
    line = line.rstrip("\n")
    if line.strip() == "/reset":
      messages = list(start)
      print("(conversation reset)")
      continue
    messages.append({"role": "user", "content": line})
    reply = sampler.answer(messages)[0]
    messages.append({"role": "assistant", "content": reply})
    print(f"assistant> {reply}", flush=True)


if __name__ == "__main__":
  sys.exit(main())
