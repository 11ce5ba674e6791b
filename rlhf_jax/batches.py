"""Batches that cross module boundaries, as named dataclasses with their shapes written down.

Data pipelines build them on the host from numpy; `mesh.shard_batch` moves them onto the mesh unchanged
(they are pytrees); steps read them by name.
"""

from __future__ import annotations

from typing import Optional

import flax
import jax
import numpy as np


@flax.struct.dataclass
class LMBatch:
  """Next-token prediction: the model reads `tokens` and is scored on `targets` where `loss_mask` is set.

  tokens, targets (B, T) int32; loss_mask (B, T) float32 (1 = counts; 0 = padding, a segment's last token,
  or a non-assistant token in SFT); segment_ids (B, T) int32, 1.. per packed document and 0 for padding,
  or None for rows that are one sequence each (then attention is plainly causal); positions (B, T) int32,
  restarting at 0 in every segment, or None for 0..T-1.
  """
  tokens: jax.Array
  targets: jax.Array
  loss_mask: jax.Array
  segment_ids: Optional[jax.Array] = None
  positions: Optional[jax.Array] = None

  @classmethod
  def from_sequences(cls, sequences_bt1: np.ndarray, mask_bt1: Optional[np.ndarray] = None,
                     segment_ids_bt1: Optional[np.ndarray] = None,
                     positions_bt1: Optional[np.ndarray] = None) -> "LMBatch":
    """Rows of T+1 tokens -> inputs [:-1] and targets [1:] (leading axes, such as a seed axis, are kept).

    `mask_bt1` marks which tokens may be predicted (for SFT: the assistant tokens); a target also counts only
    if it lies in the same (non-padding) segment as its input, so a packed row never learns to predict the
    first token of the next document from the last token of the previous one.
    """
    sequences_bt1 = np.asarray(sequences_bt1, np.int32)
    mask = np.ones(sequences_bt1.shape, bool) if mask_bt1 is None else np.asarray(mask_bt1, bool)
    loss_mask = mask[..., 1:]
    segment_ids = positions = None
    if segment_ids_bt1 is not None:
      seg = np.asarray(segment_ids_bt1, np.int32)
      loss_mask = loss_mask & (seg[..., 1:] == seg[..., :-1]) & (seg[..., 1:] != 0)
      segment_ids = seg[..., :-1]
    if positions_bt1 is not None:
      positions = np.asarray(positions_bt1, np.int32)[..., :-1]
    return cls(tokens=sequences_bt1[..., :-1], targets=sequences_bt1[..., 1:],
               loss_mask=loss_mask.astype(np.float32), segment_ids=segment_ids, positions=positions)


@flax.struct.dataclass
class RMBatch:
  """K-wise comparisons for the reward model: B prompts, each with K responses (padded to the batch's K).

  tokens (B, K, T) int32: BOS + prompt + assistant tag + response + end of turn (+ the reward token for the
    `reward_token` variant), right-padded; each row is one response and goes through the model once.
  start, end (B, K) int32: positions of a response's first token and of the token whose hidden state gives
    the response's score (its last token); a response spans start..end inclusive.
  ranks (B, K) int32: the annotator's rank of each response, 0 best, ties share a rank, -1 = no response.
  """
  tokens: jax.Array
  start: jax.Array
  end: jax.Array
  ranks: jax.Array


@flax.struct.dataclass
class PreferenceBatch:
  """K-wise comparisons for an offline preference loss (DPO, IPO): an RMBatch's fields (tokens (B, K, T),
  start, end, ranks (B, K)) and ref_log_probs (B, K) float32, log pi_ref(response | prompt) summed over each
  response's tokens start..end, computed once before training (0 for padding slots)."""
  tokens: jax.Array
  start: jax.Array
  end: jax.Array
  ranks: jax.Array
  ref_log_probs: jax.Array
