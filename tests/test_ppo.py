"""PPO: the KL controller by hand, the rollout pass against independent forwards (the sampler's log-probs, the
critic on unpadded rows, the reward model on the reward stage's own encoding), the update's diagnostics
against NumPy, and the stage on toyworld smoke runs, including an exact resume after preemption."""

import itertools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, checkpoint_state, run_preempted, run_smoke, tiny_model
from rlhf_jax import convert, main as main_lib
from rlhf_jax.batches import LMBatch
from rlhf_jax.config import base_config, parse_overrides
from rlhf_jax.data import pipelines
from rlhf_jax import losses
from rlhf_jax.errors import UserError
from rlhf_jax.eval import rm as rm_eval
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.rl import advantages as advantages_lib
from rlhf_jax.rl import kl_control
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.rl.rollout import make_collect, reward_inputs
from rlhf_jax.sampling import SampleOutput, make_generate
from rlhf_jax.stages import reward as reward_stage
from rlhf_jax.stages.ppo import critic_params_from_reward, make_likelihood_mean
from rlhf_jax.train import state as state_lib
from rlhf_jax.train import steps
from rlhf_jax.train.checkpoint import Checkpointer
from rlhf_jax.train.state import PPOState
from rlhf_jax.train.metrics import read_metrics

EOT, REWARD, PAD = 3, 9, 0


def _params(model, seed):
  return unbox(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32))["params"])


def _randomise(params, seed, scale=0.3):
  """Every leaf re-drawn (zero-initialised heads included), so that no term of a test is trivially 0."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


# ---------------------------------------------------------------------------------------------------------
# KL control.


def test_adaptive_kl_controller_by_hand():
  """beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), and unchanged when fixed."""
  update = lambda kl, adaptive=True: float(kl_control.update_kl_coef(
      jnp.float32(0.1), jnp.float32(kl), 64, adaptive=adaptive, target=6.0, horizon=1000))
  assert update(6.6) == pytest.approx(0.1 * (1 + 0.1 * 0.064), rel=1e-6)  # Within the clip.
  assert update(12.0) == pytest.approx(0.1 * (1 + 0.2 * 0.064), rel=1e-6)  # Clipped at +0.2.
  assert update(0.0) == pytest.approx(0.1 * (1 - 0.2 * 0.064), rel=1e-6)  # Clipped at -0.2.
  assert update(12.0, adaptive=False) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------------------
# The rollout pass.


@pytest.fixture(scope="module")
def models():
  cfg = tiny_model("gpt2", vocab_size=31, max_len=32)
  actor = Transformer(cfg, heads=("lm",))
  critic = Transformer(cfg, heads=("value",))
  rm = Transformer(cfg, heads=("reward",))
  return {"cfg": cfg, "actor": actor, "critic": critic, "rm": rm,
          "actor_params": _params(actor, 0), "ref_params": _params(actor, 1),
          "critic_params": _randomise(_params(critic, 2), 3), "rm_params": _randomise(_params(rm, 4), 5)}


def _forward(model, params, *inputs):
  """model.apply under jit: one compilation instead of one per operation."""
  return jax.jit(lambda p, *x: model.apply({"params": p}, *x))(params, *inputs)


def _prompts():
  ids = [[1, 12, 7, 5], [1, 4], [1, 20, 21, 22, 23, 6]]
  return pipelines.left_pad_prompts([np.asarray(x) for x in ids], 6, PAD), ids


def _rollout(models, temperature, seed, ref_params):
  """The policy's sample of the test prompts and the rollout pass over it (critic and RM included)."""
  (prompt, mask), _ = _prompts()
  generate = make_generate(models["actor"], max_new_tokens=5, temperature=temperature, stop_ids=(EOT,), pad_id=PAD)
  sample = generate(models["actor_params"], prompt, mask, jax.random.PRNGKey(seed))
  collect = make_collect(models["actor"], models["actor"], models["critic"], models["rm"], temperature=temperature,
                         end_of_turn_id=EOT, reward_id=None, pad_id=PAD)
  return sample, collect(models["actor_params"], models["critic_params"], ref_params, models["rm_params"], prompt,
                         mask, sample)


def test_collect_log_probs_match_the_sampler(models):
  """The rollout's recomputed log-probs (full forward, temperature T) equal the KV-cache sampler's; with
  the reference equal to the policy, the KL terms are exactly 0."""
  sample, rollout = _rollout(models, 0.7, 0, ref_params=models["actor_params"])
  np.testing.assert_allclose(rollout.log_probs, sample.log_probs * sample.mask, atol=2e-5)
  assert float(jnp.abs(rollout.log_probs).sum()) > 0
  np.testing.assert_array_equal(rollout.log_probs, rollout.ref_log_probs)


def test_collect_reference_at_its_own_temperature(models):
  """`ref_temperature`: the same model as policy at T 0.5 and reference at T 1 -- the reference's log-probs are
  log softmax(z / 1) of the sampled tokens (NumPy), the policy's log softmax(z / 0.5), and their KL per
  response is positive, where without it the two would be identical."""
  (prompt, mask), _ = _prompts()
  generate = make_generate(models["actor"], max_new_tokens=5, temperature=0.5, stop_ids=(EOT,), pad_id=PAD)
  params = _randomise(models["actor_params"], 6, scale=0.1)
  sample = generate(params, prompt, mask, jax.random.PRNGKey(4))
  collect = make_collect(models["actor"], models["actor"], None, models["rm"], temperature=0.5, end_of_turn_id=EOT,
                         reward_id=None, pad_id=PAD, ref_temperature=1.0)
  rollout = collect(params, None, params, models["rm_params"], prompt, mask, sample)
  _, z, _ = jax.jit(rollout_lib.policy_outputs, static_argnums=(0, 6))(
      models["actor"], params, prompt, mask, sample.tokens, sample.mask.astype(jnp.float32), 1.0)
  z = np.asarray(z, np.float64)
  logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
  expected = np.take_along_axis(logp, np.asarray(sample.tokens)[..., None], -1)[..., 0] * np.asarray(sample.mask)
  np.testing.assert_allclose(rollout.ref_log_probs, expected, atol=2e-5)
  np.testing.assert_allclose(rollout.log_probs, sample.log_probs * sample.mask, atol=2e-5)
  assert float(jnp.sum(rollout.log_probs - rollout.ref_log_probs)) > 0.05


@pytest.mark.parametrize("reward_token,likelihood", [(False, 0.0), (True, 0.0), (False, 0.8)])
def test_collect_values_and_scores_match_independent_forwards(models, reward_token, likelihood):
  """Values equal the critic on each unpadded prompt + response row; scores equal the reward model read
  where the reward stage's own encoding (pipelines.scored_sequence) puts the score -- with a likelihood
  term, over the response that encoding delimits, not the rollout's left padding -- for a response that
  ended, one that ended at once, and one that ran out of tokens (which also pays the unfinished penalty)."""
  (prompt, mask), ids = _prompts()
  n = 5
  responses = [[11, 12, EOT], [EOT], [13, 14, 15, 16, 17]]  # Ended, ended at once, unfinished.
  tokens = np.full((3, n), PAD, np.int32)
  for r, resp in enumerate(responses):
    tokens[r, :len(resp)] = resp
  resp_mask = tokens != PAD
  sample = SampleOutput(tokens=jnp.asarray(tokens), log_probs=jnp.zeros((3, n)), mask=jnp.asarray(resp_mask),
                        lengths=jnp.asarray(resp_mask.sum(1), jnp.int32), ended=jnp.asarray([True, True, False]),
                        num_steps=jnp.int32(n))
  rm = models["rm"].clone(reward_likelihood=likelihood)
  collect = make_collect(models["actor"], models["actor"], models["critic"], rm, temperature=1.0,
                         end_of_turn_id=EOT, reward_id=REWARD if reward_token else None, pad_id=PAD,
                         unfinished_penalty=0.5)
  rollout = collect(models["actor_params"], models["critic_params"], models["ref_params"], models["rm_params"],
                    prompt, mask, sample)

  class Tok:  # What scored_sequence reads from a tokenizer.
    end_of_turn_id, reward_id = EOT, REWARD

  for r, resp in enumerate(responses):
    row = np.asarray(ids[r] + resp, np.int32)[None]
    values = _forward(models["critic"], models["critic_params"], row).values[0]
    expected = np.zeros(n)
    expected[:len(resp)] = values[len(ids[r]) - 1:len(ids[r]) - 1 + len(resp)]
    np.testing.assert_allclose(rollout.values[r], expected, atol=1e-5)

    content = resp[:-1] if resp[-1] == EOT else resp
    seq, start, end = pipelines.scored_sequence(Tok, np.asarray(ids[r]), content, 32, reward_token)
    score = jax.jit(lambda p, x, s: rm.apply({"params": p}, x, response_start_b=s))(
        models["rm_params"], seq[None], np.array([start], np.int32)).rewards[0, end]
    if likelihood:  # The term is there: the plain head scores differently.
      assert abs(float(score) - float(_forward(models["rm"], models["rm_params"], seq[None]).rewards[0, end])) > 1e-3
    assert float(rollout.rm_scores[r]) == pytest.approx(float(score), abs=1e-5)
    penalty = 0.0 if r < 2 else 0.5
    assert float(rollout.scores[r]) == pytest.approx(float(score) - penalty, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The update.


def _numpy_targets(rollout, beta, gamma, lam):
  """KL-shaped rewards, GAE by a Python loop in float64, and masked whitening: the update's targets."""
  logp, ref, values, mask = (np.asarray(x, np.float64) for x in (rollout.log_probs, rollout.ref_log_probs,
                                                                 rollout.values, rollout.mask))
  b, n = mask.shape
  rewards = -beta * (logp - ref) * mask
  for r in range(b):
    rewards[r, int(np.nonzero(mask[r])[0].max())] += float(rollout.scores[r])
  adv = np.zeros((b, n))
  for r in range(b):
    last_adv, next_value = 0.0, 0.0
    for t in reversed(range(n)):
      if not mask[r, t]:
        continue
      delta = rewards[r, t] + gamma * next_value - values[r, t]
      last_adv = delta + gamma * lam * last_adv
      adv[r, t], next_value = last_adv, values[r, t]
  returns = (adv + values) * mask
  kept = adv[mask > 0]
  whitened = (adv - kept.mean()) / np.sqrt(kept.var() + 1e-8) * mask
  return whitened, returns


@pytest.mark.parametrize("group_std", [False, True])
def test_group_baseline_centres_each_score_on_its_prompts_other_answers(models, group_std):
  """With group_baseline the targets are those of the plain path with each score replaced by itself less the
  mean of the other answers of its group (the test's 3 rows as one group), computed here by hand; with
  group_std, GRPO's: the score less the group's mean (0.5, itself included), over the group's sample std
  (1.5)."""
  _, rollout = _rollout(models, 1.0, 3, ref_params=models["ref_params"])
  rollout = rollout.replace(scores=jnp.array([0.5, -1.0, 2.0]))
  settings = steps.PPOSettings.from_config(base_config().ppo, samples_per_prompt=3, group_baseline=True, gamma=0.9,
                                            lam=0.8, group_std=group_std)
  batch, stats = steps.ppo_targets(rollout, jnp.float32(0.2), settings)
  if group_std:  # np.std([0.5, -1.0, 2.0], ddof=1) == 1.5
    centred = rollout.replace(scores=jnp.array([0.5 - 0.5, -1.0 - 0.5, 2.0 - 0.5]) / (1.5 + steps.GROUP_STD_EPS))
  else:
    centred = rollout.replace(scores=jnp.array([0.5 - 0.5, -1.0 - 1.25, 2.0 - -0.25]))
  adv, returns = _numpy_targets(centred, 0.2, 0.9, 0.8)
  np.testing.assert_allclose(batch.advantages, adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch.returns, returns, rtol=1e-5, atol=1e-5)
  assert float(stats["ppo/score_total"]) == pytest.approx(0.5)  # The statistics keep the raw scores.


def test_grpo_advantages_match_numpy():
  """GRPO's outcome advantages (Shao et al. 2024, sec. 4.1.2), the experiment file's `grpo` variant settings:
  no critic, no whitening, no KL in the reward -- every token of answer i gets (r_i - mean(r)) / std(r) of
  its group; two groups of four here, one of them all tied (advantage 0)."""
  rng = np.random.default_rng(5)
  b, n = 8, 6
  mask = (np.arange(n)[None, :] < rng.integers(1, n + 1, size=(b, 1))).astype(np.float32)
  scores = np.concatenate([rng.normal(size=4), np.full(4, 0.3)]).astype(np.float32)
  zeros = jnp.zeros((b, n), jnp.float32)
  rollout = rollout_lib.Rollout(prompt=jnp.zeros((b, 2), jnp.int32), prompt_mask=jnp.ones((b, 2), bool),
                                tokens=jnp.zeros((b, n), jnp.int32), mask=jnp.asarray(mask),
                                log_probs=zeros - 0.5, ref_log_probs=zeros - 0.7, values=zeros + 0.4,
                                scores=jnp.asarray(scores), rm_scores=jnp.asarray(scores), ended=jnp.ones(b, bool))
  settings = steps.PPOSettings.from_config(base_config().ppo, samples_per_prompt=4, group_baseline=True,
                                            group_std=True, critic_free=True, whiten_advantages=False)
  batch, _ = steps.ppo_targets(rollout, jnp.float32(0.0), settings)
  groups = scores.astype(np.float64).reshape(2, 4)
  want = ((groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + steps.GROUP_STD_EPS))
  np.testing.assert_allclose(batch.advantages, want.reshape(b, 1) * mask, rtol=1e-5, atol=1e-6)
  assert not np.asarray(batch.advantages)[4:].any()


def test_ppo_pipeline_repeats_each_prompt_for_its_group():
  tokens = np.arange(40, dtype=np.int32).reshape(10, 4)
  data = pipelines.ppo_pipeline(tokens, np.ones_like(tokens), 6, seed=0, samples_per_prompt=3)
  seen = []
  for element in itertools.islice(iter(data), 5):
    index = element["index"]
    assert index.shape == (6,) and (index[:3] == index[0]).all() and (index[3:] == index[3]).all()
    np.testing.assert_array_equal(element["prompt"], tokens[index])
    seen += [int(index[0]), int(index[3])]
  assert sorted(seen[:10]) == list(range(10))  # One pass over the prompts before any repeats.
  with pytest.raises(UserError, match="ppo.samples_per_prompt"):
    pipelines.ppo_pipeline(tokens, np.ones_like(tokens), 6, seed=0, samples_per_prompt=4)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("ptx_coef,aggregation,kl_loss", [(0.0, "token_mean", ""), (0.5, "token_mean", ""),
                                                           (0.0, "sequence_mean", "k3"), (0.0, "constant", "")])
def test_ppo_update_diagnostics_match_numpy(models, ptx_coef, aggregation, kl_loss):
  """One epoch of one minibatch: the reported policy loss, entropy, clip fraction, approx KL and value loss
  are those of the parameters before the step, computed here in NumPy (float64) from the models' logits
  and values, each per-token term aggregated as ppo.loss_aggregation says (the separate critic's value loss
  is a token mean always); the ptx loss is the LM loss of the ptx rows; GRPO's k3 KL in the loss is the k3
  estimate at the sampled tokens against the rollout's reference log-probs. The step then changes actor and
  critic."""
  (prompt, mask), _ = _prompts()
  temperature, eps, veps, beta = 0.8, 0.1, 0.05, 0.3
  _, rollout = _rollout(models, temperature, 1, ref_params=models["ref_params"])
  # Old log-probs and values as if an earlier policy and critic had made the rollout: ratios away from 1,
  # so clipping happens.
  noise = np.random.default_rng(0).normal(0, 0.3, rollout.mask.shape) * np.asarray(rollout.mask)
  rollout = rollout.replace(log_probs=rollout.log_probs + noise, values=rollout.values - noise)
  # Responses of different lengths (the first ones cut short), so that the aggregations differ.
  n = rollout.mask.shape[1]
  cut = jnp.asarray(np.arange(n)[None, :] < np.minimum(np.arange(rollout.mask.shape[0]) + 2, n)[:, None],
                    jnp.float32) * rollout.mask
  rollout = rollout.replace(mask=cut, log_probs=rollout.log_probs * cut, ref_log_probs=rollout.ref_log_probs * cut,
                            values=rollout.values * cut)

  settings = steps.PPOSettings.from_config(base_config().ppo, temperature=temperature, epochs=1, minibatches=1,
                                            clip_eps=eps, value_clip_eps=veps, gamma=0.9, lam=0.8, ptx_coef=ptx_coef,
                                            loss_aggregation=aggregation, kl_loss=kl_loss or "exact",
                                            kl_loss_coef=0.2 if kl_loss else 0.0)
  txs = {"actor": optax.sgd(1e-2), "critic": optax.sgd(1e-2)}
  params = {"actor": models["actor_params"], "critic": models["critic_params"]}
  state = PPOState(step=jnp.int32(0), params=params, opt_state={k: txs[k].init(v) for k, v in params.items()},
                   kl_coef=jnp.float32(beta), ema=None, reward=None, rng=jax.random.PRNGKey(0))
  ptx = None
  if ptx_coef:
    rows = np.random.default_rng(1).integers(4, 31, (4, 9)).astype(np.int32)
    ptx = pipelines.to_lm_batch({"tokens": rows})
  update = steps.make_ppo_update(models["actor"], models["critic"], txs, settings)
  new_state, metrics = jax.jit(update)(state, rollout, ptx, jax.random.PRNGKey(2))

  adv, returns = _numpy_targets(rollout, beta, 0.9, 0.8)
  m = np.asarray(rollout.mask, np.float64)
  seq = np.concatenate([np.asarray(prompt), np.asarray(rollout.tokens)], 1)
  real = np.concatenate([np.asarray(mask), m > 0], 1).astype(np.int32)
  positions = np.maximum(np.cumsum(real, 1) - 1, 0)
  logits = _forward(models["actor"], models["actor_params"], seq, positions, real).logits
  logits = np.asarray(logits, np.float64)[:, 5:10] / temperature
  log_p = _log_softmax(logits)
  tokens = np.asarray(rollout.tokens)
  logp = np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
  ratio = np.exp(logp - np.asarray(rollout.log_probs, np.float64))
  unclipped, clipped = -adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps)
  token_mean = lambda x: (x * m).sum() / m.sum()
  mean = {"token_mean": token_mean,
          "sequence_mean": lambda x: ((x * m).sum(1) / m.sum(1)).mean(),
          "constant": lambda x: ((x * m).sum(1) / m.shape[1]).mean()}[aggregation]
  assert len(set(m.sum(1))) > 1  # Responses of different lengths: the three aggregations differ.
  expected = {
      "ppo/policy_loss": mean(np.maximum(unclipped, clipped)),
      "ppo/clip_fraction": mean(clipped > unclipped),
      "ppo/approx_kl": mean(ratio - 1 - np.log(ratio)),
      "ppo/entropy": mean(-(np.exp(log_p) * log_p).sum(-1)),
  }
  values = _forward(models["critic"], models["critic_params"], seq, positions, real).values
  values = np.asarray(values, np.float64)[:, 5:10]
  old_values = np.asarray(rollout.values, np.float64)
  v_clip = old_values + np.clip(values - old_values, -veps, veps)
  expected["ppo/value_loss"] = token_mean(0.5 * np.maximum((values - returns) ** 2, (v_clip - returns) ** 2))
  expected["ppo/value_clip_fraction"] = token_mean((v_clip - returns) ** 2 > (values - returns) ** 2)
  if kl_loss:
    d = logp - np.asarray(rollout.ref_log_probs, np.float64)
    expected["ppo/kl_loss"] = mean(np.exp(-d) - 1 + d)
    expected["train/loss"] = expected["ppo/policy_loss"] + 0.2 * expected["ppo/kl_loss"]
  if ptx_coef:
    lm_logits = np.asarray(_forward(models["actor"], models["actor_params"], ptx.tokens).logits, np.float64)
    nll = -np.take_along_axis(_log_softmax(lm_logits), np.asarray(ptx.targets)[..., None], -1)[..., 0]
    expected["ppo/ptx_loss"] = nll.mean()
    expected["train/loss"] = expected["ppo/policy_loss"] + ptx_coef * nll.mean()
  assert 0.0 < expected["ppo/clip_fraction"] < 1.0 and 0.0 < expected["ppo/value_clip_fraction"] < 1.0
  for key, value in expected.items():
    assert float(metrics[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
  assert float(metrics["ppo/kl"]) == pytest.approx(
      ((np.asarray(rollout.log_probs) - np.asarray(rollout.ref_log_probs)) * m).sum(1).mean(), rel=1e-5)
  for name in ("actor", "critic"):
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params[name], params[name])
    assert max(jax.tree.leaves(moved)) > 0, name
  assert int(new_state.step) == 1 and float(new_state.kl_coef) == pytest.approx(beta)


def test_critic_free_update(models):
  """ppo.critic_free: the targets are the plain path's with every value 0 and lambda 1 (each token's advantage
  is its reward-to-go, here with the group baseline), whatever values the rollout carries; the update trains
  the actor alone and reports no value loss."""
  _, rollout = _rollout(models, 1.0, 3, ref_params=models["ref_params"])
  rollout = rollout.replace(scores=jnp.array([0.5, -1.0, 2.0]), values=rollout.values + 0.7 * rollout.mask)
  settings = steps.PPOSettings.from_config(base_config().ppo, samples_per_prompt=3, group_baseline=True, gamma=0.9,
                                            lam=0.8, critic_free=True, epochs=1, minibatches=1)
  batch, stats = steps.ppo_targets(rollout, jnp.float32(0.2), settings)
  centred = rollout.replace(scores=jnp.array([0.5 - 0.5, -1.0 - 1.25, 2.0 - -0.25]),
                            values=jnp.zeros_like(rollout.values))
  adv, returns = _numpy_targets(centred, 0.2, 0.9, 1.0)
  np.testing.assert_allclose(batch.advantages, adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch.returns, returns, rtol=1e-5, atol=1e-5)
  assert float(stats["ppo/value_mean"]) == 0.0

  txs = {"actor": optax.sgd(1e-2)}
  params = {"actor": models["actor_params"]}
  state = PPOState(step=jnp.int32(0), params=params, opt_state={"actor": txs["actor"].init(params["actor"])},
                   kl_coef=jnp.float32(0.2), ema=None, reward=None, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="critic_free"):
    steps.make_ppo_update(models["actor"], models["critic"], txs, settings)
  new_state, metrics = jax.jit(steps.make_ppo_update(models["actor"], None, txs, settings))(
      state, rollout, None, jax.random.PRNGKey(2))
  assert "ppo/value_loss" not in metrics and set(new_state.params) == {"actor"}
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params["actor"], params["actor"])
  assert max(jax.tree.leaves(moved)) > 0


def test_tool_tokens_are_context_not_actions(models):
  """Tokens a tool wrote inside a response (tools.py): the models read them -- the policy's, reference's and
  critic's numbers at the policy's own tokens are those of the whole sequence -- but the rollout's mask,
  log-probs and KL leave them out, GAE carries the value across them (the NumPy loop skips masked columns),
  and the update does not depend on anything the rollout holds at them."""
  (prompt, mask), _ = _prompts()
  tokens = np.asarray([[11, 12, 13, 14, 15, EOT], [16, 17, 18, 19, EOT, PAD], [20, 21, 22, 23, 24, 25]], np.int32)
  tool = np.asarray([[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], bool)  # Row 3: cut off in one.
  present = tokens != PAD
  sample = SampleOutput(tokens=jnp.asarray(tokens), log_probs=jnp.zeros(tokens.shape), mask=jnp.asarray(present),
                        lengths=jnp.asarray(present.sum(1), jnp.int32), ended=jnp.asarray([True, True, False]),
                        num_steps=jnp.int32(6), tool_mask=jnp.asarray(tool))
  collect = make_collect(models["actor"], models["actor"], models["critic"], models["rm"], temperature=1.0,
                         end_of_turn_id=EOT, reward_id=None, pad_id=PAD)
  run = lambda s: collect(models["actor_params"], models["critic_params"], models["ref_params"],
                          models["rm_params"], prompt, mask, s)
  with_tool, plain = run(sample), run(sample.replace(tool_mask=None))
  own = (present & ~tool).astype(np.float32)
  np.testing.assert_array_equal(with_tool.mask, own)
  for field in ("log_probs", "ref_log_probs", "values"):
    np.testing.assert_allclose(getattr(with_tool, field), np.asarray(getattr(plain, field)) * own, atol=1e-6)
    assert np.abs(np.asarray(getattr(plain, field)) * tool).sum() > 0  # What the tool's columns would leak.
  np.testing.assert_allclose(with_tool.scores, plain.scores, atol=1e-6)

  settings = steps.PPOSettings.from_config(base_config().ppo, gamma=0.9, lam=0.8, epochs=1, minibatches=1,
                                            critic_free=True)
  rollout = with_tool.replace(values=with_tool.values * 0.0, scores=jnp.array([0.5, -1.0, 2.0]))
  batch, stats = steps.ppo_targets(rollout, jnp.float32(0.2), settings)
  adv, returns = _numpy_targets(rollout, 0.2, 0.9, 1.0)
  np.testing.assert_allclose(batch.advantages, adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch.returns, returns, rtol=1e-5, atol=1e-5)
  stopped = advantages_lib.gae(np.zeros((3, 6)) + np.eye(6)[[5, 4, 3]], np.zeros((3, 6)), own, 1.0, 1.0)[0]
  carried = advantages_lib.gae(np.zeros((3, 6)) + np.eye(6)[[5, 4, 3]], np.zeros((3, 6)), own, 1.0, 1.0,
                               skip_bn=tool)[0]
  assert float(stopped[0, 0]) == 0.0 and float(carried[0, 0]) == 1.0  # The final reward reaches token 0.

  txs = {"actor": optax.sgd(1e-2)}
  params = {"actor": models["actor_params"]}
  state = PPOState(step=jnp.int32(0), params=params, opt_state={"actor": txs["actor"].init(params["actor"])},
                   kl_coef=jnp.float32(0.2), ema=None, reward=None, rng=jax.random.PRNGKey(0))
  update = jax.jit(steps.make_ppo_update(models["actor"], None, txs, settings))
  moved, _ = update(state, rollout, None, jax.random.PRNGKey(2))
  noise = jnp.asarray(tool * 3.0, jnp.float32)
  moved_noisy, _ = update(state, rollout.replace(log_probs=rollout.log_probs - noise,
                                                 ref_log_probs=rollout.ref_log_probs + noise), None,
                          jax.random.PRNGKey(2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), moved.params, moved_noisy.params)
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), moved.params, params))) > 0


def test_critic_starts_as_the_reward_model(models):
  """The critic's value head reads the normalised reward head: its values are the RM's scores."""
  rm_params = models["rm_params"]
  critic_params = critic_params_from_reward(rm_params)
  tokens = jnp.asarray([[1, 5, 6, 7, 8]])
  np.testing.assert_allclose(_forward(models["critic"], critic_params, tokens).values,
                             _forward(models["rm"], rm_params, tokens).rewards, atol=1e-5)


def test_critic_of_a_likelihood_reward_model_starts_at_the_scores_mean(models):
  """A reward model with a likelihood term (w = 0.8), normalised so that the SFT policy's samples score mean 0
  (as the reward stage does), has a bias far from 0 that cancels the term's mean. The critic made with the
  term's mean (`make_likelihood_mean`, checked against the same RM without the term) values those samples at
  their scored tokens at exactly their mean score, 0, and over their response tokens near 0; the critic made
  without it starts them all near -gain * w * E[L], the bias's scale."""
  rm = models["rm"].clone(reward_likelihood=0.8)
  (prompt, mask), _ = _prompts()
  prompt, mask = np.tile(prompt, (8, 1)), np.tile(mask, (8, 1))  # 24 SFT samples.
  generate = make_generate(models["actor"], max_new_tokens=5, temperature=1.0, stop_ids=(EOT,), pad_id=PAD)
  sample = generate(models["actor_params"], prompt, mask, jax.random.PRNGKey(0))
  collect = make_collect(models["actor"], models["actor"], models["critic"], rm, temperature=1.0,
                         end_of_turn_id=EOT, reward_id=None, pad_id=PAD)
  raw = collect(models["actor_params"], critic_params_from_reward(models["rm_params"]), models["actor_params"],
                models["rm_params"], prompt, mask, sample)
  head = models["rm_params"]["reward_head"]
  fit = rm_eval.fit_normalization(np.asarray(raw.rm_scores), float(head["gain"]), float(head["bias"]))
  rm_params = reward_stage.normalize_params(models["rm_params"], fit)
  assert abs(fit["bias"]) > 1.0  # The offset the fix is about.

  likelihood_mean = float(make_likelihood_mean(rm, end_of_turn_id=EOT, reward_id=None, pad_id=PAD)(
      rm_params, prompt, mask, sample))
  seq, positions, segments, end = reward_inputs(prompt, mask, sample.tokens, sample.mask.astype(jnp.float32),
                                                sample.ended, end_of_turn_id=EOT, reward_id=None, pad_id=PAD)
  at_end = lambda x_bs: np.asarray(jnp.take_along_axis(x_bs, end[:, None], axis=1)[:, 0], np.float64)
  start = np.full(len(seq), prompt.shape[1], np.int32)
  score = at_end(_forward(rm, rm_params, seq, positions, segments, None, start).rewards)
  plain = at_end(_forward(models["rm"], rm_params, seq, positions, segments).rewards)  # The RM without the term.
  assert abs(score.mean()) < 1e-4 and likelihood_mean == pytest.approx((score - plain).mean(), abs=1e-4)

  fixed, unfixed = critic_params_from_reward(rm_params, likelihood_mean), critic_params_from_reward(rm_params)
  m = np.asarray(raw.mask, np.float64)
  mean_value = {}
  for name, critic_params in (("fixed", fixed), ("unfixed", unfixed)):
    end_values = at_end(_forward(models["critic"], critic_params, seq, positions, segments).values)
    rollout = collect(models["actor_params"], critic_params, models["actor_params"], rm_params, prompt, mask, sample)
    mean_value[name] = (end_values.mean(), (np.asarray(rollout.values) * m).sum() / m.sum())
  assert mean_value["fixed"][0] == pytest.approx(0.0, abs=1e-4)
  assert mean_value["unfixed"][0] == pytest.approx(-likelihood_mean, abs=1e-4) and -likelihood_mean > 1.0
  assert abs(mean_value["fixed"][1]) < 0.25 * abs(mean_value["unfixed"][1])  # Over all response tokens.


def test_exact_kl_matches_numpy():
  """losses.exact_kl: sum over counted tokens of sum_v p_v (log p_v - log q_v), against NumPy."""
  rng = np.random.default_rng(0)
  z, zr = rng.normal(size=(2, 3, 7)) * 2, rng.normal(size=(2, 3, 7)) * 2
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  logq = zr - np.log(np.exp(zr).sum(-1, keepdims=True))
  per_token = (np.exp(logp) * (logp - logq)).sum(-1)
  total, count = losses.exact_kl(jnp.asarray(z), jnp.asarray(zr), jnp.asarray(mask))
  assert float(count) == 3
  assert float(total) == pytest.approx(float((per_token * mask).sum()), rel=1e-5)
  same, _ = losses.exact_kl(jnp.asarray(z), jnp.asarray(z), jnp.asarray(mask))
  assert float(same) == 0.0


def test_kl_loss_pulls_the_actor_back_to_the_reference(models):
  """ppo.kl_loss_coef: with every advantage 0 (equal scores, no KL in the reward) the only gradient is the
  exact KL's, so an update lowers the exact KL to the reference on the rollout's tokens and reports it; with
  the actor equal to the reference the term adds exactly nothing; without ref_params the update refuses."""
  _, rollout = _rollout(models, 1.0, 3, ref_params=models["ref_params"])
  rollout = rollout.replace(scores=jnp.zeros(3))
  settings = steps.PPOSettings.from_config(base_config().ppo, temperature=1.0, samples_per_prompt=3,
                                            group_baseline=True, critic_free=True, epochs=1, minibatches=1,
                                            kl_loss_coef=1.0)
  txs = {"actor": optax.sgd(0.5)}
  state_of = lambda p: PPOState(step=jnp.int32(0), params={"actor": p}, opt_state={"actor": txs["actor"].init(p)},
                                kl_coef=jnp.float32(0.0), ema=None, reward=None, rng=jax.random.PRNGKey(0))
  update = jax.jit(steps.make_ppo_update(models["actor"], None, txs, settings, reference=models["actor"]))

  def kl_to_ref(params):
    _, z, _ = rollout_policy(params)
    _, zr, _ = rollout_policy(models["ref_params"])
    total, count = losses.exact_kl(z, zr, rollout.mask)
    return float(total / count)

  rollout_policy = lambda p: jax.jit(rollout_lib.policy_outputs, static_argnums=(0, 6))(
      models["actor"], p, rollout.prompt, rollout.prompt_mask, rollout.tokens, rollout.mask, 1.0)
  before = kl_to_ref(models["actor_params"])
  new_state, metrics = update(state_of(models["actor_params"]), rollout, None, jax.random.PRNGKey(2),
                              models["ref_params"])
  assert float(metrics["ppo/kl_loss"]) == pytest.approx(before, rel=1e-4)
  after = kl_to_ref(new_state.params["actor"])
  assert before > 0.005 and after < 0.9 * before

  # At the reference itself the KL term's gradient is exactly 0: the update is the one without the term.
  plain = jax.jit(steps.make_ppo_update(models["actor"], None, txs,
                                        steps.PPOSettings(**{**settings.__dict__, "kl_loss_coef": 0.0})))
  scored = rollout.replace(scores=jnp.array([0.5, -1.0, 2.0]))
  with_term, _ = update(state_of(models["ref_params"]), scored, None, jax.random.PRNGKey(2), models["ref_params"])
  without, _ = plain(state_of(models["ref_params"]), scored, None, jax.random.PRNGKey(2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), with_term.params["actor"],
               without.params["actor"])
  with pytest.raises(ValueError, match="ref_params"):
    update(state_of(models["actor_params"]), rollout, None, jax.random.PRNGKey(2))
  with pytest.raises(ValueError, match="reference"):
    steps.make_ppo_update(models["actor"], None, txs, settings)


def test_microbatched_update_equals_the_whole_minibatch(models):
  """ppo.microbatches = 3 (one row each, with one ptx row each): gradients accumulated over microbatches give
  the whole minibatch's update -- actor with the exact KL and PPO-ptx, and the critic -- over 2 epochs of SGD,
  to 1e-5, with the same metrics; a count that does not divide a minibatch is refused by the config."""
  _, rollout = _rollout(models, 1.0, 3, ref_params=models["ref_params"])
  rollout = rollout.replace(scores=jnp.array([0.5, -1.0, 2.0]))
  ptx = LMBatch.from_sequences(np.random.default_rng(0).integers(4, 31, (6, 9)))  # 2 epochs x 3 rows.
  tx = optax.sgd(0.5)  # Adam would turn the float noise of a near-zero gradient into a step of lr.
  txs = {"actor": tx, "critic": tx}
  params = {"actor": models["actor_params"], "critic": models["critic_params"]}
  state = PPOState(step=jnp.int32(0), params=params, opt_state={k: tx.init(v) for k, v in params.items()},
                   kl_coef=jnp.float32(0.1), ema=None, reward=None, rng=jax.random.PRNGKey(0))
  results = []
  for micro in (1, 3):
    settings = steps.PPOSettings.from_config(base_config().ppo, temperature=1.0, samples_per_prompt=3,
                                              group_baseline=True, epochs=2, minibatches=1, microbatches=micro,
                                              ptx_coef=0.5, kl_loss_coef=0.3)
    update = jax.jit(steps.make_ppo_update(models["actor"], models["critic"], txs, settings,
                                           reference=models["actor"]))
    results.append(update(state, rollout, ptx, jax.random.PRNGKey(2), models["ref_params"]))
  (whole, whole_metrics), (micro, micro_metrics) = jax.device_get(results)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5), whole.params, micro.params)
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), whole.params, params))) > 1e-3
  for key in ("ppo/policy_loss", "ppo/value_loss", "ppo/ptx_loss", "ppo/kl_loss", "ppo/entropy", "train/loss",
              "ppo/actor_grad_norm", "ppo/critic_grad_norm"):
    np.testing.assert_allclose(micro_metrics[key], whole_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)
  smoke = os.path.join(ROOT, "experiments", "toyworld_ppo.py") + ":smoke"  # 8 rows in 2 minibatches of 4.
  assert main_lib.resolve_config(smoke, ["ppo.microbatches=4", "ppo.ptx_batch=4"]).ppo.microbatches == 4
  with pytest.raises(UserError, match="'ppo.microbatches': 3 must be >= 1 and divide a minibatch's 4 rows"):
    main_lib.resolve_config(smoke, ["ppo.microbatches=3"])


def test_reward_norm_normalises_by_moments_with_this_batch_then_clips(models):
  """ppo.reward_norm with ppo.reward_clip: each score becomes (s - mean) / std over every score so far, this
  rollout's included, then is clipped, then the group baseline applies: the targets are the plain path's
  with those scores, computed here by NumPy; the running statistics are logged."""
  _, rollout = _rollout(models, 1.0, 3, ref_params=models["ref_params"])
  rollout = rollout.replace(scores=jnp.array([0.5, -1.0, 4.0]))
  earlier = np.array([1.0, 2.0, 0.0, 3.0])
  moments = advantages_lib.update_running_moments(advantages_lib.init_running_moments(), jnp.asarray(earlier))
  moments = advantages_lib.update_running_moments(moments, rollout.scores)
  settings = steps.PPOSettings.from_config(base_config().ppo, samples_per_prompt=3, group_baseline=True, gamma=0.9,
                                            lam=0.8, reward_norm=True, reward_clip=1.0)
  batch, stats = steps.ppo_targets(rollout, jnp.float32(0.2), settings, moments)
  seen = np.concatenate([earlier, [0.5, -1.0, 4.0]])
  normalised = np.clip((np.array([0.5, -1.0, 4.0]) - seen.mean()) / seen.std(), -1.0, 1.0)
  assert normalised[2] == 1.0 and -1.0 < normalised[0] < 1.0  # One score clipped, one not.
  centred = normalised - (normalised.sum() - normalised) / 2
  adv, returns = _numpy_targets(rollout.replace(scores=jnp.asarray(centred, jnp.float32)), 0.2, 0.9, 0.8)
  np.testing.assert_allclose(batch.advantages, adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch.returns, returns, rtol=1e-5, atol=1e-5)
  assert float(stats["ppo/score_mean_running"]) == pytest.approx(seen.mean(), rel=1e-6)
  assert float(stats["ppo/score_std_running"]) == pytest.approx(seen.std(), rel=1e-5)
  with pytest.raises(ValueError, match="reward_norm"):
    steps.ppo_targets(rollout, jnp.float32(0.2), settings)


def test_critic_warmup_freezes_the_actor_and_the_state_carries_score_moments(models):
  """ppo.critic_warmup = 1 with Adam, a warm-up schedule, EMA and adaptive beta: the update at iteration 0
  leaves the actor's params and optimizer state (moments and step count) bit for bit as they were, and EMA
  and beta too, while the critic learns; at iteration 1 the actor takes exactly the update a run without
  warm-up would take from the same state (its schedule starts at its first update). With reward_norm the
  state's running moments are those of both rollouts' scores."""
  from rlhf_jax import config as config_lib
  _, rollout = _rollout(models, 1.0, 1, ref_params=models["ref_params"])
  rollouts = [rollout.replace(scores=jnp.array([0.5, -1.0, 2.0])), rollout.replace(scores=jnp.array([3.0, 0.0, 1.0]))]
  optim = config_lib.optim_config()
  optim.lr, optim.warmup_steps = 1e-3, 4
  txs = {name: state_lib.make_optimizer(optim, 20)[0] for name in ("actor", "critic")}
  params = {"actor": models["actor_params"], "critic": models["critic_params"]}
  state = PPOState(step=jnp.int32(0), params=params, opt_state={k: txs[k].init(v) for k, v in params.items()},
                   kl_coef=jnp.float32(0.3), ema=models["actor_params"], reward=None, rng=jax.random.PRNGKey(0),
                   score_moments=advantages_lib.init_running_moments())
  settings = steps.PPOSettings.from_config(base_config().ppo, temperature=1.0, epochs=2, minibatches=1,
                                            adaptive_kl=True, kl_target=0.01, ema_decay=0.5, reward_norm=True,
                                            critic_warmup=1)
  update = jax.jit(steps.make_ppo_update(models["actor"], models["critic"], txs, settings))
  plain = jax.jit(steps.make_ppo_update(models["actor"], models["critic"], txs,
                                        steps.PPOSettings(**{**settings.__dict__, "critic_warmup": 0})))
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  moved = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))

  warm, metrics = update(state, rollouts[0], None, jax.random.PRNGKey(2))
  same(warm.params["actor"], state.params["actor"])
  same(warm.opt_state["actor"], state.opt_state["actor"])
  same(warm.ema, state.ema)
  assert moved(warm.params["critic"], state.params["critic"]) > 0
  assert float(warm.kl_coef) == float(state.kl_coef) and int(warm.step) == 1
  assert float(metrics["ppo/critic_warmup"]) == 1.0 and float(metrics["ppo/policy_loss"]) == 0.0
  assert float(metrics["ppo/value_loss"]) > 0

  after, metrics = update(warm, rollouts[1], None, jax.random.PRNGKey(3))
  expected, _ = plain(warm, rollouts[1], None, jax.random.PRNGKey(3))
  assert float(metrics["ppo/critic_warmup"]) == 0.0 and moved(after.params["actor"], warm.params["actor"]) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after.params["actor"],
               expected.params["actor"])
  counts = [int(x) for x in jax.tree.leaves(after.opt_state["actor"]) if x.dtype == jnp.int32]
  assert counts and set(counts) == {settings.epochs}  # The actor's own updates only: 2, not 4.
  assert float(after.kl_coef) > float(state.kl_coef)  # KL above kl_target: beta adapts after the warm-up.
  scores = np.array([0.5, -1.0, 2.0, 3.0, 0.0, 1.0])
  assert float(after.score_moments.count) == 6
  assert float(after.score_moments.mean) == pytest.approx(scores.mean(), rel=1e-6)
  assert float(after.score_moments.var) == pytest.approx(scores.var(), rel=1e-5)
  assert float(metrics["ppo/score_std_running"]) == pytest.approx(scores.std(), rel=1e-5)
  with pytest.raises(ValueError, match="critic_warmup"):  # No critic to warm up.
    steps.make_ppo_update(models["actor"], None, txs,
                          steps.PPOSettings.from_config(base_config().ppo, critic_warmup=1, critic_free=True))
  with pytest.raises(ValueError, match="critic_warmup"):  # A shared trunk: learning values would move the policy.
    steps.make_ppo_update(models["actor"].clone(heads=("lm", "value")), None, txs,
                          steps.PPOSettings.from_config(base_config().ppo, critic_warmup=1))


# ---------------------------------------------------------------------------------------------------------
# The stage.


@pytest.fixture(scope="module")
def ppo_args(toyworld_smoke, toyworld_reward_smoke):
  return (f"--config.init_from={toyworld_smoke['sft'][0]}", f"--config.ppo.reward_from={toyworld_reward_smoke[0]}")


@pytest.fixture(scope="module")
def ppo_run(toyworld_ppo_smoke):
  return toyworld_ppo_smoke


def test_ppo_stage_smoke(ppo_run):
  """The smoke run finishes with every per-iteration metric the issue lists, and evaluations against SFT."""
  workdir, summary = ppo_run
  assert summary["complete"] is True and summary["step"] == 4
  rows = [r for r in read_metrics(str(workdir)) if "ppo/kl" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for key in ("ppo/score", "ppo/gold", "ppo/kl", "ppo/entropy", "ppo/clip_fraction", "ppo/approx_kl",
              "ppo/value_explained_variance", "ppo/response_length", "ppo/end_of_turn_rate", "ppo/kl_coef",
              "ppo/ptx_loss", "perf/rollout_s", "perf/update_s", "perf/rollout_tokens_per_s"):
    assert all(np.isfinite(r[key]) for r in rows), key
  betas = [r["ppo/kl_coef"] for r in rows]
  start = json.load(open(workdir / "config.json"))["ppo"]["kl_coef"]
  assert betas[0] == pytest.approx(start) and len(set(betas)) > 1  # The smoke config adapts beta.
  for key in ("eval/gold/all", "sft/gold/all", "eval/win_rate_gold", "eval/win_rate_rm", "eval/kl", "eval/rm_score"):
    assert key in summary, key
  assert 0.0 <= summary["eval/win_rate_gold"] <= 1.0


def test_build_ppo_builds_a_run_that_steps_and_writes_nothing(tmp_path, ppo_args):
  """`build_ppo` on the smoke config builds a setup whose `step_fn` runs one iteration (rollout, then update)
  on the setup's own first batch with finite metrics, and leaves the workdir untouched: only the training
  loop writes there."""
  from rlhf_jax.stages import ppo as ppo_stage
  config = main_lib.resolve_config(os.path.join(ROOT, "experiments", "toyworld_ppo.py") + ":smoke",
                                   parse_overrides(["--config.train.batch_size=8", *ppo_args]))
  workdir = tmp_path / "ppo"
  setup = ppo_stage.build_ppo(config, str(workdir))
  assert setup.critic is not None and set(setup.state.params) == {"actor", "critic"}
  state, metrics = setup.step_fn(setup.state, setup.make_batch(next(setup.data())), setup.rng)
  assert int(state.step) == 1
  for key in ("train/loss", "ppo/score", "ppo/gold", "ppo/kl", "ppo/ptx_loss", "ppo/value_loss", "perf/update_s"):
    assert np.isfinite(float(metrics[key])), key
  assert not workdir.exists()


# With ppo.reward_norm and ppo.critic_warmup, so that the running moments and the warm-up's branch resume too
# (a run without them, the same path less those, was a second case: 80 s of suite time, dropped in session 13).
@pytest.mark.parametrize("extra", [("--config.ppo.reward_norm=True", "--config.ppo.critic_warmup=1")],
                         ids=["reward_norm_critic_warmup"])
def test_ppo_resume_after_preemption_is_exact(tmp_path, ppo_args, monkeypatch, extra):
  """SIGTERM during iteration 3 (checkpoints fall every 2) saves a checkpoint once it is done and exits 143;
  re-running the command resumes there and ends with exactly the parameters, optimizer state, beta and EMA
  of the uninterrupted run -- and the scores' running moments, with ppo.reward_norm."""
  workdir = tmp_path / "ppo"
  argv = ["--config", os.path.join(os.path.dirname(__file__), "..", "experiments", "toyworld_ppo.py") + ":smoke",
          "--workdir", str(workdir), "--config.train.batch_size=8", *ppo_args, *extra]
  # Checked after the next iteration: the loop stops at 3.
  assert run_preempted(monkeypatch, argv, key="ppo/kl") == 128 + signal.SIGTERM
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
  assert checkpoints.latest_step() == 3
  checkpoints.close()
  assert main_lib.main(argv) == 0
  reference = tmp_path / "uninterrupted"  # Beside the preempted run, in the same process state.
  run_smoke("toyworld_ppo.py", reference, *ppo_args, *extra)
  step_a, a = checkpoint_state(reference)
  step_b, b = checkpoint_state(workdir)
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert (b.get("score_moments") is not None) == bool(extra)
  assert [r["step"] for r in read_metrics(str(workdir)) if "ppo/kl" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("method", ["rloo", "dr_grpo"])
def test_method_variants_run_through_the_stage(tmp_path, ppo_args, method):
  """`toyworld_ppo.py:smoke,rloo` and `:smoke,dr_grpo` (GRPO's own smoke run is in the methods sweep's test):
  one iteration through the stage with the settings the file's METHODS give, finite losses."""
  from rlhf_jax.config import load_module
  workdir = tmp_path / method
  argv = ["--config", os.path.join(ROOT, "experiments", "toyworld_ppo.py") + f":smoke,{method}", "--workdir",
          str(workdir), "--config.train.batch_size=8", "--config.train.steps=1", "--config.ppo.ptx_coef=0", *ppo_args]
  assert main_lib.main(argv) == 0
  config = json.loads((workdir / "config.json").read_text())["ppo"]
  methods = load_module(os.path.join(ROOT, "experiments", "toyworld_ppo.py")).METHODS
  assert {k: config[k] for k in methods[method]} == methods[method]
  rows = [r for r in read_metrics(str(workdir)) if "ppo/kl" in r]
  assert len(rows) == 1 and np.isfinite(rows[0]["train/loss"])
  assert ("ppo/kl_loss" in rows[0]) == (methods[method]["kl_loss_coef"] > 0)


def test_ppo_stage_with_critic_warmup_and_reward_norm(tmp_path, ppo_args, capsys):
  """ppo.critic_warmup=1, ppo.reward_norm and ppo.reward_clip: iteration 1 trains the critic alone (its
  policy diagnostics unevaluated), iteration 2 both; the logged running mean and std are those of every
  rollout's scores so far, and the checkpoint carries them. The critic starts near the returns' scale (the
  smoke reward model has a likelihood term). critic_warmup with critic_free or shared_critic, or not below
  train.steps, is refused by key."""
  workdir = tmp_path / "warmup"
  summary = run_smoke("toyworld_ppo.py", workdir, *ppo_args, "--config.ppo.critic_warmup=1",
                      "--config.ppo.reward_norm=True", "--config.ppo.reward_clip=2.0", "--config.train.steps=2")
  assert summary["complete"] is True
  rows = [r for r in read_metrics(str(workdir)) if "ppo/kl" in r]
  assert [r["ppo/critic_warmup"] for r in rows] == [1.0, 0.0]
  assert abs(rows[0]["ppo/value_mean"]) < 3.0  # The returns' scale, not the bias's (the smoke RM's is ~100).
  assert rows[0]["ppo/entropy"] == 0.0 and rows[1]["ppo/entropy"] > 0.0 and rows[0]["ppo/value_loss"] > 0.0
  totals = [r["ppo/score_total"] for r in rows]  # Equal batches: the running mean is the mean of their means.
  assert rows[0]["ppo/score_mean_running"] == pytest.approx(totals[0], abs=1e-5)
  assert rows[1]["ppo/score_mean_running"] == pytest.approx(np.mean(totals), abs=1e-5)
  _, state = checkpoint_state(workdir)
  moments = state["score_moments"]
  assert float(moments["count"]) == 16 and float(moments["mean"]) == pytest.approx(np.mean(totals), abs=1e-5)
  assert float(np.sqrt(moments["m2"] / moments["count"])) == pytest.approx(rows[1]["ppo/score_std_running"],
                                                                            rel=1e-5)
  capsys.readouterr()
  for bad, keys in ((("critic_free=True", "critic_warmup=1"), ("ppo.critic_free", "ppo.critic_warmup")),
                    (("shared_critic=True", "critic_warmup=1"), ("ppo.shared_critic", "ppo.critic_warmup")),
                    (("critic_warmup=4",), ("ppo.critic_warmup", "train.steps=4"))):
    argv = ["--config", os.path.join(ROOT, "experiments", "toyworld_ppo.py:smoke"), "--workdir",
            str(tmp_path / "bad"), *ppo_args, *[f"--config.ppo.{b}" for b in bad]]
    assert main_lib.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(key in err[-1] for key in keys), err


def test_ppo_stage_needs_a_reward_model(toyworld_smoke, tmp_path, capsys):
  argv = ["--config", os.path.join(os.path.dirname(__file__), "..", "experiments", "toyworld_ppo.py") + ":smoke",
          "--workdir", str(tmp_path / "ppo"), "--config.train.batch_size=8",
          f"--config.init_from={toyworld_smoke['sft'][0]}", f"--config.ppo.reward_from={tmp_path}"]
  assert main_lib.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no trained reward model" in err[0] and str(tmp_path) in err[0]


def test_ppo_iterated_rounds_retrain_the_reward_model(tmp_path, ppo_args, toyworld_reward_smoke):
  """With rounds every 2 iterations, the policy's samples before iteration 3 are ranked into
  rounds/round_1.jsonl, the reward model (carried in the state) is trained on them with the reward stage's
  comparisons, and the round's metrics are logged."""
  workdir = tmp_path / "ppo"
  summary = run_smoke("toyworld_ppo.py", workdir, *ppo_args, "--config.train.steps=3", "--config.ppo.round_every=2",
                      "--config.ppo.round_prompts=4", "--config.ppo.round_steps=2", "--config.ppo.round_batch=8",
                      # The smoke policy's answers all score 0 and would tie: random rankings keep the round.
                      "--config.toyworld.disagreement=1.0")
  assert summary["complete"] is True
  lines = (workdir / "rounds" / "round_1.jsonl").read_text().splitlines()
  assert 1 <= len(lines) <= 4
  initial = len((toyworld_reward_smoke[0] / "comparisons" / "train.jsonl").read_text().splitlines())
  rows = [r for r in read_metrics(str(workdir)) if "round/index" in r]
  assert [r["step"] for r in rows] == [3] and rows[0]["round/comparisons"] == initial + len(lines)
  # The round trained as a run of the one loop: its own log (the loss it reports) and final checkpoint.
  round_log = [r for r in read_metrics(str(workdir / "rounds" / "round_1")) if "train/loss" in r]
  assert [r["step"] for r in round_log] == [2] and round_log[0]["train/loss"] == rows[0]["round/rm_loss"]
  assert os.listdir(workdir / "rounds" / "round_1" / "checkpoints") == ["2"]
  _, state = checkpoint_state(workdir)
  _, start = convert.load_converted(str(toyworld_reward_smoke[0] / "reward_model"))
  trained = {k: v for k, v in state["reward"]["params"].items() if k != "reward_head"}
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), trained,
                       {k: start[k] for k in trained})
  assert max(jax.tree.leaves(moved)) > 0


def test_initial_comparisons_follow_the_reward_runs_data_path(tmp_path):
  """Rounds start from what the reward model was trained on: the reward run's data.path when it had one
  (the pipeline's separate comparisons stage), else the comparisons it sampled into its own workdir."""
  from rlhf_jax.stages import ppo as ppo_stage
  record = lambda prompt: {"prompt": prompt, "responses": ["a .", "b ."], "ranking": [0, 1]}

  def write(directory, prompts):
    directory.mkdir(parents=True)
    for name in ("train.jsonl", "heldout.jsonl"):
      (directory / name).write_text("".join(json.dumps(record(p)) + "\n" for p in prompts))

  reward_dir = tmp_path / "reward"
  assert ppo_stage.initial_comparisons(str(reward_dir), 0.1) == []
  write(reward_dir / "comparisons", ["own"])
  assert [r["prompt"][-1]["content"] for r in ppo_stage.initial_comparisons(str(reward_dir), 0.1)] == ["own"]
  write(tmp_path / "comparisons", ["given", "given too"])
  (reward_dir / "config.json").write_text(json.dumps({"data": {"path": str(tmp_path / "comparisons")}}))
  assert len(ppo_stage.initial_comparisons(str(reward_dir), 0.1)) == 2


def test_ppo_against_the_gold_scorer(tmp_path, ppo_args, monkeypatch):
  """ppo.reward='gold': the score the update gets for each answer is gold_scale x toyworld's gold score of that
  answer to its own prompt, minus the unfinished penalty -- computed here row by row with
  `toyworld.gold_score` -- and not the reward model's (still logged as ppo/score). The smoke policy's own
  answers all score 0, so in each rollout every other answer is replaced by a demonstrator's, alternately
  right and wrong: gold then varies, and a constant, the reward model or another row's gold would not match.
  The run is the real command; its PPO step is built with spies around generation, the rollout pass and the
  update; 24 new tokens let most demonstrations finish (the smoke tokenizer spells words nearly letter by
  letter). Outside toyworld ppo.reward='gold' is refused by key."""
  from rlhf_jax.data import toyworld
  from rlhf_jax.stages import ppo as ppo_stage
  original, seen = ppo_stage.make_ppo_step, []

  def spied_ppo_step(config, *, generate, collect, update, tokenizer, world, train_prompts, **kwargs):
    current = {}
    rng = np.random.default_rng(0)

    def planted_generate(params, prompt, prompt_mask, key):
      sample = generate(params, prompt, prompt_mask, key)
      host = jax.device_get(sample)
      tokens, mask, ended = np.array(host.tokens), np.array(host.mask), np.array(host.ended)
      n = tokens.shape[1]
      for b in range(0, len(tokens), 2):  # Rows of a prompt are adjacent: each prompt gets one planted answer.
        inst = train_prompts.instances[current["index"][b]]
        answer = toyworld.demonstrate(world, inst, rng, error_rate=float(b // 2 % 2))
        ids = tokenizer.encode(answer) + [tokenizer.end_of_turn_id]
        tokens[b], mask[b], ended[b] = tokenizer.pad_id, np.arange(n) < len(ids), len(ids) <= n
        tokens[b, :min(len(ids), n)] = ids[:n]
      planted = host.replace(tokens=tokens, mask=mask, ended=ended, lengths=mask.sum(-1).astype(np.int32),
                             log_probs=np.where(mask, host.log_probs, 0.0).astype(np.float32),
                             num_steps=np.int32(max(int(host.num_steps), int(mask.sum(-1).max()))))
      current["sample"] = planted
      return jax.tree.map(lambda x, like: jax.device_put(x, like.sharding), planted, sample)

    def spied_collect(*args):
      rollout = collect(*args)
      current["rm_scores"], current["rm_total"] = jax.device_get((rollout.rm_scores, rollout.scores))
      return rollout

    def spied_update(state, rollout, *args):
      seen.append({**current, "scores": np.asarray(jax.device_get(rollout.scores)), "tokenizer": tokenizer,
                   "world": world, "instances": train_prompts.instances})
      return update(state, rollout, *args)

    step = original(config, generate=planted_generate, collect=spied_collect, update=spied_update,
                    tokenizer=tokenizer, world=world, train_prompts=train_prompts, **kwargs)

    def spied_step(state, batch, key):
      current.clear()
      current["index"] = np.asarray(jax.device_get(batch["index"]))
      return step(state, batch, key)

    return spied_step

  monkeypatch.setattr(ppo_stage, "make_ppo_step", spied_ppo_step)
  workdir = tmp_path / "gold"
  summary = run_smoke("toyworld_ppo.py", workdir, *ppo_args, "--config.ppo.reward=gold", "--config.ppo.gold_scale=2.0",
                      "--config.train.steps=2", "--config.ppo.ptx_coef=0", "--config.ppo.max_new_tokens=24")
  assert summary["complete"] is True
  penalty = json.load(open(workdir / "config.json"))["ppo"]["unfinished_penalty"]
  rows = [r for r in read_metrics(str(workdir)) if "ppo/kl" in r]
  assert len(seen) == len(rows) == 2
  for it, r in zip(seen, rows):
    sample, tokenizer = it["sample"], it["tokenizer"]
    texts = [tokenizer.decode(t[m][:-1] if e else t[m]) for t, m, e in zip(sample.tokens, sample.mask, sample.ended)]
    gold = np.array([toyworld.gold_score(it["world"], it["instances"][i], text) for i, text in zip(it["index"], texts)])
    expected = 2.0 * gold - penalty * ~sample.ended
    np.testing.assert_allclose(it["scores"], expected, atol=1e-5)
    assert gold.max() > 0.5 and len(np.unique(gold.round(4))) >= 3, (gold, texts)  # Gold varies.
    assert not np.allclose(it["scores"], it["rm_total"], atol=1e-3)  # Not the reward model's scores.
    # The log says the same: gold, the total score the update used, and the reward model's score beside it.
    assert r["ppo/gold"] == pytest.approx(gold.mean(), abs=1e-5)
    assert r["ppo/score_total"] == pytest.approx(expected.mean(), abs=1e-5)
    assert r["ppo/score"] == pytest.approx(it["rm_scores"].mean(), abs=1e-5)
  argv = ["--config", os.path.join(ROOT, "experiments", "toyworld_ppo.py:smoke"), "--workdir",
          str(tmp_path / "text"), *ppo_args, "--config.ppo.reward=gold", "--config.data.source=text"]
  assert main_lib.main(argv) == 2


def test_ppo_stage_without_a_critic(tmp_path, ppo_args, capsys):
  """ppo.critic_free: the run trains and checkpoints the actor alone, every value is 0; combined with
  ppo.shared_critic it is refused by key. The run also samples with the calculator tool (sampling.tool,
  tools.py): the stage's rollouts and evaluations go through the tool's sampler."""
  workdir = tmp_path / "critic_free"
  summary = run_smoke("toyworld_ppo.py", workdir, *ppo_args, "--config.ppo.critic_free=True",
                      "--config.train.steps=2", "--config.sampling.tool=calculator")
  assert summary["complete"] is True and "eval/gold/all" in summary
  assert json.loads((workdir / "config.json").read_text())["sampling"]["tool"] == "calculator"
  rows = [r for r in read_metrics(str(workdir)) if "ppo/kl" in r]
  assert len(rows) == 2 and all(r["ppo/value_mean"] == 0.0 and "ppo/value_loss" not in r for r in rows)
  _, state = checkpoint_state(workdir)
  assert set(state["params"]) == {"actor"}
  argv = ["--config", os.path.join(ROOT, "experiments", "toyworld_ppo.py:smoke"), "--workdir",
          str(tmp_path / "both"), *ppo_args, "--config.ppo.critic_free=True", "--config.ppo.shared_critic=True"]
  assert main_lib.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "ppo.critic_free" in err[-1] and "ppo.shared_critic" in err[-1]


def test_ppo_seeds_run_as_one_compiled_program(tmp_path, ppo_args):
  """train.seeds=2 with ppo.iterations_per_call=2: one command trains both replicas, two iterations a call
  (rl/iteration.py); the summary and the report give each evaluation's mean, its spread over the seeds and
  the values; and replica 1 ends, to float rounding, with the parameters, EMA and beta of the Python
  iteration run alone with seed 1 (its own prompts, keys and critic start) -- compiled == Python and
  replica i == seed + i at once."""
  from rlhf_jax.eval.report import write_report
  from rlhf_jax.stages import ppo as ppo_stage
  workdir = tmp_path / "seeds"
  summary = run_smoke("toyworld_ppo.py", workdir, *ppo_args, "--config.train.seeds=2",
                      "--config.ppo.iterations_per_call=2", "--config.train.log_every=2",
                      "--config.train.eval_every=4")
  assert summary["complete"] is True and summary["step"] == 4
  for key in ("eval/kl", "eval/rm_score", "eval/gold/all", "eval/win_rate_rm"):
    values = summary[f"{key}/seeds"]
    assert len(values) == 2 and summary[key] == pytest.approx(np.mean(values))
    assert summary[f"{key}/seed_std"] == pytest.approx(np.std(values, ddof=1))
  assert summary["eval/kl/seeds"][0] != summary["eval/kl/seeds"][1]  # Two different runs.
  rows = [r for r in read_metrics(str(workdir)) if "ppo/kl" in r]
  assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["train/loss/seed_std"]) for r in rows)
  numbers = write_report(str(tmp_path / "report"), {"ppo": str(workdir)})
  assert numbers["ppo/eval/kl/seed_std"] == pytest.approx(summary["eval/kl/seed_std"])
  assert "over 2 seeds" in open(numbers["report"]).read()

  config = main_lib.resolve_config(os.path.join(ROOT, "experiments", "toyworld_ppo.py") + ":smoke",
                                   parse_overrides([*ppo_args, "--config.seed=1"]))
  setup = ppo_stage.build_ppo(config, str(tmp_path / "alone"))
  state, data = setup.state, setup.data()
  for _ in range(4):
    state, _ = setup.step_fn(state, setup.make_batch(next(data)), setup.rng)
  _, stacked = checkpoint_state(workdir)
  replica = jax.tree.map(lambda x: x[1], {"params": stacked["params"], "ema": stacked["ema"],
                                          "kl_coef": stacked["kl_coef"]})
  alone = jax.device_get({"params": state.params, "ema": state.ema, "kl_coef": state.kl_coef})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), replica, alone)
