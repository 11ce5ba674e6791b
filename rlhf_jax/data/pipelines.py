"""Grain input pipelines: token streams -> host-side numpy batches for the training loop.

Every pipeline is deterministic given its seed, restartable from its iterator state (saved in checkpoints),
and reads only this host's part of each global batch: the element order is shuffled identically on every
host, then host h takes elements h, h + P, h + 2P, ... (P processes), and batches `global_batch / P` rows.

Two layouts:
- `window_pipeline`: random windows of T + 1 tokens from one long token stream (nanoGPT's `get_batch`, but
  without replacement: a shuffled pass over every window start, reshuffled each epoch).
- `packed_pipeline`: documents (pretraining text, or SFT conversations with their assistant masks) packed
  first-fit into rows of T + 1 tokens with segment ids and per-document positions, so documents never attend
  to each other (grain's FirstFitPackIterDataset). Longer documents are cut into overlapping pieces of T + 1
  tokens (overlap 1, so every next-token target is kept exactly once).

Rows become `LMBatch`es with `to_lm_batch`: inputs [:-1], targets [1:], loss only within a segment.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import grain
import jax
import numpy as np

from rlhf_jax.batches import LMBatch
from rlhf_jax.errors import UserError
from rlhf_jax.tokenizer import Tokenizer, render_chat


def host_batch_size(global_batch_size: int) -> int:
  n = jax.process_count()
  if global_batch_size % n:
    raise UserError(f"config key 'train.batch_size': {global_batch_size} is not divisible by the {n} processes")
  return global_batch_size // n


def _host_slice(ds: grain.MapDataset) -> grain.MapDataset:
  return ds[jax.process_index()::jax.process_count()]


def window_pipeline(tokens: np.ndarray, seq_len: int, global_batch_size: int, seed: int) -> grain.IterDataset:
  """Endless batches {"tokens": (b, T + 1)} of random windows of `tokens`."""
  tokens = np.asarray(tokens, np.int32)
  num_windows = len(tokens) - seq_len
  if num_windows < 1:
    raise UserError(f"the training text has {len(tokens)} tokens, fewer than train.seq_len + 1 = {seq_len + 1}")
  ds = _host_slice(grain.MapDataset.range(num_windows).seed(seed).shuffle())
  ds = ds.repeat().map(lambda start: {"tokens": tokens[start:start + seq_len + 1]})
  return ds.batch(host_batch_size(global_batch_size), drop_remainder=True).to_iter_dataset()


def window_eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int) -> Iterator[dict]:
  """The whole token stream once, as consecutive windows that together predict every token after the first.

  Each batch has "tokens" (b, T + 1) and "mask" (b, T + 1): rows past the end are padding (mask 0), and the
  last window is shortened so no token is scored twice.
  """
  tokens = np.asarray(tokens, np.int32)
  starts = list(range(0, len(tokens) - 1, seq_len))
  for i in range(0, len(starts), batch_size):
    rows = np.zeros((batch_size, seq_len + 1), np.int32)
    mask = np.zeros((batch_size, seq_len + 1), bool)
    for r, start in enumerate(starts[i:i + batch_size]):
      piece = tokens[start:start + seq_len + 1]
      rows[r, :len(piece)] = piece
      mask[r, :len(piece)] = True
    yield {"tokens": rows, "mask": mask}


def document_ids(tokenizer: Tokenizer, text: str) -> np.ndarray:
  """A pretraining document: BOS, its tokens, EOS (so the model learns where documents start and end)."""
  return np.asarray([tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id], np.int32)


def conversation_ids(tokenizer: Tokenizer, messages: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
  """An SFT example: BOS + the rendered chat, and the mask of tokens the loss counts (assistant turns)."""
  ids, mask = render_chat(tokenizer, messages)
  return (np.concatenate([[tokenizer.bos_id], ids]).astype(np.int32),
          np.concatenate([[False], mask]).astype(bool))


def prompt_ids(tokenizer: Tokenizer, messages: Sequence[dict]) -> np.ndarray:
  """What a model is given to answer: BOS + the chat so far + the assistant role token."""
  ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
  return np.concatenate([[tokenizer.bos_id], ids]).astype(np.int32)


def _pieces(ids: np.ndarray, mask: np.ndarray, length: int):
  """Cuts a sequence into pieces of at most `length` tokens overlapping by one."""
  if len(ids) <= length:
    yield ids, mask
    return
  for start in range(0, len(ids) - 1, length - 1):
    yield ids[start:start + length], mask[start:start + length]


def packed_pipeline(sequences: Sequence[np.ndarray], seq_len: int, global_batch_size: int, seed: int,
                    masks: Optional[Sequence[np.ndarray]] = None, num_packing_bins: int = 16,
                    repeat: bool = True) -> grain.IterDataset:
  """Batches {"tokens", "tokens_segment_ids", "tokens_positions", "mask"} (b, T + 1) of packed documents.

  `masks` (same lengths as `sequences`) marks the tokens the loss may predict; by default all.
  """
  pieces = []
  for i, ids in enumerate(sequences):
    mask = np.ones(len(ids), bool) if masks is None else np.asarray(masks[i], bool)
    for piece, piece_mask in _pieces(np.asarray(ids, np.int32), mask, seq_len + 1):
      if len(piece) >= 2 and piece_mask[1:].any():
        pieces.append((piece, piece_mask))
  if not pieces:
    raise UserError("no training examples left after tokenisation (every example is empty or fully masked)")
  ds = _host_slice(grain.MapDataset.source(pieces).seed(seed).shuffle())
  if repeat:
    ds = ds.repeat()
  ds = ds.map(lambda p: {"tokens": p[0], "mask": p[1]}).to_iter_dataset()
  length = seq_len + 1
  ds = grain.experimental.FirstFitPackIterDataset(ds, length_struct={"tokens": length, "mask": length},
                                                  num_packing_bins=num_packing_bins, seed=seed)
  return ds.batch(host_batch_size(global_batch_size), drop_remainder=repeat)


def to_lm_batch(rows: dict) -> LMBatch:
  """A host batch from either pipeline -> LMBatch (numpy; `mesh.shard_batch` puts it on the devices)."""
  if "tokens_segment_ids" in rows:
    return LMBatch.from_sequences(rows["tokens"], rows["mask"], rows["tokens_segment_ids"], rows["tokens_positions"])
  return LMBatch.from_sequences(rows["tokens"], rows.get("mask"))
