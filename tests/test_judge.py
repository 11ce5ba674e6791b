"""AI feedback (rlhf_jax/judge.py): the judge's probabilities are the model's own next-token probabilities
(against a plain forward pass and a NumPy softmax), swapping two answers gives exactly 1 - p, rankings follow
the expected wins with identical answers tied, long answers are shortened to fit, principles files fail with
the file and line, toyworld's judging demonstrations carry the labels their principles define, and the
stage=ai_comparisons and ppo.reward=judge runs work end to end at smoke size."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_smoke, tiny_model
from rlhf_jax import judge as judge_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.artifacts import models
from rlhf_jax.artifacts.comparisons import read_comparisons
from rlhf_jax.config import base_config, finalize
from rlhf_jax.data import toyworld
from rlhf_jax.data.pipelines import prompt_ids
from rlhf_jax.errors import UserError
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.tokenizer import CharTokenizer

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .?:,!"


def _judge(family="llama", **overrides):
  """A tiny random model (numpy draws) over a character tokenizer, as a judge with the default questions."""
  tok = CharTokenizer(list(_CHARS))
  model = Transformer(tiny_model(family, vocab_size=tok.vocab_size, **overrides))
  shapes = unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(1)
  draw = lambda path, x: np.ones(x.shape) if path[-1].key == "scale" else rng.normal(0.0, 0.3, x.shape)
  params = jax.tree_util.tree_map_with_path(lambda path, x: jnp.asarray(draw(path, x), jnp.float32), shapes)
  return judge_lib.Judge(model, params, tok, judge_lib.JudgeSpec(), mesh_lib.single_device_mesh(), chunk=8)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens):
  return model.apply({"params": params}, tokens).logits


def _label_probs(judge, text, labels):
  """The two labels' next-token log-probabilities after `text` as a user turn, from a plain forward pass of
  the whole sequence and a NumPy log-softmax: the reference the judge's one-position program must match."""
  ids = prompt_ids(judge.tokenizer, [{"role": "user", "content": text}])
  padded = np.zeros((1, 160), np.int32)  # Right padding leaves the causal model's last real position alone.
  padded[0, :len(ids)] = ids
  logits = np.asarray(_forward(judge.model, judge.params, padded)[0, len(ids) - 1], np.float64)
  log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
  return np.array([log_probs[labels[0]], log_probs[labels[1]]])


PROMPTS = ["what is 3 plus 4 ?", "name 2 fruits .", "repeat these words : cat dog .", "what is 3 plus 4 ?"]
FIRSTS = ["7 .", "apple , pear .", "cat dog .", "8 ."]
SECONDS = ["8 .", "apple , apple .", "dog cat .", "8 ."]


def test_preferences_are_the_models_probabilities_and_swapping_flips_them():
  judge = _judge()
  principles = ["rule : prefer the right answer .", "rule : prefer the short answer ."]
  p, q = judge.preference(PROMPTS, FIRSTS, SECONDS, principles)
  for n in range(len(PROMPTS)):
    for k, principle in enumerate(principles):
      for order, (a, b) in enumerate(((FIRSTS[n], SECONDS[n]), (SECONDS[n], FIRSTS[n]))):
        lp = _label_probs(judge, judge.spec.pair_text(principle, PROMPTS[n], a, b), judge.pair_ids)
        first = np.exp(lp[0]) / np.exp(lp).sum()  # P("a") renormalised over the two labels.
        np.testing.assert_allclose(q[n, k, order], first if order == 0 else 1.0 - first, atol=2e-5)
  np.testing.assert_allclose(p, q.mean(axis=(1, 2)), atol=1e-6)
  assert np.ptp(p[:3]) > 1e-3  # The random model does prefer some answers: the check above is not vacuous.
  swapped, _ = judge.preference(PROMPTS, SECONDS, FIRSTS, principles)
  np.testing.assert_allclose(swapped, 1.0 - p, atol=1e-6)
  assert abs(p[3] - 0.5) < 1e-6  # Two identical answers: no preference, whatever the position bias.


def test_ranking_follows_expected_wins_and_ties_identical_answers():
  judge = _judge()
  groups = [["7 .", "8 .", "7 .", "seven ."], ["cat dog .", "dog cat .", "cat ."]]
  prompts = ["what is 3 plus 4 ?", "repeat these words : cat dog ."]
  ranks, confidence, stats = judge.rank(prompts, groups, [judge_lib.DEFAULT_PRINCIPLE])
  for prompt, group, r, c in zip(prompts, groups, ranks, confidence):
    wins = np.zeros(len(group))
    sure = []
    for i in range(len(group)):
      for j in range(len(group)):
        if i != j:
          pij = judge.preference([prompt], [group[i]], [group[j]], [judge_lib.DEFAULT_PRINCIPLE])[0][0]
          wins[i] += pij
          if r[i] < r[j]:
            sure.append(pij)
    order = np.argsort(-wins, kind="stable")
    assert [r[i] for i in order] == sorted(r)  # Ranked by expected wins, best first.
    assert sorted(set(r)) == list(range(len(set(r))))  # Dense ranks.
    np.testing.assert_allclose(c, np.mean(sure), atol=1e-5)
    assert 0.5 <= c <= 1.0
  assert ranks[0][0] == ranks[0][2]  # The identical answers tie.
  assert len(set(ranks[0])) == 3 and len(set(ranks[1])) == 3
  assert 0.0 <= stats["order_consistency"] <= 1.0


def test_verdicts_are_log_odds_and_long_answers_are_shortened_to_fit():
  judge = _judge()
  answers = ["7 .", "8 .", "the answer is 7 ."]
  verdicts = judge.verdicts(["what is 3 plus 4 ?"] * 3, answers)
  for answer, v in zip(answers, verdicts):
    lp = _label_probs(judge, judge.spec.point_text("what is 3 plus 4 ?", answer), judge.point_ids)
    np.testing.assert_allclose(v, lp[0] - lp[1], atol=2e-5)
  short = _judge("gpt2", max_len=160)  # Learned positions: questions must fit 160 tokens (characters here).
  long_answer = " ".join(["apple"] * 40)
  fitted = short.fit(lambda a, b: short.spec.pair_text("rule : x .", "name fruits .", a, b), ("pear .", long_answer))
  assert fitted[0] == "pear ." and long_answer.startswith(fitted[1]) and len(fitted[1]) < len(long_answer)
  assert len(short.encode(short.spec.pair_text("rule : x .", "name fruits .", *fitted))) <= 160
  p, _ = short.preference(["name fruits ."], ["pear ."], [long_answer], ["rule : x ."])
  assert 0.0 < p[0] < 1.0
  with pytest.raises(UserError, match="longer than the judge's 160 positions"):
    short.fit(lambda a: "x" * 200 + a, ("pear .",))


def test_principles_file_errors_name_file_and_line(tmp_path):
  good = tmp_path / "good.txt"
  good.write_text("# comment\n\nrule : be kind .\n  rule : be brief .  \n")
  assert judge_lib.read_principles(str(good)) == ["rule : be kind .", "rule : be brief ."]
  cases = {b"rule : a .\nrule : {b} .\n": "bad.txt:2: a principle may not contain",
           b"rule : a .\n\nrule : \xff .\n": "bad.txt:3: not UTF-8",
           b"rule : a .\n" + b"x" * 301 + b"\n": "bad.txt:2: a principle of 301 characters",
           b"# only a comment\n\n": "bad.txt: no principles"}
  for content, message in cases.items():
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=message):
      judge_lib.read_principles(str(bad))
  config = base_config()
  config.judge.principles = str(tmp_path / "missing.txt")
  with pytest.raises(UserError, match="judge.principles.*no such file"):
    judge_lib.principles_of(config)
  config.judge.pair_template = "{principle} {prompt} {first}"
  with pytest.raises(UserError, match=r"judge.pair_template.*lacks \{second\}"):
    judge_lib.JudgeSpec.from_config(config.judge)
  config.judge.pair_template = base_config().judge.pair_template
  config.judge.point_labels = "yes,yes"
  with pytest.raises(UserError, match="judge.point_labels"):
    judge_lib.JudgeSpec.from_config(config.judge)
  with pytest.raises(UserError, match="judge.pair_labels.*different tokens"):
    judge_lib.label_ids(CharTokenizer(list(_CHARS)), ("ab", "ac"), "judge.pair_labels")
  config = base_config()
  config.stage = "ai_comparisons"
  with pytest.raises(UserError, match="judge.model"):
    finalize(config)


def test_toyworld_judging_labels_follow_their_principles():
  world = toyworld.make_world(0)
  inst = next(i for i in toyworld.sample_instances(world, 200, 3) if i.task == "review" and "avoid" in i.args)
  thing, avoid = inst.args["thing"], inst.args["avoid"]
  kept = f"the {thing} is lovely and nice ." if avoid not in ("lovely", "nice") else f"the {thing} is fine and good ."
  broken = f"the {thing} is {avoid} and {avoid} ."
  padded = "sure ! here is my answer : " + kept
  key = lambda answer, principle: toyworld.principle_key(world, inst, answer, principle)
  assert toyworld.constraint_broken(inst, broken) and not toyworld.constraint_broken(inst, kept)
  assert key(kept, "constraint") > key(broken, "constraint")
  assert key(kept, "filler") > key(padded, "filler")
  # Filler halves gold; breaking the constraint quarters it: "best" follows gold.
  assert key(padded, "best") > key(broken, "best")
  assert key(broken, "filler") > key(padded, "filler")  # The filler principle looks at filler first.
  pairs = toyworld.judge_pairs(world, 300, 5)
  assert {p["principle"] for p in pairs} == set(toyworld.JUDGE_PRINCIPLES)
  assert 0.4 < np.mean([p["first_better"] for p in pairs]) < 0.6
  for p in pairs:
    gold = [toyworld.gold_score(world, p["instance"], a) for a in (p["first"], p["second"])]
    if p["principle"] == "best":
      assert p["first_better"] == (gold[0] > gold[1]) and abs(gold[0] - gold[1]) >= 0.02
  verdicts = toyworld.judge_verdicts(world, 100, 5)
  for v in verdicts:
    assert v["good"] == (toyworld.gold_score(world, v["instance"], v["answer"]) >= toyworld.JUDGE_GOOD_GOLD)
  assert 0.3 < np.mean([v["good"] for v in verdicts]) < 0.7


@pytest.fixture(scope="module")
def judge_smoke(toyworld_smoke, tmp_path_factory):
  """A smoke judge: smoke pretraining with room for judging questions (192 positions), then the judge's SFT."""
  root = tmp_path_factory.mktemp("judge")
  run_smoke("toyworld_pretrain.py", root / "pretrain", "--config.model.max_len=192")
  summary = run_smoke("toyworld_judge.py", root / "judge", f"--config.init_from={root / 'pretrain'}")
  return root / "judge", summary


def test_ai_comparisons_stage_writes_comparisons_the_reward_stage_reads(toyworld_smoke, judge_smoke, tmp_path):
  workdir = tmp_path / "ai"
  summary = run_smoke("toyworld_ai_comparisons.py", workdir, f"--config.init_from={toyworld_smoke['sft'][0]}",
                      f"--config.judge.model={judge_smoke[0]}")
  train, heldout = read_comparisons(str(workdir), 0.1)
  assert summary["comparisons/train/comparisons"] == len(train) > 0 and len(heldout) > 0
  assert summary["principles"] == 3 and "judge_best_of_n/2/gold" in summary
  with open(workdir / "train.jsonl") as f:
    raw = [json.loads(line) for line in f]
  assert all(0.5 <= r["confidence"] <= 1.0 for r in raw)
  # The labels are the judge's: rank the first records again with the same judge and principles.
  config = base_config()
  config.judge.model = str(judge_smoke[0])
  judge = models.load_judge(config, mesh_lib.single_device_mesh())
  principles = judge_lib.read_principles(os.path.join(os.path.dirname(__file__), "..", "experiments",
                                                      "principles", "toyworld.txt"))
  ranks, confidence, _ = judge.rank([r["prompt"] for r in raw[:4]], [r["responses"] for r in raw[:4]], principles)
  assert ranks == [r["ranking"] for r in raw[:4]]
  np.testing.assert_allclose(confidence, [r["confidence"] for r in raw[:4]], atol=1e-4)
  # Any prompts: a prompt JSONL, its last val_fraction held out, no gold.
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"name {n} fruits ."}) + "\n" for n in range(2, 8)))
  run_smoke("toyworld_ai_comparisons.py", tmp_path / "own", f"--config.init_from={toyworld_smoke['sft'][0]}",
            f"--config.judge.model={judge_smoke[0]}", "--config.data.source=text", f"--config.data.path={prompts}",
            "--config.data.val_fraction=0.34", "--config.judge.rank=pointwise")
  train, heldout = read_comparisons(str(tmp_path / "own"), 0.1)
  assert [r["prompt"][0]["content"] for r in train + heldout] == [f"name {n} fruits ." for n in range(2, 8)]
  assert len(heldout) == 2 and all("gold" not in r for r in train)


def test_ppo_scores_rollouts_with_the_judges_normalised_log_odds(toyworld_smoke, toyworld_reward_smoke, judge_smoke,
                                                                 tmp_path):
  from rlhf_jax.config import apply_overrides, load_config
  from rlhf_jax.eval.policy import to_host
  from rlhf_jax.sampling import response_token_ids
  from rlhf_jax.stages import ppo as ppo_stage

  config = load_config(os.path.join(os.path.dirname(__file__), "..", "experiments", "toyworld_ppo.py:smoke"))
  apply_overrides(config, [f"init_from={toyworld_smoke['sft'][0]}", f"ppo.reward_from={toyworld_reward_smoke[0]}",
                           "ppo.reward=judge", f"judge.model={judge_smoke[0]}", "reward.norm_samples=16",
                           "train.batch_size=8"])
  finalize(config)
  setup = ppo_stage.build_ppo(config, str(tmp_path))
  scorer = setup.judge_reward
  assert scorer.fitted["judge/norm_samples"] == 16 and scorer.fitted["judge/raw_std"] > 0
  seen = {}

  def generate(*args):
    seen["sample"] = setup.generate(*args)
    return seen["sample"]

  def update(state, rollout, *rest):
    seen["rollout"] = rollout
    return state, {}

  step = ppo_stage.make_ppo_step(config, generate=generate, collect=setup.collect, update=update,
                                 ref_params=setup.ref_params, rm_params=setup.rm_params, rounds=None,
                                 tokenizer=setup.tokenizer, world=setup.world, train_prompts=setup.train_prompts,
                                 judge_reward=scorer)
  batch = setup.make_batch(next(setup.data()))
  step(setup.state, batch, setup.rng)
  sample = jax.tree.map(to_host, seen["sample"])
  texts = [setup.tokenizer.decode(t) for t in response_token_ids(sample)]
  asked = [setup.train_prompts.conversations[i] for i in to_host(batch["index"])]
  raw = scorer.judge.verdicts(asked, texts)
  expected = (raw - scorer.fitted["judge/raw_mean"]) / scorer.fitted["judge/raw_std"]
  expected = expected - config.ppo.unfinished_penalty * (~sample.ended)
  np.testing.assert_allclose(to_host(seen["rollout"].scores), expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(UserError, match="iterations_per_call"):
    apply_overrides(config.unlock(), ["ppo.iterations_per_call=1"])
    finalize(config)
