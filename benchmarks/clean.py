"""Near-duplicate removal (rlhf_jax/data/clean.py) on a corpus with planted duplicates: precision and recall
against the exact Jaccard similarity, by how much a copy was edited, and documents per second.

Command:  python benchmarks/clean.py [--docs N] [--words W] [--threshold T]

The corpus: N originals of W words drawn from a 20,000-word vocabulary (Zipf-like: word k with weight
1 / (k + 10)), each followed, for a third of them, by an exact copy (different case and spacing), and for
another third by a copy with each word replaced at one of the edit rates 0.5%, 1%, 2%, 4%, 8%, 16%, shuffled
into the corpus. Truth for a copy: the exact Jaccard similarity of its 5-gram shingle set with its
original's (`clean.jaccard`) is at least the threshold. Precision: of the copies the near-duplicate step
removed, the fraction whose truth says duplicate; recall: of those, the fraction it removed; also per edit
rate, with the mean true Jaccard. Timing: `clean.clean_documents` over the whole corpus (quality, exact,
MinHash + LSH), one run, and the machine's other load during it (machine.ForeignLoad).
Measured: README's data-cleaning paragraph. Last line: `BENCH clean key=value ...`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from machine import ForeignLoad, cpu_model
from rlhf_jax.data import clean

RATES = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def corpus(rng, n, length, vocab=20_000):
  weights = 1.0 / (np.arange(vocab) + 10.0)
  weights /= weights.sum()
  draw = lambda size: [f"w{t}" for t in rng.choice(vocab, size=size, p=weights)]
  originals = [" ".join(draw(length)) for _ in range(n)]
  docs, copies = list(originals), []  # copies: (index in docs, original index, edit rate or None = exact)
  for i, text in enumerate(originals):
    kind = i % 3
    if kind == 0:
      docs.append("  ".join(text.upper().split()))
      copies.append((len(docs) - 1, i, None))
    elif kind == 1:
      rate = RATES[(i // 3) % len(RATES)]
      words = [w if rng.random() >= rate else draw(1)[0] for w in text.split()]
      docs.append(" ".join(words))
      copies.append((len(docs) - 1, i, rate))
  # Shuffle the copies among the originals, each copy after its original (the first occurrence is kept).
  order = list(range(n))
  for index, original, _ in copies:
    order.insert(order.index(original) + 1 + int(rng.integers(0, 3)), index)
  position = {doc: p for p, doc in enumerate(order)}
  return [docs[j] for j in order], [(position[c], position[o], rate) for c, o, rate in copies]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--docs", type=int, default=6000)
  parser.add_argument("--words", type=int, default=200)
  parser.add_argument("--threshold", type=float, default=0.8)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  docs, copies = corpus(rng, args.docs, args.words)
  settings = clean.CleanSettings(threshold=args.threshold)
  load = ForeignLoad()
  started = time.perf_counter()
  kept, counts = clean.clean_documents(docs, settings)
  seconds = time.perf_counter() - started
  foreign = load.cores() or 0.0  # 0 where /proc/stat cannot say.
  kept = set(kept)
  near = [(c, o, r) for c, o, r in copies if r is not None]
  truth = {c: clean.jaccard(docs[c], docs[o], settings.shingle) for c, o, _ in near}
  removed = {c for c, _, _ in near if c not in kept}
  positive = {c for c, j in truth.items() if j >= settings.threshold}
  precision = len(removed & positive) / max(len(removed), 1)
  recall = len(removed & positive) / max(len(positive), 1)
  print(f"{cpu_model()}; {len(docs)} documents of {args.words} words; other processes used {foreign:.2f} cores")
  print(f"counts: {counts}")
  print("edit rate | copies | mean true Jaccard | truly >= threshold | removed")
  for rate in RATES:
    group = [c for c, _, r in near if r == rate]
    print(f"{rate:.3f} | {len(group)} | {np.mean([truth[c] for c in group]):.3f} | "
          f"{sum(c in positive for c in group)} | {sum(c in removed for c in group)}")
  exact_removed = sum(c not in kept for c, _, r in copies if r is None)
  print(f"exact copies removed {exact_removed} of {sum(r is None for _, _, r in copies)}; near duplicates: "
        f"precision {precision:.3f}, recall {recall:.3f} ({len(positive)} true, {len(removed)} removed); "
        f"{seconds:.1f} s, {len(docs) / seconds:.0f} documents/s")
  print(f"BENCH clean docs={len(docs)} words={args.words} threshold={args.threshold} precision={precision:.4f} "
        f"recall={recall:.4f} seconds={seconds:.2f} docs_per_s={len(docs) / seconds:.1f} foreign_cores={foreign:.2f}")


if __name__ == "__main__":
  main()
