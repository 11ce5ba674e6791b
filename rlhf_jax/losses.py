"""Pure loss functions. Each returns (sum, denominator, aux) so that averages stay exact when a batch is
split into microbatches or over hosts: add the sums, add the denominators, divide once at the end.

Shapes: B batch, T length, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """log p(target) at every position, (B, T) float32, via a float32 log-softmax."""
  logits_btv = logits_btv.astype(jnp.float32)
  picked_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  return picked_bt - jax.nn.logsumexp(logits_btv, axis=-1)


def first_max_index(logits_btv: jax.Array) -> jax.Array:
  """`jnp.argmax` over the last axis (the first index of the largest value) for values without NaN, as two
  one-operand reductions: the max, then the least index holding it. XLA's CPU backend runs argmax's paired
  (value, index) reduction element by element: this takes about 5% off the toyworld pretraining step (0.95x
  on a 2-core AMD EPYC, benchmarks/README.md), with the loss and the count of correct tokens unchanged."""
  max_bt1 = jnp.max(logits_btv, axis=-1, keepdims=True)
  index_btv = jax.lax.broadcasted_iota(jnp.int32, logits_btv.shape, logits_btv.ndim - 1)
  return jnp.min(jnp.where(logits_btv == max_bt1, index_btv, logits_btv.shape[-1]), axis=-1)


def lm_loss(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array):
  """Masked next-token cross-entropy. Returns (sum of -log p over counted tokens, number counted, aux).

  aux holds `correct`, the number of counted tokens whose arg-max prediction is the target.
  """
  mask_bt = mask_bt.astype(jnp.float32)
  nll_bt = -token_log_probs(logits_btv, targets_bt)
  correct = jnp.sum((first_max_index(logits_btv) == targets_bt) * mask_bt)
  return jnp.sum(nll_bt * mask_bt), jnp.sum(mask_bt), {"correct": correct}


# ---------------------------------------------------------------------------------------------------------
# Reward-model losses over K-wise comparisons. Shapes: B comparisons (one prompt each), K responses (padded
# to the batch's largest K), L aligned response positions. `ranks_bk[b, i]` is the annotator's rank of
# response i (0 best, ties share a rank, -1 for a padding slot). Response i beats j when its rank is lower.
#
# InstructGPT (Ouyang et al. 2022, eq. 1) averages the loss over the C(K,2) pairs of one prompt, and the
# batch averages over prompts: every prompt weighs the same whatever its K or number of ties, and the K
# responses of a prompt go through the model once (the pairs only index their scores).


def pair_weights(ranks_bk: jax.Array) -> jax.Array:
  """(B, K, K) float32: 1 where response i is ranked strictly better than response j, else 0."""
  valid_bk = ranks_bk >= 0
  better_bkk = ranks_bk[:, :, None] < ranks_bk[:, None, :]
  return (better_bkk & valid_bk[:, :, None] & valid_bk[:, None, :]).astype(jnp.float32)


def rank_gaps(ranks_bk: jax.Array) -> jax.Array:
  """(B, K, K) float32: rank_j - rank_i, how many places i is ahead of j (used where i beats j)."""
  return (ranks_bk[:, None, :] - ranks_bk[:, :, None]).astype(jnp.float32)


def _per_prompt_mean(pair_loss_bkk: jax.Array, pair_correct_bkk: jax.Array, weights_bkk: jax.Array):
  """Averages pair values within each prompt, then sums over prompts that have at least one pair."""
  num_pairs_b = weights_bkk.sum((1, 2))
  has_pairs_b = (num_pairs_b > 0).astype(jnp.float32)
  per_prompt = lambda x_bkk: (x_bkk * weights_bkk).sum((1, 2)) / jnp.maximum(num_pairs_b, 1.0)
  return (jnp.sum(per_prompt(pair_loss_bkk)), jnp.sum(has_pairs_b),
          {"correct": jnp.sum(per_prompt(pair_correct_bkk)), "pairs": jnp.sum(num_pairs_b)})


def ranking_loss(scores_bk: jax.Array, ranks_bk: jax.Array, margin: float = 0.0):
  """The pairwise reward-model loss, averaged over each prompt's ordered pairs (winner w, loser l):

    loss(w, l) = -log sigmoid(r_w - r_l - margin x (rank_l - rank_w))

  `margin` 0 is InstructGPT's loss; > 0 asks the scores of pairs further apart in the ranking to differ by
  more (a margin that grows with the preference gap, as Llama 2's RM does with its rating scale).
  Returns (sum over prompts of their mean pair loss, number of prompts with a pair, aux): aux `correct` sums
  over prompts the fraction of pairs ordered right (a tied score counts half), `pairs` counts pairs.
  """
  scores_bk = scores_bk.astype(jnp.float32)
  diff_bkk = scores_bk[:, :, None] - scores_bk[:, None, :]
  weights_bkk = pair_weights(ranks_bk)
  loss_bkk = -jax.nn.log_sigmoid(diff_bkk - margin * rank_gaps(ranks_bk))
  correct_bkk = (diff_bkk > 0).astype(jnp.float32) + 0.5 * (diff_bkk == 0).astype(jnp.float32)
  return _per_prompt_mean(loss_bkk, correct_bkk, weights_bkk)


def aligned_response_scores(rewards_bkt: jax.Array, start_bk: jax.Array, end_bk: jax.Array,
                            length: int) -> jax.Array:
  """(B, K, L) per-token scores aligned by response position: [b, k, l] is the score at the l-th token of
  response k (positions start..end inclusive); past a response's end it holds the score of its last token."""
  offsets_l = jnp.arange(length, dtype=jnp.int32)
  positions_bkl = jnp.minimum(start_bk[..., None] + offsets_l, end_bk[..., None])
  return jnp.take_along_axis(rewards_bkt, positions_bkl, axis=-1)


def per_token_ranking_loss(rewards_bkt: jax.Array, start_bk: jax.Array, end_bk: jax.Array,
                           ranks_bk: jax.Array, threshold: float = 1.0):
  """The per-token reward-model loss of the Fudan seed article: the model scores every response token, and
  at every aligned position l the winner's score must exceed the loser's by `threshold`:

    loss(w, l) = mean over l < max(len_w, len_l) of  -log sigmoid(s_w[l] - s_l[l] - threshold)

  where s[l] is the score after the l-th response token (a response shorter than the other keeps the score
  of its last token, so the final scores are always compared). A smooth hinge: once the difference clears
  the threshold the loss goes to 0. The sequence's reward is its last token's score, as for `ranking_loss`.
  Returns (sum, number of prompts with a pair, aux) like `ranking_loss`; `correct` judges the last tokens.
  """
  rewards_bkt = rewards_bkt.astype(jnp.float32)
  length = rewards_bkt.shape[-1]
  aligned_bkl = aligned_response_scores(rewards_bkt, start_bk, end_bk, length)
  lengths_bk = end_bk - start_bk + 1
  span_bkk = jnp.maximum(lengths_bk[:, :, None], lengths_bk[:, None, :])
  in_span_bkkl = (jnp.arange(length)[None, None, None, :] < span_bkk[..., None]).astype(jnp.float32)
  diff_bkkl = aligned_bkl[:, :, None, :] - aligned_bkl[:, None, :, :]
  loss_bkk = (-jax.nn.log_sigmoid(diff_bkkl - threshold) * in_span_bkkl).sum(-1) / jnp.maximum(span_bkk, 1)
  final_bk = jnp.take_along_axis(rewards_bkt, end_bk[..., None], axis=-1)[..., 0]
  final_diff_bkk = final_bk[:, :, None] - final_bk[:, None, :]
  correct_bkk = (final_diff_bkk > 0).astype(jnp.float32) + 0.5 * (final_diff_bkk == 0).astype(jnp.float32)
  return _per_prompt_mean(loss_bkk, correct_bkk, pair_weights(ranks_bk))


def last_token_scores(rewards_bkt: jax.Array, end_bk: jax.Array) -> jax.Array:
  """(B, K) each response's score: the reward head at its last position."""
  return jnp.take_along_axis(rewards_bkt, end_bk[..., None], axis=-1)[..., 0]


# The `reward.loss` variants, each (rewards_bkt, start_bk, end_bk, ranks_bk, margin, threshold) -> (sum,
# denominator, aux) on the reward head's scores at every position of the K responses. A variant is one entry
# here: config.py accepts exactly these names and train/steps.py:rm_objective looks the loss up here.


def last_token_loss(rewards_bkt, start_bk, end_bk, ranks_bk, margin, threshold):
  """pairwise and reward_token: InstructGPT's loss on the last token's score (the data decides whether that
  token is the end of turn or an appended reward token)."""
  del start_bk, margin, threshold  # Only the margin and per-token variants read them.
  return ranking_loss(last_token_scores(rewards_bkt, end_bk), ranks_bk)


def margin_loss(rewards_bkt, start_bk, end_bk, ranks_bk, margin, threshold):
  """margin: the last-token loss with a margin per rank gap."""
  del start_bk, threshold
  return ranking_loss(last_token_scores(rewards_bkt, end_bk), ranks_bk, margin)


def per_token_loss(rewards_bkt, start_bk, end_bk, ranks_bk, margin, threshold):
  """per_token: the aligned per-token loss of the Fudan seed article."""
  del margin
  return per_token_ranking_loss(rewards_bkt, start_bk, end_bk, ranks_bk, threshold)


REWARD_LOSSES = {"pairwise": last_token_loss, "margin": margin_loss, "per_token": per_token_loss,
                 "reward_token": last_token_loss}


# ---------------------------------------------------------------------------------------------------------
# Offline preference losses on the same K-wise comparisons, from the policy's log-ratio to the reference:
# h_bk = log pi(y_k | x) - log pi_ref(y_k | x), summed over response k's tokens. Every pair (w, l) of a
# ranking (w ranked strictly better; ties and padding slots make no pair) enters with
#
#   dpo  -log sigmoid(beta (h_w - h_l))              Rafailov et al. 2023, "Direct Preference Optimization",
#                                                    eq. 7: the RM loss of eq. 1 with the implicit reward
#                                                    beta h in place of r -- `ranking_loss` on beta h;
#   ipo  (h_w - h_l - 1 / (2 beta))^2                Azar et al. 2023, "A General Theoretical Paradigm to
#                                                    Understand Learning from Human Preferences", eq. 17
#                                                    (tau = beta): the log-ratio gap is regressed to a
#                                                    finite target instead of pushed to infinity.
#
# and, as the RM loss does, each prompt's pairs are averaged and prompts summed: (sum, prompts with a pair,
# aux) with aux `correct` (the fraction of a prompt's pairs whose implicit reward orders them right, a tie
# counting half) and `margin` (the mean implicit-reward gap beta (h_w - h_l)). A new preference loss is one
# function of (h_bk, ranks_bk, beta) in PREFERENCE_LOSSES; config.py accepts exactly its names.


def _pair_gaps(logratio_bk: jax.Array, ranks_bk: jax.Array, beta: float):
  """(beta (h_i - h_j) (B, K, K), pair weights (B, K, K)): the implicit-reward gap of every ordered pair."""
  h_bk = logratio_bk.astype(jnp.float32)
  return beta * (h_bk[:, :, None] - h_bk[:, None, :]), pair_weights(ranks_bk)


def dpo_loss(logratio_bk: jax.Array, ranks_bk: jax.Array, beta: float):
  """DPO's loss averaged over each prompt's pairs (see above)."""
  gap_bkk, weights_bkk = _pair_gaps(logratio_bk, ranks_bk, beta)
  return _preference_mean(-jax.nn.log_sigmoid(gap_bkk), gap_bkk, weights_bkk)


def ipo_loss(logratio_bk: jax.Array, ranks_bk: jax.Array, beta: float):
  """IPO's loss averaged over each prompt's pairs (see above)."""
  gap_bkk, weights_bkk = _pair_gaps(logratio_bk, ranks_bk, beta)
  return _preference_mean(jnp.square(gap_bkk / beta - 1.0 / (2.0 * beta)), gap_bkk, weights_bkk)


def _preference_mean(loss_bkk: jax.Array, gap_bkk: jax.Array, weights_bkk: jax.Array):
  correct_bkk = (gap_bkk > 0).astype(jnp.float32) + 0.5 * (gap_bkk == 0).astype(jnp.float32)
  total, prompts, aux = _per_prompt_mean(loss_bkk, correct_bkk, weights_bkk)
  margin, _, _ = _per_prompt_mean(gap_bkk, correct_bkk, weights_bkk)
  return total, prompts, {**aux, "margin": margin}


PREFERENCE_LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss}


# ---------------------------------------------------------------------------------------------------------
# PPO (Schulman et al. 2017) on response tokens. Shapes: B responses, N tokens, V vocabulary; `mask_bn` is 1
# on the tokens a response has. Each returns (sum over masked tokens, number of masked tokens, aux sums), so
# minibatch averages stay exact under accumulation.


def ppo_policy_loss(log_probs_bn: jax.Array, old_log_probs_bn: jax.Array, advantages_bn: jax.Array,
                    mask_bn: jax.Array, clip_eps: float = 0.2):
  """The clipped surrogate: max(-A r, -A clip(r, 1 - eps, 1 + eps)) with r = pi / pi_old per token.

  aux: `clip_fraction` (tokens where the clipped term is the larger, i.e. the update is cut off) and
  `approx_kl` ((r - 1) - log r, the k3 estimate of KL(pi_old || pi) per token), both as sums.
  """
  mask_bn = mask_bn.astype(jnp.float32)
  log_ratio_bn = (log_probs_bn - old_log_probs_bn).astype(jnp.float32)
  ratio_bn = jnp.exp(log_ratio_bn)
  unclipped_bn = -advantages_bn * ratio_bn
  clipped_bn = -advantages_bn * jnp.clip(ratio_bn, 1.0 - clip_eps, 1.0 + clip_eps)
  loss_bn = jnp.maximum(unclipped_bn, clipped_bn)
  aux = {"clip_fraction": jnp.sum((clipped_bn > unclipped_bn) * mask_bn),
         "approx_kl": jnp.sum((jnp.expm1(log_ratio_bn) - log_ratio_bn) * mask_bn)}
  return jnp.sum(loss_bn * mask_bn), jnp.sum(mask_bn), aux


def ppo_value_loss(values_bn: jax.Array, old_values_bn: jax.Array, returns_bn: jax.Array, mask_bn: jax.Array,
                   clip_eps: float = 0.2):
  """The clipped value loss 0.5 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) per token.
  aux: `value_clip_fraction` (tokens where the clipped error is the larger), as a sum."""
  mask_bn = mask_bn.astype(jnp.float32)
  clipped_bn = old_values_bn + jnp.clip(values_bn - old_values_bn, -clip_eps, clip_eps)
  error_bn = jnp.square(values_bn - returns_bn)
  clipped_error_bn = jnp.square(clipped_bn - returns_bn)
  loss_bn = 0.5 * jnp.maximum(error_bn, clipped_error_bn)
  aux = {"value_clip_fraction": jnp.sum((clipped_error_bn > error_bn) * mask_bn)}
  return jnp.sum(loss_bn * mask_bn), jnp.sum(mask_bn), aux


def exact_kl(logits_bnv: jax.Array, ref_logits_bnv: jax.Array, mask_bn: jax.Array):
  """KL(softmax(logits) || softmax(ref_logits)) summed over the whole vocabulary at each token -- the exact
  per-state divergence, not an estimate from the sampled token: (sum over counted tokens, count). Pass
  logits / temperature for both policies. Its gradient moves every token's distribution back towards the
  reference's directly, with no sampling noise (the KL in the reward reaches the policy only through the
  policy-gradient estimator)."""
  log_p_bnv = jax.nn.log_softmax(logits_bnv.astype(jnp.float32), axis=-1)
  log_q_bnv = jax.nn.log_softmax(ref_logits_bnv.astype(jnp.float32), axis=-1)
  kl_bn = jnp.sum(jnp.exp(log_p_bnv) * (log_p_bnv - log_q_bnv), axis=-1)
  mask_bn = mask_bn.astype(jnp.float32)
  return jnp.sum(kl_bn * mask_bn), jnp.sum(mask_bn)


def entropy(logits_bnv: jax.Array, mask_bn: jax.Array):
  """Entropy of softmax(logits) per token (pass logits / temperature for the sampling policy): (sum, count)."""
  log_p_bnv = jax.nn.log_softmax(logits_bnv.astype(jnp.float32), axis=-1)
  entropy_bn = -jnp.sum(jnp.exp(log_p_bnv) * log_p_bnv, axis=-1)
  mask_bn = mask_bn.astype(jnp.float32)
  return jnp.sum(entropy_bn * mask_bn), jnp.sum(mask_bn)
