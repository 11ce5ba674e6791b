"""rl/advantages.py against hand computations and plain Python/NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.rl import advantages as adv


def _reference_gae(rewards, values, mask, gamma, lam):
  """The textbook recursion, one response at a time, in float64 Python."""
  out_a = np.zeros_like(rewards, np.float64)
  for b in range(rewards.shape[0]):
    length = int(mask[b].sum())
    next_value = next_adv = 0.0
    for t in reversed(range(length)):
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      next_adv = delta + gamma * lam * next_adv
      next_value = values[b, t]
      out_a[b, t] = next_adv
  return out_a, (out_a + values) * mask


def test_gae_hand_computed_four_steps():
  # Row 0, gamma 1, lambda 0.95, reward 1 at the end, values .5 .6 .7 .8:
  #   d3 = 1 - .8 = .2          A3 = .2
  #   d2 = .8 - .7 = .1         A2 = .1 + .95 * .2    = .29
  #   d1 = .7 - .6 = .1         A1 = .1 + .95 * .29   = .3755
  #   d0 = .6 - .5 = .1         A0 = .1 + .95 * .3755 = .456725
  # Row 1 ends after two tokens: what lies beyond (rewards 9, values 5) must not leak back:
  #   d1 = 2 - 1 = 1            A1 = 1
  #   d0 = 0 + 1 - 1 = 0        A0 = .95
  rewards = jnp.array([[0.0, 0.0, 0.0, 1.0], [0.0, 2.0, 9.0, 9.0]])
  values = jnp.array([[0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 5.0, 5.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
  a, r = adv.gae(rewards, values, mask, gamma=1.0, lam=0.95)
  np.testing.assert_allclose(a, [[0.456725, 0.3755, 0.29, 0.2], [0.95, 1.0, 0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(r, [[0.956725, 0.9755, 0.99, 1.0], [1.95, 2.0, 0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_python_loop_on_random_masked_inputs(gamma, lam):
  rng = np.random.default_rng(0)
  b, n = 6, 11
  rewards, values = rng.normal(size=(b, n)), rng.normal(size=(b, n))
  lengths = np.array([0, 1, 4, 7, 11, 11])
  mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.float64)
  ref_a, ref_r = _reference_gae(rewards, values, mask, gamma, lam)
  a, r = adv.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), jnp.asarray(mask),
                 gamma, lam)
  np.testing.assert_allclose(a, ref_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(r, ref_r, rtol=1e-5, atol=1e-5)


def test_kl_estimators_are_unbiased_and_k3_is_nonnegative():
  # Tokens drawn from p; log p - log q estimates KL(p || q) in expectation (k1 and k3 alike).
  rng = np.random.default_rng(1)
  logits_p, logits_q = rng.normal(size=8), rng.normal(size=8)
  logp = logits_p - np.log(np.exp(logits_p).sum())
  logq = logits_q - np.log(np.exp(logits_q).sum())
  exact = float(np.sum(np.exp(logp) * (logp - logq)))
  draws = rng.choice(8, size=(400, 500), p=np.exp(logp))
  mask = jnp.ones(draws.shape)
  k1 = adv.kl_estimate(jnp.asarray(logp[draws]), jnp.asarray(logq[draws]), mask, "k1")
  k3 = adv.kl_estimate(jnp.asarray(logp[draws]), jnp.asarray(logq[draws]), mask, "k3")
  assert abs(float(k1.mean()) - exact) < 0.02 * max(exact, 0.1) + 0.01
  assert abs(float(k3.mean()) - exact) < 0.02 * max(exact, 0.1) + 0.01
  assert float(k3.min()) >= 0.0
  np.testing.assert_allclose(adv.kl_estimate(jnp.ones((1, 3)), jnp.zeros((1, 3)), jnp.array([[1.0, 1.0, 0.0]])),
                             [[1.0, 1.0, 0.0]])
  with pytest.raises(ValueError, match="k2"):
    adv.kl_estimate(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones((1, 1)), "k2")


def test_shaped_rewards_put_the_score_on_the_last_token():
  kl = jnp.array([[0.1, 0.2, 0.3, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  scores = jnp.array([2.0, -7.0, 0.5])
  r = adv.shaped_rewards(scores, kl, mask, beta=0.5)
  np.testing.assert_allclose(r, [[-0.05, -0.1, -0.15 + 2.0, 0.0], [-0.25 - 7.0, 0, 0, 0], [0, 0, 0, 0.5]],
                             atol=1e-6)
  np.testing.assert_allclose(adv.clip_scores(scores, 1.0), [1.0, -1.0, 0.5])
  np.testing.assert_array_equal(adv.clip_scores(scores, 0.0), scores)  # 0 = off.


def test_running_moments_match_numpy_over_batches_of_different_sizes():
  """Chan et al.'s merge, batch by batch (jitted, float32), ends with the count, mean and population variance
  of all the scores together; scores far from 0 (mean 40, std 3) are where summing x and x^2 would fail."""
  rng = np.random.default_rng(4)
  batches = [rng.normal(40.0, 3.0, size) for size in (1, 7, 64, 3, 250, 2)]
  update = jax.jit(adv.update_running_moments)
  moments = adv.init_running_moments()
  for i, batch in enumerate(batches):
    moments = update(moments, jnp.asarray(batch, jnp.float32))
    seen = np.concatenate(batches[:i + 1])
    assert float(moments.count) == len(seen)
    np.testing.assert_allclose(float(moments.mean), np.mean(seen), rtol=1e-5)
    np.testing.assert_allclose(float(moments.var), np.var(seen), rtol=1e-5, atol=1e-5)
  assert moments.mean.dtype == jnp.float32 and moments.count.dtype == jnp.float32
  x = jnp.asarray(batches[-1], jnp.float32)
  np.testing.assert_allclose(adv.normalize_scores(x, moments), (batches[-1] - seen.mean()) / seen.std(), rtol=1e-4,
                             atol=1e-5)
  single = update(adv.init_running_moments(), jnp.array([2.5]))  # One score: variance 0, normalised to 0.
  assert float(single.var) == 0.0 and float(adv.normalize_scores(jnp.array([2.5]), single)[0]) == 0.0


def test_leave_one_out_baseline_by_hand():
  # Two prompts, three answers each: every score less the mean of the other two of its prompt.
  scores = jnp.array([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
  np.testing.assert_allclose(adv.leave_one_out(scores, 3), [1 - 4, 2 - 3.5, 6 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0],
                             atol=1e-6)
  np.testing.assert_allclose(adv.leave_one_out(scores, 2), [-1, 1, 6, -6, -3, 3], atol=1e-6)
  with pytest.raises(ValueError, match="at least 2"):
    adv.leave_one_out(scores, 1)


def test_group_std_by_hand():
  # Two prompts, three answers each: the sample standard deviation (ddof 1) of each prompt's scores, on every
  # row of the prompt; a group whose answers all score the same has 0.
  scores = jnp.array([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
  first = np.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)  # sqrt(7)
  np.testing.assert_allclose(adv.group_std(scores, 3), [first] * 3 + [0.0] * 3, rtol=1e-6)
  pairs = [np.sqrt(0.5)] * 2 + [np.sqrt(2.0)] * 2 + [0.0] * 2  # (1, 2), (6, 4), (4, 4)
  np.testing.assert_allclose(adv.group_std(scores, 2), pairs, rtol=1e-6)
  with pytest.raises(ValueError, match="at least 2"):
    adv.group_std(scores, 1)


def test_masked_whiten_matches_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(3.0, 2.0, size=(4, 9))
  mask = (rng.random((4, 9)) < 0.6).astype(np.float64)
  kept = x[mask > 0]
  expected = (x - kept.mean()) / kept.std() * mask
  np.testing.assert_allclose(adv.masked_whiten(jnp.asarray(x, jnp.float32), jnp.asarray(mask)), expected,
                             rtol=1e-4, atol=1e-5)
  unshifted = adv.masked_whiten(jnp.asarray(x, jnp.float32), jnp.asarray(mask), shift_mean=False)
  np.testing.assert_allclose(unshifted, (expected + kept.mean()) * mask, rtol=1e-4, atol=1e-5)
  assert jax.device_get(adv.last_token_index(jnp.asarray(mask))).tolist() == [
      int(np.nonzero(row)[0].max()) if row.any() else 0 for row in mask]


def test_ppo_losses_match_numpy():
  """Policy loss, value loss, entropy, clip fractions and approx KL against NumPy on fixed random inputs."""
  from rlhf_jax import losses
  rng = np.random.default_rng(3)
  b, n, v = 5, 7, 11
  logp, old = rng.normal(-2, 0.3, (b, n)), rng.normal(-2, 0.3, (b, n))
  a, values, old_values, returns = (rng.normal(size=(b, n)) for _ in range(4))
  logits = rng.normal(size=(b, n, v))
  mask = (rng.random((b, n)) < 0.7).astype(np.float64)
  eps, veps = 0.2, 0.3
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  ratio = np.exp(logp - old)
  pg = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps, 1 + eps))
  total, count, aux = losses.ppo_policy_loss(f32(logp), f32(old), f32(a), f32(mask), eps)
  np.testing.assert_allclose(float(total) / float(count), (pg * mask).sum() / mask.sum(), rtol=1e-6, atol=1e-6)
  clipped = (-a * np.clip(ratio, 1 - eps, 1 + eps)) > (-a * ratio)
  np.testing.assert_allclose(float(aux["clip_fraction"]) / float(count), (clipped * mask).sum() / mask.sum(),
                             atol=1e-6)
  approx_kl = ((ratio - 1) - np.log(ratio)) * mask
  np.testing.assert_allclose(float(aux["approx_kl"]) / float(count), approx_kl.sum() / mask.sum(), rtol=1e-5,
                             atol=1e-6)

  v_clip = old_values + np.clip(values - old_values, -veps, veps)
  vl = 0.5 * np.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
  total, count, aux = losses.ppo_value_loss(f32(values), f32(old_values), f32(returns), f32(mask), veps)
  np.testing.assert_allclose(float(total) / float(count), (vl * mask).sum() / mask.sum(), rtol=1e-6, atol=1e-6)
  v_clipped = (v_clip - returns) ** 2 > (values - returns) ** 2
  np.testing.assert_allclose(float(aux["value_clip_fraction"]) / float(count),
                             (v_clipped * mask).sum() / mask.sum(), atol=1e-6)

  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ent = -(p * np.log(p)).sum(-1)
  total, count = losses.entropy(f32(logits), f32(mask))
  np.testing.assert_allclose(float(total) / float(count), (ent * mask).sum() / mask.sum(), rtol=1e-6, atol=1e-6)
