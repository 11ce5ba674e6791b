"""Best-of-n: the all-subsets estimator against brute-force enumeration, hand-computed values, and the CLI on
the smoke SFT and reward runs."""

import itertools
import json
import math

import numpy as np
import pytest

from rlhf_jax import best_of_n as cli
from rlhf_jax.eval import best_of_n as bon


def brute_force(pick_by, values, n):
  """Mean over every n-subset of each prompt's samples of the value of the subset's highest-scored sample
  (first in sample order on ties, as the estimator breaks them)."""
  out = []
  for s, v in zip(pick_by, values):
    picks = []
    for subset in itertools.combinations(range(len(s)), n):
      best = max(subset, key=lambda i: (s[i], i))  # Ties: the later sample sorts higher in a stable argsort.
      picks.append(v[best])
    out.append(np.mean(picks))
  return np.array(out)


def test_hand_computed_example():
  # Three answers scored 1, 2, 3 with values a, b, c: the pairs {1,2}, {1,3}, {2,3} pick b, c, c.
  a, b, c = 0.1, 0.5, 0.9
  got = bon.best_of_n(np.array([[2.0, 1.0, 3.0]]), np.array([[b, a, c]]), 2)
  np.testing.assert_allclose(got, [(b + 2 * c) / 3])
  np.testing.assert_allclose(bon.best_of_n(np.array([[2.0, 1.0, 3.0]]), np.array([[b, a, c]]), 1), [(a + b + c) / 3])
  np.testing.assert_allclose(bon.best_of_n(np.array([[2.0, 1.0, 3.0]]), np.array([[b, a, c]]), 3), [c])


@pytest.mark.parametrize("ties", [False, True])
def test_matches_enumeration_of_subsets(ties):
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(6, 7))
  if ties:
    scores = np.round(scores)  # Many equal scores.
  values = rng.uniform(size=(6, 7))
  for n in range(1, 8):
    np.testing.assert_allclose(bon.best_of_n(scores, values, n), brute_force(scores, values, n), rtol=1e-12)


def test_pick_weights_and_kl_bound():
  for num in (1, 5, 16):
    for n in range(1, num + 1):
      w = bon.pick_weights(num, n)
      assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
  assert bon.kl_bound(1) == 0.0
  assert bon.kl_bound(2) == pytest.approx(math.log(2) - 0.5)
  assert bon.kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)
  with pytest.raises(ValueError, match="n=5 with 4 samples"):
    bon.pick_weights(4, 5)


def test_oracle_pick_bounds_the_reward_models():
  rng = np.random.default_rng(1)
  gold = rng.uniform(size=(50, 8))
  noisy = gold + rng.normal(scale=0.3, size=gold.shape)
  rows = bon.best_of_n_table(noisy, gold, ["a"] * 25 + ["b"] * 25, [1, 2, 4, 8])
  assert rows[0]["gold"] == pytest.approx(gold.mean()) == pytest.approx(rows[0]["oracle_gold"])
  for row in rows:
    assert row["gold"] <= row["oracle_gold"] + 1e-12
    assert row["gold/a"] == pytest.approx(bon.best_of_n(noisy[:25], gold[:25], row["n"]).mean())
  assert rows[-1]["gold"] > rows[0]["gold"]  # A score that correlates with gold helps.


def test_cli_on_smoke_runs(toyworld_smoke, toyworld_reward_smoke, tmp_path, capsys):
  out = tmp_path / "bon.json"
  assert cli.main(["--policy", str(toyworld_smoke["sft"][0]), "--reward", str(toyworld_reward_smoke[0]),
                   "--n", "3", "--prompts", "4", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())
  assert [r["n"] for r in rows] == [1, 2, 3]
  for row in rows:
    assert 0.0 <= row["gold"] <= row["oracle_gold"] + 1e-12 <= 1.0 + 1e-12
  assert rows[0]["rm_score"] <= rows[1]["rm_score"] <= rows[2]["rm_score"]  # The max of more samples.
  # Self-consistency where n divides the 3 samples: of one sample it is the sample itself.
  assert rows[0]["vote_gold"] == pytest.approx(rows[0]["gold"]) and "vote_gold" not in rows[1]
  assert 0.0 <= rows[2]["vote_gold"] <= rows[2]["oracle_gold"] + 1e-12
  assert "gold vote" in capsys.readouterr().out


def test_cli_bad_reward_dir(toyworld_smoke, tmp_path, capsys):
  assert cli.main(["--policy", str(toyworld_smoke["sft"][0]), "--reward", str(tmp_path), "--n", "2"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(tmp_path) in err[0] and "reward" in err[0]
