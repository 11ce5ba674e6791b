"""PPO rollouts: what the policy wrote, and everything PPO needs about it from one jitted pass.

Shapes: B responses, P prompt width (left-padded), N new tokens, S = P + N, V vocabulary.

The policy's sample (`sampling.generate`) gives the new tokens and their mask (tokens after the end of turn
are padding, mask 0). `make_collect` then runs, in one compiled program, forward passes over prompt +
response of

  - the policy (actor):       log pi_T(y_n)      the "old" log-probs of PPO's ratio,
  - the reference (SFT):      log pi_ref,T(y_n)  for the KL penalty,
  - the critic:               V_n                the value of the state before token n,
  - the reward model:         score              at the response's closing token, normalised,

all at the sampling temperature T: the ratio pi/pi_old and the KL to the reference compare the policies
that actually sampled (log softmax(z / T)). The old log-probs are recomputed by a full forward instead of
taken from the sampler, so that the first minibatch's ratio is exactly 1 (the KV-cache decode and the full
forward agree only to float rounding).

The reward model reads the sequence the way it was trained (`pipelines.scored_sequence`): prompt, response,
end-of-turn token (and the reward token for the `reward_token` variant). A response that ran out of tokens
without ending gets the end-of-turn token appended for scoring, and `unfinished_penalty` is subtracted from
its score.
"""

from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.model.transformer import Transformer


@flax.struct.dataclass
class Rollout:
  """One batch of experience.

  prompt (B, P) int32, prompt_mask (B, P) bool: left-padded prompts.
  tokens (B, N) int32, mask (B, N) float32: the response tokens (incl. the end-of-turn token); mask is 1 on
    the ones the policy wrote, the tokens PPO's ratio, KL and losses count.
  log_probs, ref_log_probs, values (B, N) float32: policy and reference log pi_T of each token, critic value
    before it; 0 where masked.
  tool_mask (B, N) float32 or None: 1 on the tokens a tool wrote (`tools`): in the sequence the models read,
    outside `mask`; GAE passes the value across them. None (or all 0) without a tool.
  scores (B,) float32: the reward model's normalised score minus the unfinished penalty.
  rm_scores (B,) float32: the reward model's normalised score alone.
  ended (B,) bool: the response closed its turn.
  """
  prompt: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  mask: jax.Array
  log_probs: jax.Array
  ref_log_probs: jax.Array
  values: jax.Array
  scores: jax.Array
  rm_scores: jax.Array
  ended: jax.Array
  tool_mask: Optional[jax.Array] = None


def seen_mask(mask_bn: jax.Array, tool_mask_bn: Optional[jax.Array]) -> jax.Array:
  """The response tokens the models read: the policy's own (`mask`) and the tool's."""
  return mask_bn if tool_mask_bn is None else mask_bn + tool_mask_bn.astype(mask_bn.dtype)


def sequence_inputs(prompt_bp: jax.Array, prompt_mask_bp: jax.Array, tokens_bn: jax.Array, mask_bn: jax.Array):
  """Prompt + response as one row: (tokens (B, S), positions (B, S), segment ids (B, S)). Padding on either
  side has segment 0 (invisible); real tokens are segment 1 with positions counting from the first of them."""
  seq_bs = jnp.concatenate([prompt_bp, tokens_bn], axis=1)
  real_bs = jnp.concatenate([prompt_mask_bp.astype(jnp.int32), mask_bn.astype(jnp.int32)], axis=1)
  positions_bs = jnp.maximum(jnp.cumsum(real_bs, axis=1) - 1, 0)
  return seq_bs, positions_bs, real_bs


def response_slice(x_bs: jax.Array, prompt_width: int, num_new: int) -> jax.Array:
  """The columns whose outputs predict (or value the state before) the N response tokens: P-1 .. S-2."""
  return jax.lax.slice_in_dim(x_bs, prompt_width - 1, prompt_width - 1 + num_new, axis=1)


def _response_heads(module: Transformer, seq_bs, positions_bs, segments_bs, prompt_width: int, num_new: int):
  """The trunk over prompt + response, and the LM and value heads (those the model has) at the N response
  columns only: (logits (B, N, V) or None, values (B, N) or None). The heads' outputs at the other columns
  are dead code that XLA removes; applying the LM head to all S columns and slicing afterwards cost a third
  more of its matmuls, and in the backward pass a zero-padded (B, S, V) copy of the logits' gradient."""
  hidden_bnd = response_slice(module(seq_bs, positions_bs, segments_bs).hidden, prompt_width, num_new)
  logits_bnv = module.lm_logits(hidden_bnd) if "lm" in module.heads else None
  values_bn = module.value_head(hidden_bnd) if "value" in module.heads else None
  return logits_bnv, values_bn


def policy_outputs(model: Transformer, params, prompt_bp, prompt_mask_bp, tokens_bn, mask_bn, temperature: float):
  """(log pi_T of each response token (B, N), logits / T at the response columns (B, N, V), values (B, N)
  or None) from one full forward of `model` (values when it has a value head)."""
  p, n = prompt_bp.shape[1], tokens_bn.shape[1]
  seq_bs, positions_bs, segments_bs = sequence_inputs(prompt_bp, prompt_mask_bp, tokens_bn, mask_bn)
  logits_bnv, values_bn = model.apply({"params": params}, seq_bs, positions_bs, segments_bs, p, n,
                                      method=_response_heads)
  scaled_bnv = logits_bnv.astype(jnp.float32) / temperature
  mask_bn = mask_bn.astype(jnp.float32)
  log_probs_bn = losses.token_log_probs(scaled_bnv, tokens_bn) * mask_bn
  values_bn = None if values_bn is None else values_bn * mask_bn
  return log_probs_bn, scaled_bnv, values_bn


def critic_values(model: Transformer, params, prompt_bp, prompt_mask_bp, tokens_bn, mask_bn) -> jax.Array:
  """V(state before each response token), (B, N), 0 where masked."""
  p, n = prompt_bp.shape[1], tokens_bn.shape[1]
  seq_bs, positions_bs, segments_bs = sequence_inputs(prompt_bp, prompt_mask_bp, tokens_bn, mask_bn)
  _, values_bn = model.apply({"params": params}, seq_bs, positions_bs, segments_bs, p, n, method=_response_heads)
  return values_bn * mask_bn.astype(jnp.float32)


def reward_inputs(prompt_bp, prompt_mask_bp, tokens_bn, mask_bn, ended_b, *, end_of_turn_id: int,
                  reward_id: Optional[int], pad_id: int):
  """The reward model's view of each response: prompt + response + end of turn (appended when the response
  did not end) + the reward token (if any). Returns (tokens (B, S + 2), positions, segment ids, end (B,))."""
  b, p = prompt_bp.shape
  n = tokens_bn.shape[1]
  lengths_b = jnp.sum(mask_bn.astype(jnp.int32), axis=1)
  extra = jnp.full((b, 2), pad_id, tokens_bn.dtype)
  body_bm = jnp.concatenate([jnp.where(mask_bn > 0, tokens_bn, pad_id), extra], axis=1)
  real_bm = jnp.concatenate([mask_bn.astype(jnp.int32), jnp.zeros((b, 2), jnp.int32)], axis=1)
  columns_m = jnp.arange(n + 2)
  # Column of the closing end-of-turn token: the response's own, or the first free column.
  eot_b = jnp.where(ended_b, lengths_b - 1, lengths_b)
  put_eot_bm = (~ended_b)[:, None] & (columns_m[None] == eot_b[:, None])
  body_bm = jnp.where(put_eot_bm, end_of_turn_id, body_bm)
  real_bm = jnp.where(put_eot_bm, 1, real_bm)
  last_b = eot_b
  if reward_id is not None:
    put_reward_bm = columns_m[None] == (eot_b + 1)[:, None]
    body_bm = jnp.where(put_reward_bm, reward_id, body_bm)
    real_bm = jnp.where(put_reward_bm, 1, real_bm)
    last_b = eot_b + 1
  seq_bs = jnp.concatenate([prompt_bp, body_bm], axis=1)
  segments_bs = jnp.concatenate([prompt_mask_bp.astype(jnp.int32), real_bm], axis=1)
  positions_bs = jnp.maximum(jnp.cumsum(segments_bs, axis=1) - 1, 0)
  return seq_bs, positions_bs, segments_bs, p + last_b


def strip_value(params: dict) -> dict:
  """The policy's params without a shared critic's value head: what sampling and the evaluations read."""
  return {k: v for k, v in params.items() if k != "value_head"}


def make_collect(actor: Transformer, reference: Transformer, critic: Optional[Transformer],
                 reward_model: Transformer, *, temperature: float, end_of_turn_id: int,
                 reward_id: Optional[int], pad_id: int, unfinished_penalty: float = 0.0,
                 ref_temperature: Optional[float] = None):
  """`collect(actor_params, critic_params, ref_params, rm_params, prompt, prompt_mask, sample) -> Rollout`,
  jitted. `critic` None means the actor carries the value head (a shared trunk), or, for an actor without
  one, that values are not wanted (they are zeros); `sample` is the `SampleOutput` of the policy on these
  prompts. `ref_temperature` (default: `temperature`) is the reference's: an evaluation of a policy sampled
  at another temperature than the reference it is compared with (SFT at T 0.5 against SFT at T 0.7) gets
  its true KL."""
  ref_temperature = temperature if ref_temperature is None else ref_temperature

  def collect(actor_params, critic_params, ref_params, rm_params, prompt_bp, prompt_mask_bp, sample) -> Rollout:
    mask_bn = sample.mask.astype(jnp.float32)  # Every response token, the tool's included.
    tool_bn = None if sample.tool_mask is None else sample.tool_mask.astype(jnp.float32)
    own_bn = mask_bn if tool_bn is None else mask_bn * (1.0 - tool_bn)  # The policy's own tokens.
    tokens_bn = sample.tokens
    log_probs_bn, _, values_bn = policy_outputs(actor, actor_params, prompt_bp, prompt_mask_bp, tokens_bn,
                                                mask_bn, temperature)
    ref_log_probs_bn, _, _ = policy_outputs(reference, ref_params, prompt_bp, prompt_mask_bp, tokens_bn,
                                            mask_bn, ref_temperature)
    if critic is not None:
      values_bn = critic_values(critic, critic_params, prompt_bp, prompt_mask_bp, tokens_bn, mask_bn)
    elif values_bn is None:  # Scoring only (evaluation): no critic at all.
      values_bn = jnp.zeros_like(log_probs_bn)
    seq_bs, positions_bs, segments_bs, end_b = reward_inputs(
        prompt_bp, prompt_mask_bp, tokens_bn, mask_bn, sample.ended, end_of_turn_id=end_of_turn_id,
        reward_id=reward_id, pad_id=pad_id)
    start_b = jnp.full(seq_bs.shape[:1], prompt_bp.shape[1], jnp.int32)  # The response follows the prompt.
    rewards_bs = reward_model.apply({"params": rm_params}, seq_bs, positions_bs, segments_bs,
                                    response_start_b=start_b).rewards
    rm_scores_b = jnp.take_along_axis(rewards_bs, end_b[:, None], axis=1)[:, 0]
    scores_b = rm_scores_b - unfinished_penalty * (~sample.ended).astype(jnp.float32)
    return Rollout(prompt=prompt_bp, prompt_mask=prompt_mask_bp.astype(bool), tokens=tokens_bn, mask=own_bn,
                   log_probs=log_probs_bn * own_bn, ref_log_probs=ref_log_probs_bn * own_bn,
                   values=values_bn * own_bn, scores=scores_b, rm_scores=rm_scores_b, ended=sample.ended,
                   tool_mask=tool_bn)

  return jax.jit(collect)
