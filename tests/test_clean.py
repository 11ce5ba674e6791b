"""Pretraining data cleaning (rlhf_jax/data/clean.py): each quality filter by hand, exact duplicates up to
case and whitespace, near duplicates against the exact Jaccard similarity, and the command's files and errors."""

import json

import numpy as np
import pytest

from rlhf_jax.data import clean, sources


def test_quality_filters_by_hand():
  s = clean.CleanSettings(min_words=3, max_symbol_ratio=0.3, max_dup_line_fraction=0.3)
  assert clean.quality_reason("two words", s) == "min_words"
  assert clean.symbol_ratio("ab !!") == pytest.approx(0.5) and clean.symbol_ratio("   ") == 0.0
  assert clean.quality_reason("a b c ## $$ %%", s) == "symbol_ratio"  # 6 symbols of 9 characters.
  text = "one line here\nanother line\none line here\none line here\n\n"
  assert clean.dup_line_fraction(text) == pytest.approx(2 / 4)  # The blank line does not count.
  assert clean.quality_reason(text, s) == "dup_lines"
  assert clean.quality_reason("a perfectly ordinary sentence , with a comma .", s) is None


def test_exact_duplicates_up_to_case_and_whitespace():
  docs = ["The cat sat on the mat today .", "the  cat sat on\nthe mat TODAY .", "a different document here ok"]
  kept, counts = clean.clean_documents(docs)
  assert kept == [0, 2] and counts["exact_duplicates"] == 1 and counts["kept"] == 2


def _corpus(rng, num_base, length, vocab):
  return [" ".join(f"w{t}" for t in rng.integers(0, vocab, size=length)) for _ in range(num_base)]


def _edit(rng, text, rate, vocab):
  """Each word replaced by a random one with probability `rate`."""
  return " ".join(f"w{rng.integers(0, vocab)}" if rng.random() < rate else w for w in text.split())


def test_near_duplicates_against_the_exact_jaccard():
  """Planted copies of earlier documents: those whose shingle sets are at least 0.9 similar to their original
  (by the exact Jaccard) are all removed, those at most 0.6 similar all kept; the first of each pair stays."""
  rng = np.random.default_rng(0)
  base = _corpus(rng, 40, 120, 5000)
  copies = [_edit(rng, text, rate, 5000) for text, rate in zip(base, [0.008] * 20 + [0.08] * 20)]
  docs = base + copies
  settings = clean.CleanSettings(threshold=0.8)
  truth = [clean.jaccard(b, c, settings.shingle) for b, c in zip(base, copies)]
  kept, counts = clean.clean_documents(docs, settings)
  kept = set(kept)
  assert set(range(40)) <= kept  # Originals first: none of them goes.
  close = [40 + i for i, j in enumerate(truth) if j >= 0.9]
  far = [40 + i for i, j in enumerate(truth) if j <= 0.6]
  assert len(close) >= 10 and len(far) >= 10  # The planted edit rates give both kinds.
  assert not kept & set(close) and set(far) <= kept
  assert counts["near_duplicates"] + counts["exact_duplicates"] == 80 - len(kept)


def test_clean_command_writes_jsonl_and_stats(tmp_path, capsys):
  docs = tmp_path / "docs"
  docs.mkdir()
  texts = ["the first document is long enough .", "THE FIRST document is long   enough .", "x",
           "another good document , with words .", "$$$ %%% ^^^ &&& ***"]
  for i, text in enumerate(texts):
    (docs / f"{i}.txt").write_text(text)
  out = tmp_path / "clean.jsonl"
  assert clean.main([str(docs), str(out)]) == 0
  assert "5 documents -> 2 kept" in capsys.readouterr().out
  source = sources.open_source(str(out), "pretrain")
  assert [source[i]["text"] for i in range(len(source))] == [texts[0], texts[3]]
  stats = json.loads((tmp_path / "clean.jsonl.stats.json").read_text())
  assert (stats["exact_duplicates"], stats["min_words"], stats["symbol_ratio"], stats["kept"]) == (1, 1, 1, 2)
  assert not list(tmp_path.glob("*.tmp"))


def test_clean_command_bad_input_names_it(tmp_path, capsys):
  """A missing input, a malformed JSONL line, an output that is not .jsonl or would overwrite the input, a
  bad threshold: one error line naming it, exit 2, no output written."""
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "fine text here ok"}) + "\n{oops\n")
  out = tmp_path / "out.jsonl"
  cases = (([str(tmp_path / "missing.txt"), str(out)], "missing.txt"), ([str(bad), str(out)], "bad.jsonl:2"),
           ([str(bad), str(tmp_path / "out.txt")], "out.txt"), ([str(bad), str(bad)], "overwrite"),
           ([str(bad), str(out), "--threshold", "1.5"], "--threshold"))
  for argv, needle in cases:
    assert clean.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
  assert not out.exists()
