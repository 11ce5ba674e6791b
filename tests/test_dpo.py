"""The offline preference stage (stages/dpo.py): DPO and IPO against NumPy references, the log-probabilities
they read against a hand computation, learning on a fixed batch, and the smoke stage end to end (the one
evaluator, exact resume after preemption, bad input)."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, checkpoint_state, run_preempted, run_smoke, tiny_model
from rlhf_jax import losses, main as main_lib
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.batches import PreferenceBatch
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.metrics import read_metrics


def _numpy_preference(h, ranks, beta, loss):
  """(sum over prompts of the mean pair loss, prompts with a pair, sum of per-prompt pair accuracy), by loops."""
  total, prompts, correct = 0.0, 0, 0.0
  for h_k, r_k in zip(h, ranks):
    pair_losses, pair_correct = [], []
    for i in range(len(r_k)):
      for j in range(len(r_k)):
        if r_k[i] >= 0 and r_k[j] >= 0 and r_k[i] < r_k[j]:  # i ranked strictly better than j.
          gap = h_k[i] - h_k[j]
          pair_losses.append(np.log1p(np.exp(-beta * gap)) if loss == "dpo" else (gap - 1 / (2 * beta)) ** 2)
          pair_correct.append(1.0 if gap > 0 else 0.5 if gap == 0 else 0.0)
    if pair_losses:
      total, prompts, correct = total + np.mean(pair_losses), prompts + 1, correct + np.mean(pair_correct)
  return total, prompts, correct


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_preference_losses_match_numpy(loss):
  """K-wise rankings with ties (tied responses make no pair), padding slots (-1) and a prompt whose answers all
  tie (no pair: it does not count), on random log-ratios."""
  rng = np.random.default_rng(0)
  h = rng.normal(0.0, 2.0, size=(5, 4)).astype(np.float32)
  h[4, 1] = h[4, 0]  # An exactly tied implicit reward counts half in the accuracy.
  ranks = np.array([[0, 1, 2, 3], [1, 0, 1, 2], [0, 0, 0, 0], [2, 0, 1, -1], [0, 1, -1, -1]], np.int32)
  beta = 0.3
  total, prompts, aux = losses.PREFERENCE_LOSSES[loss](jnp.asarray(h), jnp.asarray(ranks), beta)
  want_total, want_prompts, want_correct = _numpy_preference(h.astype(np.float64), ranks, beta, loss)
  assert float(prompts) == want_prompts == 4
  np.testing.assert_allclose(float(total), want_total, rtol=1e-5)
  np.testing.assert_allclose(float(aux["correct"]), want_correct, rtol=1e-6)


def test_dpo_loss_is_the_reward_model_loss_on_the_implicit_reward():
  """DPO's loss is InstructGPT's RM loss (eq. 1) with r = beta h (Rafailov et al. eq. 7)."""
  rng = np.random.default_rng(1)
  h, ranks = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32), jnp.asarray(rng.integers(0, 3, size=(3, 5)))
  got, _, _ = losses.dpo_loss(h, ranks, 0.5)
  want, _, _ = losses.ranking_loss(0.5 * h, ranks)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_response_log_probs_sum_the_response_tokens_by_hand():
  """log p(response | prompt) = the sum of the LM head's log-probabilities of the tokens at start..end, each
  predicted from the position before it; a padding row (start = end = 0) gives 0."""
  model = Transformer(tiny_model())
  params = unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12), jnp.int32))["params"])
  tokens = np.random.default_rng(2).integers(1, 61, size=(3, 12)).astype(np.int32)
  start, end = np.array([4, 7, 0], np.int32), np.array([9, 11, 0], np.int32)
  got = np.asarray(steps.response_log_probs(model, params, jnp.asarray(tokens), jnp.asarray(start), jnp.asarray(end)))
  logp = _log_softmax(np.asarray(model.apply({"params": params}, jnp.asarray(tokens)).logits, np.float64))
  want = [sum(logp[n, p - 1, tokens[n, p]] for p in range(start[n], end[n] + 1)) if end[n] else 0.0
          for n in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_preference_step_learns_a_fixed_batch(loss):
  """From the reference itself the DPO loss is exactly log 2 (the IPO loss (1 / (2 beta))^2) and the pairs'
  accuracy 1/2 (every gap 0); 30 Adam steps on the same batch order its pairs right and lower the loss."""
  model = Transformer(tiny_model())
  params = unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"])
  rng = np.random.default_rng(3)
  b, k, t = 4, 3, 16
  tokens = rng.integers(1, 61, size=(b, k, t)).astype(np.int32)
  start, end = np.full((b, k), 6, np.int32), np.full((b, k), 12, np.int32)
  ranks = np.array([[0, 1, 2], [2, 1, 0], [0, 0, 1], [1, 0, -1]], np.int32)
  ref = np.asarray(steps.response_log_probs(model, params, jnp.asarray(tokens.reshape(b * k, t)),
                                            jnp.asarray(start.reshape(-1)), jnp.asarray(end.reshape(-1))))
  batch = PreferenceBatch(tokens=tokens, start=start, end=end, ranks=ranks, ref_log_probs=ref.reshape(b, k))
  beta = 0.5
  objective = steps.preference_objective(model, loss, beta)
  tx = optax.adam(3e-3)
  step = jax.jit(steps.make_step(objective, tx, optax.constant_schedule(3e-3), count_name="prompts"))
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  state, _ = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0), params=params)
  first = None
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    first = first or {k: float(v) for k, v in metrics.items()}
  start_loss = np.log(2.0) if loss == "dpo" else (1 / (2 * beta)) ** 2
  assert first["train/loss"] == pytest.approx(start_loss, abs=1e-5) and first["train/accuracy"] == 0.5
  assert first["train/prompts"] == 4
  total, count, aux = jax.jit(objective)(state.params, batch, None)
  assert float(total / count) < 0.5 * start_loss and float(aux["correct"] / count) == 1.0


@pytest.fixture(scope="module")
def dpo_args(toyworld_smoke, toyworld_reward_smoke):
  return (f"--config.init_from={toyworld_smoke['sft'][0]}",
          f"--config.data.path={toyworld_reward_smoke[0] / 'comparisons'}",
          f"--config.dpo.reward_from={toyworld_reward_smoke[0]}")


@pytest.fixture(scope="module")
def dpo_run(dpo_args, tmp_path_factory):
  """The smoke DPO run, made once for this module: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("dpo") / "dpo"
  return workdir, run_smoke("toyworld_dpo.py", workdir, *dpo_args)


def _argv(workdir, dpo_args, *extra):
  return ["--config", os.path.join(ROOT, "experiments", "toyworld_dpo.py") + ":smoke", "--workdir", str(workdir),
          "--config.train.batch_size=8", *dpo_args, *extra]


def test_dpo_stage_smoke_evaluates_as_ppo_does(dpo_run, dpo_args, toyworld_smoke):
  """The smoke run completes; its first step's loss is log 2 (the policy starts as its reference); the
  implicit reward is measured on the held-out comparisons; the SFT model's gold is the SFT stage's own figure
  (the one evaluator) and the policy is compared with it on the same prompts, as PPO's evaluation does."""
  workdir, summary = dpo_run
  assert summary["complete"] is True and summary["step"] == 4
  rows = [r for r in read_metrics(str(workdir)) if "train/loss" in r]
  assert rows[0]["train/loss"] == pytest.approx(np.log(2.0), abs=1e-4)
  assert 0.0 <= summary["eval/implicit/label_accuracy"] <= 1.0 and summary["eval/implicit/label_pairs"] > 0
  assert summary["sft/gold/all"] == pytest.approx(toyworld_smoke["sft"][1]["eval/gold/all"], abs=1e-9)
  for key in ("eval/kl", "eval/gold/all", "eval/win_rate_gold", "eval/rm_score", "sft_t0.5/gold/all"):
    assert np.isfinite(summary[key]), key
  assert main_lib.main(_argv(workdir, dpo_args)) == 0  # Finished: skipped.


def test_ipo_stage_for_an_epoch(tmp_path, dpo_args, toyworld_reward_smoke):
  """`dpo.loss=ipo` through the stage, with dpo.epochs: the steps are one epoch of the comparisons kept
  (ceil(kept / batch)), and the first logged loss (the first two steps; one update at lr 5e-6 barely moves
  the policy) is IPO's (1 / (2 beta))^2 from the reference itself."""
  kept = len((toyworld_reward_smoke[0] / "comparisons" / "train.jsonl").read_text().splitlines())
  summary = run_smoke("toyworld_dpo.py", tmp_path / "ipo", *dpo_args, "--config.dpo.loss=ipo",
                      "--config.dpo.epochs=1.0", "--config.dpo.beta=0.5")
  assert summary["complete"] is True and summary["step"] == -(-kept // 8)
  rows = [r for r in read_metrics(str(tmp_path / "ipo")) if "train/loss" in r]
  assert rows[0]["train/loss"] == pytest.approx(1.0, abs=1e-4)  # (1 / (2 x 0.5))^2


def test_dpo_resume_after_preemption_is_exact(tmp_path, dpo_args, dpo_run, monkeypatch):
  """SIGTERM during step 3 (checkpoints every 2): a checkpoint at 3, exit 143; the same command resumes and
  ends with exactly the uninterrupted run's parameters and optimizer state."""
  workdir = tmp_path / "dpo"
  assert run_preempted(monkeypatch, _argv(workdir, dpo_args)) == 128 + signal.SIGTERM
  assert checkpoint_state(workdir)[0] == 3
  assert main_lib.main(_argv(workdir, dpo_args)) == 0
  (step_a, a), (step_b, b) = checkpoint_state(dpo_run[0]), checkpoint_state(workdir)
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_dpo_bad_input_names_the_key(tmp_path, dpo_args, capsys):
  """No comparisons, an unknown loss, a beta of 0: one line naming the key, exit 2, nothing written."""
  for extra, key in ((("--config.data.path=",), "data.path"), (("--config.dpo.loss=kto",), "dpo.loss"),
                     (("--config.dpo.beta=0.0",), "dpo.beta")):
    workdir = tmp_path / key
    assert main_lib.main(_argv(workdir, dpo_args, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err
    assert not workdir.exists()
  records = tmp_path / "bad.jsonl"
  records.write_text(json.dumps({"prompt": "hi", "responses": ["a", "b"], "ranking": [0, 1]}) + "\n{oops\n")
  assert main_lib.main(_argv(tmp_path / "bad", dpo_args, f"--config.data.path={records}")) == 2
  err = capsys.readouterr().err
  assert "bad.jsonl:2:" in err and len(err.strip().splitlines()) == 1
