"""The reward model: its losses against pair-by-pair NumPy references, one forward per response, the
comparison encoding and truncation, the held-out metrics against hand counts and scipy, the score
normalisation, smoke runs of the reward stage on toyworld and on Anthropic HH data, and the stage built
(`build_reward`) without training or writing anything."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conftest import tiny_model
from rlhf_jax import losses, main as main_lib
from rlhf_jax.batches import RMBatch
from rlhf_jax.data import pipelines, sources, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.artifacts.models import load_pretrained
from rlhf_jax.artifacts.reward_model import load_reward_model
from rlhf_jax.stages import common, reward
from rlhf_jax.tokenizer import CharTokenizer
from rlhf_jax.train import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = "--config.train.batch_size=8"  # Splits over conftest's 8 fake devices.


def _neg_log_sigmoid(x):
  """-log sigmoid(x) = log(1 + exp(-x)), written independently of the code under test."""
  return float(np.logaddexp(0.0, -np.float64(x)))


def _strict_pairs(ranks):
  """(winner, loser) index pairs of one element: both real responses, the winner ranked strictly better."""
  k = len(ranks)
  return [(w, l) for w in range(k) for l in range(k) if ranks[w] >= 0 and ranks[l] >= 0 and ranks[w] < ranks[l]]


def _ranking_reference(scores, ranks, margin=0.0):
  """(sum over elements of the mean pair loss, elements with a pair, sum of per-element accuracy, pairs)."""
  total, count, correct, pairs = 0.0, 0, 0.0, 0
  for s, r in zip(np.asarray(scores, np.float64), ranks):
    element = _strict_pairs(r)
    if not element:
      continue
    total += np.mean([_neg_log_sigmoid(s[w] - s[l] - margin * (r[l] - r[w])) for w, l in element])
    correct += np.mean([1.0 if s[w] > s[l] else 0.5 if s[w] == s[l] else 0.0 for w, l in element])
    count += 1
    pairs += len(element)
  return total, count, correct, pairs


# ---------------------------------------------------------------------------------------------------------
# Losses.


def test_ranking_loss_is_the_mean_over_a_prompts_pairs():
  """One K=4 element: the loss is the mean of its six pair losses; one prompt in the denominator."""
  scores = np.array([[0.3, 1.2, -0.7, 0.9]], np.float32)
  ranks = np.array([[2, 0, 3, 1]], np.int32)
  pairs = _strict_pairs(ranks[0])
  assert len(pairs) == 6
  expected = np.mean([_neg_log_sigmoid(scores[0, w] - scores[0, l]) for w, l in pairs])
  total, count, aux = losses.ranking_loss(jnp.asarray(scores), jnp.asarray(ranks))
  np.testing.assert_allclose(float(total), expected, atol=1e-6, rtol=0)
  assert float(count) == 1.0 and float(aux["pairs"]) == 6.0
  # Scores order 1 > 3 > 0 > 2, ranks order 1 > 3 > 0 > 2: all six right. Swap two scores: five of six.
  assert float(aux["correct"]) == 1.0
  swapped = scores[:, [0, 3, 2, 1]]
  right = np.mean([swapped[0, w] > swapped[0, l] for w, l in pairs])
  assert right == 5 / 6
  np.testing.assert_allclose(float(losses.ranking_loss(jnp.asarray(swapped), jnp.asarray(ranks))[2]["correct"]),
                             right, atol=1e-6)


def test_ranking_loss_batch_with_padding_and_ties():
  """Mixed K (padding rank -1) and ties: each element averages its strict pairs only; an all-tied element
  adds nothing to the sum or the denominator; padding slots' scores never matter."""
  ranks = np.array([[1, 0, 2, 1],     # K=4 with a tie: 5 strict pairs.
                    [0, 0, 1, -1],    # K=3 with a tie: 2 strict pairs.
                    [0, 0, -1, -1]],  # K=2, both tied: no pair.
                   np.int32)
  scores = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  scores[1, 3] = scores[2, 2] = 50.0  # Padding slots: a huge score would dominate if it were counted.
  total, count, aux = losses.ranking_loss(jnp.asarray(scores), jnp.asarray(ranks))
  ref_total, ref_count, ref_correct, ref_pairs = _ranking_reference(scores, ranks)
  assert ref_count == 2 and ref_pairs == 7
  np.testing.assert_allclose(float(total), ref_total, atol=1e-6, rtol=0)
  assert float(count) == ref_count and float(aux["pairs"]) == ref_pairs
  np.testing.assert_allclose(float(aux["correct"]), ref_correct, atol=1e-6)
  # pair_weights marks exactly the strict pairs.
  weights = np.asarray(losses.pair_weights(jnp.asarray(ranks)))
  for b in range(3):
    assert {(int(w), int(l)) for w, l in zip(*np.nonzero(weights[b]))} == set(_strict_pairs(ranks[b]))


def test_ranking_loss_margin_grows_with_the_rank_gap():
  """margin m: the mean over pairs of -log sigmoid(r_w - r_l - m (rank_l - rank_w))."""
  ranks = np.array([[2, 0, 3, 1], [0, 1, 1, 2], [1, 0, -1, -1]], np.int32)
  scores = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
  for margin in (0.0, 0.7):
    total, count, _ = losses.ranking_loss(jnp.asarray(scores), jnp.asarray(ranks), margin=margin)
    ref_total, ref_count, _, _ = _ranking_reference(scores, ranks, margin)
    np.testing.assert_allclose(float(total), ref_total, atol=1e-5, rtol=0)
    assert float(count) == ref_count == 3
  gaps = np.asarray(losses.rank_gaps(jnp.asarray(ranks)))
  assert gaps[0, 1, 2] == 3 and gaps[0, 0, 1] == -2  # rank_j - rank_i.


def test_per_token_ranking_loss_matches_a_python_loop():
  """The aligned per-token loss against its docstring: positions aligned from each response's start, the
  shorter response holding its last score, averaged over l < max(len_w, len_l), with the threshold."""
  rng = np.random.default_rng(2)
  t = 10
  rewards = rng.normal(size=(2, 3, t)).astype(np.float32)
  start = np.array([[3, 5, 2], [4, 4, 6]], np.int32)
  end = np.array([[6, 5, 9], [8, 5, 7]], np.int32)  # Lengths 4, 1, 8 and 5, 2, 2.
  ranks = np.array([[1, 0, 2], [0, 1, -1]], np.int32)
  threshold = 0.8

  def score(b, k, l):
    return rewards[b, k, min(start[b, k] + l, end[b, k])]

  total, correct, count = 0.0, 0.0, 0
  for b in range(2):
    pair_losses, pair_right = [], []
    for w, l_ in _strict_pairs(ranks[b]):
      span = max(end[b, w] - start[b, w] + 1, end[b, l_] - start[b, l_] + 1)
      pair_losses.append(np.mean([_neg_log_sigmoid(score(b, w, i) - score(b, l_, i) - threshold)
                                  for i in range(span)]))
      pair_right.append(float(rewards[b, w, end[b, w]] > rewards[b, l_, end[b, l_]]))
    total += np.mean(pair_losses)
    correct += np.mean(pair_right)
    count += 1
  out_total, out_count, aux = losses.per_token_ranking_loss(
      jnp.asarray(rewards), jnp.asarray(start), jnp.asarray(end), jnp.asarray(ranks), threshold)
  np.testing.assert_allclose(float(out_total), total, atol=1e-5, rtol=0)
  assert float(out_count) == count == 2
  np.testing.assert_allclose(float(aux["correct"]), correct, atol=1e-6)
  aligned = np.asarray(losses.aligned_response_scores(jnp.asarray(rewards), jnp.asarray(start), jnp.asarray(end), t))
  assert aligned[0, 1].tolist() == [rewards[0, 1, 5]] * t  # A one-token response holds its only score.


# ---------------------------------------------------------------------------------------------------------
# The objective: one forward per response.


def _reward_model():
  """A tiny reward model with parameters drawn by numpy (no flax init to compile)."""
  model = Transformer(tiny_model(), heads=("reward",))
  shapes = unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(0)
  draw = lambda path, x: np.ones(x.shape) if path[-1].key == "scale" else rng.normal(0.0, 0.3, x.shape)
  return model, jax.tree_util.tree_map_with_path(lambda path, x: jnp.asarray(draw(path, x), jnp.float32), shapes)


class _Recording:
  """Delegates `apply` to a model, recording the shape of the tokens of every call."""

  def __init__(self, model):
    self.model = model
    self.shapes = []

  def apply(self, variables, tokens, *args, **kwargs):
    self.shapes.append(tuple(tokens.shape))
    return self.model.apply(variables, tokens, *args, **kwargs)


def test_rm_objective_applies_the_model_once_per_response():
  """B=2 prompts x K=4 responses are one (B*K, T) forward; the value and gradient equal a reference that
  runs the model on the two responses of every pair separately."""
  model, params = _reward_model()
  b, k, t = 2, 4, 12
  rng = np.random.default_rng(3)
  tokens = rng.integers(9, model.config.vocab_size, (b, k, t)).astype(np.int32)
  start = np.array([[4, 4, 4, 4], [3, 3, 3, 0]], np.int32)
  end = np.array([[7, 11, 5, 9], [6, 10, 3, 0]], np.int32)
  ranks = np.array([[2, 0, 3, 1], [1, 0, 1, -1]], np.int32)
  batch = RMBatch(tokens=jnp.asarray(tokens), start=jnp.asarray(start), end=jnp.asarray(end), ranks=jnp.asarray(ranks))
  recorder = _Recording(model)
  objective = steps.rm_objective(recorder, "pairwise")

  def total(p):
    loss_sum, count, _ = objective(p, batch, jax.random.PRNGKey(0))
    return loss_sum, count

  (value, count), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
  assert recorder.shapes == [(b * k, t)]  # Traced once: one forward over all B*K responses.
  assert float(count) == 2.0

  # The reference runs the model on each pair's two responses on their own (lax.map: one at a time).
  pairs = [(i, w, l) for i in range(b) for w, l in _strict_pairs(ranks[i])]
  pair_tokens = np.stack([[tokens[i, w], tokens[i, l]] for i, w, l in pairs])
  pair_end = np.array([[end[i, w], end[i, l]] for i, w, l in pairs], np.int32)
  owner = np.array([i for i, _, _ in pairs])

  def reference(p):
    def pair_loss(x):
      rewards = model.apply({"params": p}, x[0]).rewards
      return jnp.logaddexp(0.0, -(rewards[0, x[1][0]] - rewards[1, x[1][1]]))
    per_pair = jax.lax.map(pair_loss, (jnp.asarray(pair_tokens), jnp.asarray(pair_end)))
    return sum(per_pair[owner == i].mean() for i in range(b))

  ref_value, ref_grads = jax.jit(jax.value_and_grad(reference))(params)
  np.testing.assert_allclose(float(value), float(ref_value), atol=1e-5, rtol=1e-5)
  flat_ref, flat = jax.tree.leaves(ref_grads), jax.tree.leaves(grads)
  assert len(flat) == len(flat_ref) and any(float(jnp.abs(g).max()) > 1e-4 for g in flat_ref)
  for g, r in zip(flat, flat_ref):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Encoding comparisons.

_CHARS = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ?.")


def test_comparison_example_layout():
  """BOS + the prompt's chat rendering, the response, end of turn (+ the reward token) at `end`; empty
  slots are rank -1 and padding."""
  tok = _CHARS
  record = {"prompt": [{"role": "user", "content": "hi there ?"}], "responses": ["abc", "de", "fghij"],
            "ranking": [1, 0, 2]}
  prompt = [tok.bos_id, tok.role_id("user"), *tok.encode("hi there ?"), tok.end_of_turn_id, tok.role_id("assistant")]
  assert pipelines.prompt_ids(tok, record["prompt"]).tolist() == prompt
  for reward_token in (False, True):
    ex = pipelines.comparison_example(tok, record, seq_len=24, num_responses=5, reward_token=reward_token)
    assert ex["tokens"].shape == (5, 24) and ex["ranks"].tolist() == [1, 0, 2, -1, -1]
    for i, text in enumerate(record["responses"]):
      tail = [tok.end_of_turn_id] + ([tok.reward_id] if reward_token else [])
      expected = prompt + tok.encode(text) + tail
      row = ex["tokens"][i].tolist()
      assert row == expected + [tok.pad_id] * (24 - len(expected))
      assert ex["start"][i] == len(prompt) and ex["end"][i] == len(expected) - 1
      assert row[ex["end"][i]] == (tok.reward_id if reward_token else tok.end_of_turn_id)
    assert (ex["tokens"][3:] == tok.pad_id).all()
  with pytest.raises(UserError, match="reward.max_responses=2"):
    pipelines.comparison_example(tok, record, seq_len=24, num_responses=2)


@pytest.mark.parametrize("reward_token", [False, True])
def test_scored_sequence_truncation(reward_token):
  """Over a grid of prompt and response lengths: the row never exceeds seq_len; BOS and the prompt's newest
  tokens are kept, down to half the row, before the response is cut (from its end); the closing token(s)
  are always kept; nothing is cut from a row that fits."""
  tok, seq_len = _CHARS, 16
  tail = [tok.end_of_turn_id] + ([tok.reward_id] if reward_token else [])
  for prompt_len in range(1, 30):
    prompt = [tok.bos_id] + list(range(100, 100 + prompt_len - 1))
    for response_len in range(0, 30):
      response = list(range(200, 200 + response_len))
      ids, start, end = pipelines.scored_sequence(tok, np.asarray(prompt), response, seq_len, reward_token)
      ids = ids.tolist()
      kept_prompt, kept_response = ids[:start], ids[start:len(ids) - len(tail)]
      assert len(ids) <= seq_len and end == len(ids) - 1 and ids[len(ids) - len(tail):] == tail
      assert kept_prompt[0] == tok.bos_id and kept_prompt[1:] == prompt[len(prompt) - len(kept_prompt) + 1:]
      assert kept_response == response[:len(kept_response)]
      if prompt_len + response_len + len(tail) <= seq_len:
        assert ids == prompt + response + tail
      else:
        assert len(ids) == seq_len  # Cut only as much as needed.
        assert len(kept_prompt) >= min(prompt_len, seq_len // 2)
        if len(kept_response) < response_len:  # The prompt gave way first, down to half the row.
          assert len(kept_prompt) == min(prompt_len, seq_len // 2)


# ---------------------------------------------------------------------------------------------------------
# Held-out metrics and normalisation.


def test_comparison_metrics_against_hand_counts_and_scipy():
  """Label accuracy over annotated pairs, gold accuracy over pairs with a gold difference (and a clear one),
  per task; Spearman as scipy computes it; calibration bins of sigma(|d|)."""
  records = [
      {"ranking": [0, 1, 2], "gold": [0.9, 0.5, 0.1], "task": "list"},
      {"ranking": [1, 0, 1, 2], "gold": [0.3, 0.35, 0.6, 0.0], "task": "list"},
      {"ranking": [0, 1], "gold": [1.0, 0.4], "task": "review"},
      {"ranking": [1, 0], "gold": [0.2, 0.25], "task": "review"},
      {"ranking": [0, 1, 1]},  # No gold: counts for the labels only.
  ]
  scores = [np.array([2.0, 0.5, 1.0]), np.array([0.1, -0.3, 0.4, -2.0]), np.array([0.2, 0.2]),
            np.array([-1.0, 3.0]), np.array([0.0, 1.0, -0.5])]
  metrics, table = rm_eval.comparison_metrics(scores, records)

  def accuracy(diffs):
    return np.mean([1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs])

  label = [s[w] - s[l] for s, r in zip(scores, records) for w, l in _strict_pairs(r["ranking"])]
  assert metrics["eval/label_pairs"] == len(label) == 3 + 5 + 1 + 1 + 2
  np.testing.assert_allclose(metrics["eval/label_accuracy"], accuracy(label), atol=1e-12)
  for task in ("list", "review", "all"):
    inside = [(s, r) for s, r in zip(scores, records) if "gold" in r and task in (r["task"], "all")]
    diffs = [(s[i] - s[j], r["gold"][i] - r["gold"][j]) for s, r in inside
             for i in range(len(s)) for j in range(len(s)) if r["gold"][i] > r["gold"][j]]
    np.testing.assert_allclose(metrics[f"eval/gold_accuracy/{task}"], accuracy([d for d, _ in diffs]), atol=1e-12)
    clear = [d for d, gap in diffs if gap >= 0.2]
    np.testing.assert_allclose(metrics[f"eval/gold_accuracy_clear/{task}"], accuracy(clear), atol=1e-12)
    if task == "all":
      assert metrics["eval/gold_pairs_clear"] == len(clear) == 3 + 5 + 1
    pooled_scores = np.concatenate([s for s, _ in inside])
    pooled_gold = np.concatenate([r["gold"] for _, r in inside])
    np.testing.assert_allclose(metrics[f"eval/spearman/{task}"],
                               scipy.stats.spearmanr(pooled_scores, pooled_gold).statistic, atol=1e-12)
  # Calibration: every labelled pair in one bin; predicted is the bin's mean sigma(|d|).
  d = np.asarray(label)
  confidence = 1.0 / (1.0 + np.exp(-np.abs(d)))
  assert sum(row["count"] for row in table) == len(label)
  for row in table:
    last = row["high"] == table[-1]["high"]
    inside = (confidence >= row["low"]) & ((confidence < row["high"]) | last)
    assert row["count"] == inside.sum()
    if inside.any():
      np.testing.assert_allclose(row["predicted"], confidence[inside].mean(), atol=1e-12)
      np.testing.assert_allclose(row["observed"], accuracy(d[inside]), atol=1e-12)
  assert sum(row["count"] > 0 for row in table) >= 3  # The example spreads over several bins.
  ece = sum(r["count"] * abs(r["predicted"] - r["observed"]) for r in table if r["count"]) / len(label)
  np.testing.assert_allclose(metrics["eval/ece"], ece, atol=1e-12)


def test_comparison_metrics_gold_without_task():
  """A record with "gold" but no "task" (sources accept it) counts once in the pooled gold metrics, and the
  pooled Spearman is over every response with gold."""
  records = [{"ranking": [0, 1], "gold": [0.9, 0.1], "task": "a"}, {"ranking": [0, 1, 2], "gold": [0.8, 0.5, 0.1]}]
  scores = [np.array([1.0, 0.0]), np.array([0.1, 0.5, -1.0])]
  metrics, _ = rm_eval.comparison_metrics(scores, records)
  # Gold pairs: (0, 1) of the first record, right; (0, 1), (0, 2), (1, 2) of the second: wrong, right, right.
  assert metrics["eval/gold_pairs_clear"] == 4
  np.testing.assert_allclose(metrics["eval/gold_accuracy/all"], 3 / 4, atol=1e-12)
  np.testing.assert_allclose(metrics["eval/spearman/all"], scipy.stats.spearmanr(
      [1.0, 0.0, 0.1, 0.5, -1.0], [0.9, 0.1, 0.8, 0.5, 0.1]).statistic, atol=1e-12)


def test_fit_normalization_gives_mean_zero_std_one():
  """Scores gain*u + bias refitted with the returned gain and bias have mean 0 and std 1."""
  rng = np.random.default_rng(4)
  u = rng.normal(3.0, 2.5, 1000)
  gain, bias = 0.7, -1.3
  fit = rm_eval.fit_normalization(gain * u + bias, gain, bias)
  normalised = fit["gain"] * u + fit["bias"]
  np.testing.assert_allclose([normalised.mean(), normalised.std()], [0.0, 1.0], atol=1e-9)
  assert fit["num_samples"] == 1000 and abs(fit["raw_mean"] - (gain * u + bias).mean()) < 1e-9


# ---------------------------------------------------------------------------------------------------------
# Smoke runs.


def _argv(experiment, workdir, *extra):
  return ["--config", os.path.join(ROOT, "experiments", experiment) + ":smoke", "--workdir", str(workdir), BATCH,
          *extra]


def _run(experiment, workdir, *extra):
  assert main_lib.main(_argv(experiment, workdir, *extra)) == 0
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def runs(toyworld_smoke, toyworld_reward_smoke):
  out = dict(toyworld_smoke)
  out["reward"] = toyworld_reward_smoke
  return out


def test_reward_stage_writes_comparisons_with_gold(runs):
  """WORKDIR/comparisons holds valid comparison JSONL whose gold is the gold scorer's, with held-out
  instances from the held-out split only."""
  workdir, summary, _ = runs["reward"]
  world = toyworld.make_world(json.load(open(workdir / "config.json"))["toyworld"]["seed"])
  for split, name in (("train", "train.jsonl"), ("heldout", "heldout.jsonl")):
    path = workdir / "comparisons" / name
    source = sources.open_source(str(path), "comparisons")
    lines = [json.loads(line) for line in open(path) if line.strip()]
    assert len(source) == len(lines) == summary[f"comparisons/{split}_prompts"] > 0
    for i, raw in enumerate(lines):
      record = source[i]
      inst = toyworld.instance_from_json(raw["instance"])
      assert toyworld.instance_split(inst) == split and record["task"] == inst.task
      assert record["gold"] == [toyworld.gold_score(world, inst, r) for r in record["responses"]]
      assert len(set(record["ranking"])) >= 2


def test_reward_stage_summary(runs):
  """The summary is complete, with label accuracy in [0, 1] and a calibration table over the labelled pairs."""
  _, summary, _ = runs["reward"]
  assert summary["complete"] is True and summary["reward_loss"] == "pairwise"
  assert 0.0 <= summary["eval/label_accuracy"] <= 1.0
  assert isinstance(summary["calibration"], list) and summary["calibration"]
  assert sum(row["count"] for row in summary["calibration"]) == summary["eval/label_pairs"] > 0


def test_reward_stage_best_of_n(runs):
  """Best-of-1, 2, 4 of the SFT model's answers: n = 1 is the plain sample for both pickers, the RM's pick
  never beats the oracle's, and the oracle's pick and the RM score of the RM's pick never fall as n grows."""
  _, summary, _ = runs["reward"]
  ns = sorted({int(k.split("/")[1]) for k in summary if k.startswith("best_of_n/")})
  assert ns == [1, 2, 4]
  row = lambda n, key: summary[f"best_of_n/{n}/{key}"]
  assert row(1, "gold") == pytest.approx(row(1, "oracle_gold")) and row(1, "kl_bound") == 0.0
  for n in ns:
    assert 0.0 <= row(n, "gold") <= row(n, "oracle_gold") + 1e-12 <= 1.0 + 1e-12
  for a, b in zip(ns, ns[1:]):
    assert row(a, "oracle_gold") <= row(b, "oracle_gold") + 1e-12 and row(a, "rm_score") <= row(b, "rm_score") + 1e-9
  per_task = lambda n: [k for k in summary if k.startswith(f"best_of_n/{n}/gold/")]
  assert all(per_task(n) for n in ns)  # Per task for every n (the report's per-task best-of-4 column).


def test_saved_reward_model_is_normalised_on_sft_samples(runs):
  """The saved model scores fresh SFT samples on training prompts, drawn as the stage draws them, with mean
  0 and standard deviation 1."""
  sft_dir, _ = runs["sft"]
  workdir, _, extra = runs["reward"]
  config = main_lib.resolve_config(_argv("toyworld_reward.py", workdir)[1], [BATCH[9:], *(x[9:] for x in extra)])
  assert config.init_from == str(sft_dir) and config.train.batch_size == 8
  mesh = common.make_mesh(config)
  model, params, tokenizer, spec = load_reward_model(str(workdir), mesh)
  assert spec.normalization["num_samples"] == config.reward.norm_samples
  sft, sft_params, _ = load_pretrained(str(sft_dir), mesh, heads=("lm",))
  source = sources.open_source(str(workdir / "comparisons" / "train.jsonl"), "comparisons")
  records = [source[i] for i in range(len(source))]
  pairs = reward.normalization_samples(config, sft, sft_params, tokenizer, records)
  tokens, start, end = pipelines.encode_responses(tokenizer, pairs, config.train.seq_len, spec.reward_token)
  scores = rm_eval.make_scorer(model, mesh, chunk=16)(params, tokens, start, end)
  assert len(scores) == config.reward.norm_samples
  assert abs(scores.mean()) < 0.05 and abs(scores.std() - 1.0) < 0.05


def test_rerunning_a_finished_reward_run_changes_nothing(runs, capsys):
  """The same command again says it is finished and leaves the summary and checkpoints as they were."""
  workdir, _, extra = runs["reward"]

  def snapshot():
    files = [os.path.join(d, f) for d, _, fs in os.walk(workdir / "checkpoints") for f in fs]
    summary = workdir / "summary.json"
    return summary.read_bytes(), os.stat(summary).st_mtime_ns, {f: os.stat(f).st_mtime_ns for f in files}

  before = snapshot()
  capsys.readouterr()
  assert main_lib.main(_argv("toyworld_reward.py", workdir, *extra)) == 0
  assert "already finished" in capsys.readouterr().out
  assert snapshot() == before


HH_TURNS = [
    ("What should I cook tonight?", "Do you have rice?", "Yes, and eggs.", "Fried rice, then.", "Pizza."),
    ("How do I tie a tie?", "Which knot?", "A simple one.", "Try the four-in-hand knot.", "Use glue."),
    ("Name a fruit.", "Sure, any kind?", "A red one.", "An apple.", "A carrot."),
    ("Is it cold outside?", "Where are you?", "In Oslo.", "Probably, wear a coat.", "No idea, go away."),
    ("What is 2 plus 2?", "Do you mean in base ten?", "Yes.", "4.", "22."),
    ("Recommend a book.", "What genre?", "Science fiction.", "Try Dune.", "Books are boring."),
    ("How do I boil an egg?", "Soft or hard?", "Hard.", "Boil it for ten minutes.", "Microwave it sealed."),
    ("Say hello in French.", "Formal or casual?", "Casual.", "Salut!", "Hola."),
    ("Can you help me study?", "What subject?", "History.", "Sure, which period?", "No."),
    ("Tell me a joke.", "A clean one?", "Yes please.", "Why did the cat sit on the computer? To watch the mouse.",
     "I don't know jokes."),
]


def test_reward_run_on_anthropic_hh_data(runs, tmp_path):
  """Multi-turn Anthropic HH transcripts given as data.path train a reward model from the smoke SFT model."""
  sft_dir, _ = runs["sft"]
  path = tmp_path / "hh.jsonl"
  with open(path, "w") as f:
    for question, clarify, answer, good, bad in HH_TURNS:
      prompt = f"\n\nHuman: {question}\n\nAssistant: {clarify}\n\nHuman: {answer}"
      f.write(json.dumps({"chosen": f"{prompt}\n\nAssistant: {good}", "rejected": f"{prompt}\n\nAssistant: {bad}"})
              + "\n")
  workdir = tmp_path / "hh"
  summary = _run("toyworld_reward.py", workdir, f"--config.init_from={sft_dir}", f"--config.data.path={path}",
                 "--config.data.source=text", "--config.data.val_fraction=0.3", "--config.reward.norm_samples=8")
  assert summary["complete"] is True
  assert summary["comparisons/train_prompts"] == 7 and summary["comparisons/heldout_prompts"] == 3
  assert summary["eval/label_pairs"] == 3 and 0.0 <= summary["eval/label_accuracy"] <= 1.0
  assert not os.path.exists(workdir / "comparisons")  # Nothing simulated.


def test_build_reward_builds_without_writing(runs, tmp_path):
  """build_reward on the smoke config, its comparisons the session reward run's (data.path): a reward model
  that scores every held-out response finitely before training, built without writing into its workdir.
  Without data.path, a toyworld workdir holding no sampled comparisons is one UserError, still unwritten."""
  sft_dir, _ = runs["sft"]
  reward_dir, summary, _ = runs["reward"]
  spec, overrides = _argv("toyworld_reward.py", "unused")[1], [BATCH[9:], f"init_from={sft_dir}"]
  config = main_lib.resolve_config(spec, [*overrides, f"data.path={reward_dir / 'comparisons'}"])
  workdir = tmp_path / "reward"
  setup = reward.build_reward(config, str(workdir))
  assert not workdir.exists()
  scores = rm_eval.score_examples(setup.scorer, setup.params, setup.val_examples)
  assert len(scores) == len(setup.val_records) == summary["comparisons/heldout_prompts"]
  assert all(len(s) >= 2 and np.isfinite(s).all() for s in scores)
  assert setup.num_steps == config.train.steps and len(setup.norm_pairs) == config.reward.norm_samples
  assert len(setup.bon_texts) == config.reward.best_of_n * len(setup.bon_instances)
  with pytest.raises(UserError, match="no sampled comparisons"):
    reward.build_reward(main_lib.resolve_config(spec, overrides), str(workdir))
  assert not workdir.exists()


def _fails(capsys, argv, key):
  capsys.readouterr()
  assert main_lib.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err


def test_reward_stage_bad_input(runs, tmp_path, capsys):
  """No init_from, more responses than reward.max_responses, an unknown loss, or a likelihood weight that is
  negative or given with the reward-token loss: one line naming the key."""
  sft_dir, _ = runs["sft"]
  _fails(capsys, _argv("toyworld_reward.py", tmp_path / "a", "--config.init_from="), "'init_from'")
  path = tmp_path / "k3.jsonl"
  path.write_text("".join(json.dumps({"prompt": f"question {i} ?", "responses": ["a", "b", "c"],
                                      "ranking": [0, 1, 2]}) + "\n" for i in range(4)))
  _fails(capsys, _argv("toyworld_reward.py", tmp_path / "b", f"--config.init_from={sft_dir}",
                       f"--config.data.path={path}", "--config.data.source=text", "--config.reward.max_responses=2"),
         "'reward.max_responses'")
  _fails(capsys, _argv("toyworld_reward.py", tmp_path / "c", f"--config.init_from={sft_dir}",
                       "--config.reward.loss=bogus"), "'reward.loss'")
  _fails(capsys, _argv("toyworld_reward.py", tmp_path / "d", f"--config.init_from={sft_dir}",
                       "--config.reward.loss=reward_token", "--config.reward.likelihood_weight=1.0"),
         "'reward.likelihood_weight'")
  _fails(capsys, _argv("toyworld_reward.py", tmp_path / "e", f"--config.init_from={sft_dir}",
                       "--config.reward.likelihood_weight=-1.0"), "'reward.likelihood_weight'")
  assert not any(os.path.exists(tmp_path / name) for name in "de")
