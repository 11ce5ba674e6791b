"""Self-consistency: the majority vote by hand, its n-of-N estimate against a brute-force NumPy reference,
toyworld's final answers, and the vote as a mode of the evaluators and of the sample tool."""

import numpy as np
import pytest

from rlhf_jax.data import toyworld
from rlhf_jax.eval import gold as gold_eval
from rlhf_jax.eval.self_consistency import generic_answer, majority, majority_of_n


def test_majority_by_hand():
  assert majority(["7", "8", "7", "9"], [-1.0, -0.1, -2.0, -0.5]) == 0  # "7" twice; its likelier sample.
  assert majority(["7", "8", "8", "7"], [-3.0, -2.0, -0.5, -1.0]) == 2  # A 2-2 tie: the likeliest sample's group.
  assert majority([None, None, "5"], [-0.1, -0.2, -9.0]) == 2  # No answer never wins a vote...
  assert majority([None, None], [-2.0, -1.0]) == 1  # ... unless nobody answers: the likeliest sample.
  assert majority(["a"], [0.0]) == 0
  with pytest.raises(ValueError, match="as many log-probs as answers"):
    majority(["a", "b"], [0.0])


def test_majority_of_n_matches_brute_force():
  rng = np.random.default_rng(0)
  answers = rng.integers(0, 3, (20, 8)).tolist()
  log_probs, values = rng.normal(size=(20, 8)), rng.uniform(size=(20, 8))
  np.testing.assert_allclose(majority_of_n(answers, log_probs, values, 1), values.mean(1))
  for n in (2, 4, 8):
    expected = np.zeros(20)
    for p in range(20):
      kept = []
      for g in range(0, 8, n):
        counts = np.bincount(answers[p][g:g + n], minlength=3)
        tied = [a for a in range(3) if counts[a] == counts.max()]
        # The tied answer holding the likeliest sample, and that sample.
        best = max((i for i in range(g, g + n) if answers[p][i] in tied), key=lambda i: log_probs[p, i])
        kept.append(best)
      expected[p] = values[p, kept].mean()
    np.testing.assert_allclose(majority_of_n(answers, log_probs, values, n), expected)
  with pytest.raises(ValueError, match="n=3 needs n to divide the 8 samples"):
    majority_of_n(answers, log_probs, values, 3)


def test_final_answers():
  world = toyworld.make_world(0)
  rng = np.random.default_rng(0)
  sums = toyworld.sample_instances(world, 40, seed=0)
  arithmetic = next(i for i in sums if i.task == "arithmetic")
  lists = next(i for i in sums if i.task == "list")
  repeat = next(i for i in sums if i.task == "repeat")
  r = str(toyworld.ArithmeticTask.result(arithmetic.args))
  same = [f"{r} .", f"the answer is {r} .", f"sure ! here is my answer : {r} ."]
  assert {toyworld.final_answer(arithmetic, t) for t in same} == {r}
  assert toyworld.final_answer(arithmetic, "no idea .") is None and toyworld.final_answer(arithmetic, "") is None
  assert toyworld.final_answer(lists, "apple , pear and plum .") == toyworld.final_answer(lists, "plum , apple , pear")
  reference = toyworld.TASKS["repeat"].reference(world, repeat, rng)
  assert toyworld.final_answer(repeat, reference) == tuple(repeat.args["words"])
  assert generic_answer("so it is 12 , not 13 .") == "13" and generic_answer("  Yes  please . ") == "yes please"
  assert generic_answer(" . ") is None


def test_keep_majority_keeps_the_voted_answer():
  world = toyworld.make_world(0)
  inst = next(i for i in toyworld.sample_instances(world, 40, seed=1) if i.task == "arithmetic")
  r = toyworld.ArithmeticTask.result(inst.args)
  texts = [f"{r + 1} .", f"{r} .", f"the answer is {r} .", f"{r + 2} ."] * 2
  answers = gold_eval.Answers(texts=texts, ended=np.ones(8, bool), lengths=np.arange(8),
                              log_probs=np.array([-1.0, -3.0, -2.0, -0.5, -1.0, -3.0, -2.0, -0.5]))
  kept = gold_eval.keep_majority([inst, inst], answers, 4)
  assert kept.texts == [f"the answer is {r} ."] * 2  # r wins 2 votes to 1; its likelier form is kept.
  np.testing.assert_array_equal(kept.lengths, [2, 6])
  assert toyworld.gold_score(world, inst, kept.texts[0]) > toyworld.gold_score(world, inst, texts[3])
