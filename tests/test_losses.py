"""The language-model loss against plain NumPy: the summed negative log-likelihood, the count, and the
arg-max accuracy, whose index is computed without XLA's paired (value, index) reduction."""

import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses


def _logits_with_ties(rng, shape):
  logits = rng.normal(size=shape).astype(np.float32)
  rows = logits.reshape(-1, shape[-1])
  for i in range(0, rows.shape[0], 3):  # Every third row: its maximum also at two other places.
    j = rng.permutation(shape[-1])[:3]
    rows[i, j] = rows[i].max() + 1.0
  rows[1::5, :7] = -np.inf  # Masked-out entries, as a constrained vocabulary leaves them.
  return rows.reshape(shape)


def test_first_max_index_is_numpy_argmax_with_ties_and_minus_infinity():
  rng = np.random.default_rng(0)
  logits = _logits_with_ties(rng, (4, 9, 37))
  got = np.asarray(losses.first_max_index(jnp.asarray(logits)))
  np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
  assert got.dtype == np.int32
  # The ties are there, and the first of them is the one taken.
  assert (np.sum(logits == logits.max(-1, keepdims=True), -1) == 3).sum() >= 10


def test_lm_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = _logits_with_ties(rng, (3, 11, 29))
  logits[np.isinf(logits)] = -30.0  # Finite, so that every target has a log-probability.
  targets = rng.integers(0, 29, size=(3, 11))
  targets[0, :4] = np.argmax(logits[0, :4], -1)  # Some correct predictions, some at a tie.
  mask = (rng.random((3, 11)) < 0.7).astype(np.float32)
  total, count, aux = losses.lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(total), (nll * mask).sum(), rtol=1e-5)
  assert float(count) == mask.sum()
  expected_correct = ((np.argmax(logits, -1) == targets) * mask).sum()
  assert expected_correct > 0
  assert float(aux["correct"]) == expected_correct
