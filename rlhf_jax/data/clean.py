"""Pretraining data cleaning: quality filters, exact and near-duplicate removal, before the pretraining stage.

  python -m rlhf_jax.data.clean IN OUT.jsonl [--threshold 0.8] [--num-perm 128] [--shingle 5] [...]

IN is any pretraining source the stages read (data/sources.py: a .txt file, a directory of .txt files, one
document each, JSONL {"text"}, ArrayRecord, tfds:NAME/SPLIT); OUT is JSONL {"text"} (what
`--config.data.path=OUT.jsonl` then pretrains on), written whole to a temporary file and renamed, with
OUT.stats.json beside it: how many documents each step removed, and the seconds. Documents keep their order;
of several duplicates the first is kept. The steps, in order:

1. Quality (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
   appendix A's MassiveText filters, three of them): a document goes when it has fewer than `min_words`
   words; when more than `max_symbol_ratio` of its non-space characters are neither letters nor digits; or
   when more than `max_dup_line_fraction` of its non-empty lines repeat an earlier line of the document.
2. Exact duplicates: the same text after lower-casing and collapsing whitespace (BLAKE2b of it).
3. Near duplicates (Broder 1997's resemblance; GPT-3's data, Brown et al. 2020 appendix A, and the Pile):
   the Jaccard similarity of two documents' sets of word `shingle`-grams, estimated by MinHash with
   `num_perm` permutations and searched by locality-sensitive hashing (the `datasketch` library's MinHash and
   MinHashLSH, its bands and rows chosen for `threshold`); a document goes when an earlier kept one's
   estimated Jaccard is at least `threshold` (the LSH candidates are checked against the estimate, so a
   candidate below it stays). A document shorter than `shingle` words is one shingle.

`clean_documents` is the same as a function of a list of strings. Nothing here loads pickles or runs data.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Optional

from rlhf_jax.data import sources
from rlhf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class CleanSettings:
  """The thresholds of each step (module docstring); every one is a flag of the command."""
  min_words: int = 5
  max_symbol_ratio: float = 0.3
  max_dup_line_fraction: float = 0.3
  threshold: float = 0.8
  num_perm: int = 128
  shingle: int = 5
  seed: int = 1  # The MinHash permutations' seed.

  def check(self) -> "CleanSettings":
    for name, low, high in (("max_symbol_ratio", 0.0, 1.0), ("max_dup_line_fraction", 0.0, 1.0),
                            ("threshold", 0.0, 1.0)):
      value = getattr(self, name)
      if not low < value <= high:
        raise UserError(f"--{name.replace('_', '-')} must be in ({low}, {high}], got {value}")
    for name in ("num_perm", "shingle"):
      if getattr(self, name) < 1:
        raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
    if self.min_words < 0:
      raise UserError(f"--min-words must be >= 0, got {self.min_words}")
    return self


_SPACE = re.compile(r"\s+")


def words(text: str) -> list[str]:
  return text.split()


def symbol_ratio(text: str) -> float:
  """The fraction of non-space characters that are neither letters nor digits (0 for an empty text)."""
  chars = [c for c in text if not c.isspace()]
  return sum(not c.isalnum() for c in chars) / len(chars) if chars else 0.0


def dup_line_fraction(text: str) -> float:
  """The fraction of non-empty lines (stripped) that repeat an earlier line of the text."""
  seen, repeats, total = set(), 0, 0
  for line in text.splitlines():
    line = line.strip()
    if not line:
      continue
    total += 1
    repeats += line in seen
    seen.add(line)
  return repeats / total if total else 0.0


def quality_reason(text: str, settings: CleanSettings) -> Optional[str]:
  """Why the quality step drops `text` ("min_words", "symbol_ratio", "dup_lines"), or None to keep it."""
  if len(words(text)) < settings.min_words:
    return "min_words"
  if symbol_ratio(text) > settings.max_symbol_ratio:
    return "symbol_ratio"
  if dup_line_fraction(text) > settings.max_dup_line_fraction:
    return "dup_lines"
  return None


def exact_key(text: str) -> bytes:
  """The exact-duplicate key: BLAKE2b of the text lower-cased with its whitespace collapsed."""
  return hashlib.blake2b(_SPACE.sub(" ", text.lower()).strip().encode("utf-8"), digest_size=16).digest()


def shingles(text: str, n: int) -> list[bytes]:
  """The distinct word n-grams of the lower-cased text, as UTF-8 bytes (the whole text when shorter than n)."""
  w = words(text.lower())
  grams = {" ".join(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))}
  return [g.encode("utf-8") for g in sorted(grams)]


def jaccard(a: str, b: str, n: int) -> float:
  """The exact Jaccard similarity of two texts' shingle sets (what MinHash estimates)."""
  sa, sb = set(shingles(a, n)), set(shingles(b, n))
  return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def clean_documents(docs: Sequence[str], settings: CleanSettings = CleanSettings()) -> tuple[list[int], dict]:
  """(indices of the documents kept, in order; counts of what each step removed)."""
  from datasketch import MinHash, MinHashLSH  # Imported here: the stages never need it.

  settings.check()
  counts = {"documents": len(docs), "min_words": 0, "symbol_ratio": 0, "dup_lines": 0, "exact_duplicates": 0,
            "near_duplicates": 0}
  survivors, seen = [], set()
  for i, text in enumerate(docs):
    reason = quality_reason(text, settings)
    if reason is not None:
      counts[reason] += 1
      continue
    key = exact_key(text)
    if key in seen:
      counts["exact_duplicates"] += 1
      continue
    seen.add(key)
    survivors.append(i)
  hashes = MinHash.bulk((shingles(docs[i], settings.shingle) for i in survivors), num_perm=settings.num_perm,
                        seed=settings.seed)
  lsh = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
  kept = {}  # Index -> MinHash of every document kept so far (what LSH's candidates are checked against).
  for i, minhash in zip(survivors, hashes):
    if any(minhash.jaccard(kept[j]) >= settings.threshold for j in lsh.query(minhash)):
      counts["near_duplicates"] += 1
      continue
    lsh.insert(i, minhash, check_duplication=False)
    kept[i] = minhash
  counts["kept"] = len(kept)
  return list(kept), counts


def read_documents(path: str) -> list[str]:
  """The documents of a pretraining source (data/sources.py), all of them (bad records stop the command)."""
  source = sources.open_source(path, "pretrain")
  return [source[i]["text"] for i in range(len(source))]


def write_jsonl(path: str, texts: Iterable[str]) -> None:
  """{"text"} lines to `path`, written to a temporary file and renamed: a crash leaves no half file."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for text in texts:
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def run(source: str, out: str, settings: CleanSettings) -> dict:
  """Cleans `source` into `out` (JSONL) and OUT.stats.json; returns the statistics."""
  if not out.endswith(".jsonl"):
    raise UserError(f"{out}: the output is JSONL {{\"text\"}}; name it NAME.jsonl")
  settings.check()
  if os.path.abspath(out) == os.path.abspath(source):
    raise UserError(f"{out}: the output would overwrite the input")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise UserError(f"{out}: no such directory {parent}")
  started = time.perf_counter()
  docs = read_documents(source)
  read_s = time.perf_counter() - started
  kept, counts = clean_documents(docs, settings)
  seconds = time.perf_counter() - started
  write_jsonl(out, (docs[i] for i in kept))
  stats = {**counts, "settings": dataclasses.asdict(settings), "read_s": read_s, "seconds": seconds,
           "documents_per_s": len(docs) / seconds if seconds else 0.0}
  with open(out + ".stats.json.tmp", "w") as f:
    json.dump(stats, f, indent=1)
  os.replace(out + ".stats.json.tmp", out + ".stats.json")
  return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlhf_jax.data.clean", description=__doc__.split("\n\n")[0])
  parser.add_argument("source", help="pretraining text: .txt, a directory of .txt, JSONL {\"text\"}, ...")
  parser.add_argument("out", help="the cleaned documents, OUT.jsonl (and OUT.jsonl.stats.json)")
  defaults = CleanSettings()
  for field in dataclasses.fields(CleanSettings):
    default = getattr(defaults, field.name)
    parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  settings = CleanSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CleanSettings)})
  try:
    stats = run(args.source, args.out, settings)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  removed = ", ".join(f"{k} {stats[k]}" for k in ("min_words", "symbol_ratio", "dup_lines", "exact_duplicates",
                                                  "near_duplicates"))
  print(f"clean: {stats['documents']} documents -> {stats['kept']} kept ({removed} removed) in "
        f"{stats['seconds']:.1f} s, {stats['documents_per_s']:.0f} documents/s -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
