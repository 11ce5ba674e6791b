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

import json
from typing import Any, Iterator, Optional, Sequence

import grain
import jax
import numpy as np

from rlhf_jax.batches import LMBatch, RMBatch
from rlhf_jax.errors import UserError
from rlhf_jax.tokenizer import Tokenizer, render_chat


def host_batch_size(global_batch_size: int) -> int:
  n = jax.process_count()
  if global_batch_size % n:
    raise UserError(f"config key 'train.batch_size': {global_batch_size} is not divisible by the {n} processes")
  return global_batch_size // n


def _host_slice(ds: grain.MapDataset) -> grain.MapDataset:
  return ds[jax.process_index()::jax.process_count()]


# Every element here is a cheap lookup and NumPy slicing, so elements are read on the calling thread, not
# prefetched by grain's default pool of 16 threads: its consumer waits for each element by polling the
# futures (a million `Future.done()` calls over 50 toyworld pretraining batches), 36 ms of Python a batch of
# 32 packed rows against 5.8 ms read in place, the same batches to the last token -- and on a 2-core machine
# that polling takes a core from the training step XLA runs meanwhile. The iterator and its checkpointed
# state ({"next_index": i}) are the same either way.
SYNCHRONOUS = grain.ReadOptions(num_threads=0)


def window_pipeline(tokens: np.ndarray, seq_len: int, global_batch_size: int, seed: int) -> grain.IterDataset:
  """Endless batches {"tokens": (b, T + 1)} of random windows of `tokens`."""
  tokens = np.asarray(tokens, np.int32)
  num_windows = len(tokens) - seq_len
  if num_windows < 1:
    raise UserError(f"the training text has {len(tokens)} tokens, fewer than train.seq_len + 1 = {seq_len + 1}")
  ds = _host_slice(grain.MapDataset.range(num_windows).seed(seed).shuffle())
  ds = ds.repeat().map(lambda start: {"tokens": tokens[start:start + seq_len + 1]})
  return ds.batch(host_batch_size(global_batch_size), drop_remainder=True).to_iter_dataset(SYNCHRONOUS)


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


def scored_sequence(tokenizer: Tokenizer, prompt: np.ndarray, response: Sequence[int], seq_len: int,
                    reward_token: bool = False) -> tuple[np.ndarray, int, int]:
  """A prompt (from `prompt_ids`) and a response's tokens -> (ids, start, end) for the reward model.

  The response is followed by the end-of-turn token (and the reward token if `reward_token`), whose hidden
  state gives the score at `end`; `start` is the response's first position. Too long for `seq_len`: the
  prompt loses its oldest tokens first (its BOS is kept), down to half the row; then the response is cut,
  keeping its closing token(s).
  """
  tail = [tokenizer.end_of_turn_id] + ([tokenizer.reward_id] if reward_token else [])
  content = list(response)[:max(0, seq_len - len(tail) - 1)]
  prompt = np.asarray(prompt, np.int32)
  room = seq_len - len(tail) - len(content)
  if len(prompt) > room:
    keep = max(room, min(len(prompt), seq_len // 2))
    prompt = np.concatenate([prompt[:1], prompt[len(prompt) - keep + 1:]]) if keep > 1 else prompt[:keep]
    content = content[:seq_len - len(tail) - len(prompt)]
  ids = np.concatenate([prompt, np.asarray(content + tail, np.int32)]).astype(np.int32)
  return ids, len(prompt), len(ids) - 1


def comparison_example(tokenizer: Tokenizer, record: dict, seq_len: int, num_responses: int,
                       reward_token: bool = False) -> dict:
  """A comparison record ({"prompt": messages, "responses", "ranking"}) -> host arrays of one batch element:
  "tokens" (K, T), "start", "end", "ranks" (K,), with K = `num_responses` (empty slots have rank -1)."""
  k = len(record["responses"])
  if k > num_responses:
    raise UserError(f"a comparison has {k} responses, more than reward.max_responses={num_responses}")
  prompt = prompt_ids(tokenizer, record["prompt"])
  tokens = np.full((num_responses, seq_len), tokenizer.pad_id, np.int32)
  start = np.zeros(num_responses, np.int32)
  end = np.zeros(num_responses, np.int32)
  ranks = np.full(num_responses, -1, np.int32)
  for i, response in enumerate(tokenizer.encode_batch(record["responses"])):
    ids, start[i], end[i] = scored_sequence(tokenizer, prompt, response, seq_len, reward_token)
    tokens[i, :len(ids)] = ids
    ranks[i] = record["ranking"][i]
  return {"tokens": tokens, "start": start, "end": end, "ranks": ranks}


def comparison_pipeline(examples: Sequence[dict], global_batch_size: int, seed: int,
                        repeat: bool = True) -> grain.IterDataset:
  """Batches of comparison examples (from `comparison_example`), shuffled by seed: for training (`repeat`) this
  host's share, for one pass every process the same global batches (as `packed_pipeline`)."""
  if not examples:
    raise UserError("no comparisons to train on")
  ds = grain.MapDataset.source(list(examples)).seed(seed).shuffle()
  if repeat:
    ds = _host_slice(ds).repeat()
  return ds.batch(host_batch_size(global_batch_size) if repeat else global_batch_size,
                  drop_remainder=repeat).to_iter_dataset(SYNCHRONOUS)


def to_rm_batch(rows: dict) -> RMBatch:
  return RMBatch(tokens=np.asarray(rows["tokens"], np.int32), start=np.asarray(rows["start"], np.int32),
                 end=np.asarray(rows["end"], np.int32), ranks=np.asarray(rows["ranks"], np.int32))


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

  `masks` (same lengths as `sequences`) marks the tokens the loss may predict; by default all. Training
  (`repeat`) gives each process its own rows, host batches of global_batch_size / processes; one pass for
  evaluation (repeat=False) gives every process the same global batches, the last one short, which the
  evaluator pads and splits (eval/lm.py), so all processes run the same number of evaluation steps.
  """
  pieces = []
  for i, ids in enumerate(sequences):
    mask = np.ones(len(ids), bool) if masks is None else np.asarray(masks[i], bool)
    for piece, piece_mask in _pieces(np.asarray(ids, np.int32), mask, seq_len + 1):
      if len(piece) >= 2 and piece_mask[1:].any():
        pieces.append((piece, piece_mask))
  if not pieces:
    raise UserError("no training examples left after tokenisation (every example is empty or fully masked)")
  ds = grain.MapDataset.source(pieces).seed(seed).shuffle()
  if repeat:
    ds = _host_slice(ds).repeat()
  ds = ds.map(lambda p: {"tokens": p[0], "mask": p[1]}).to_iter_dataset(SYNCHRONOUS)
  length = seq_len + 1
  ds = grain.experimental.FirstFitPackIterDataset(ds, length_struct={"tokens": length, "mask": length},
                                                  num_packing_bins=num_packing_bins, seed=seed)
  return ds.batch(host_batch_size(global_batch_size) if repeat else global_batch_size, drop_remainder=repeat)


def to_lm_batch(rows: dict) -> LMBatch:
  """A host batch from either pipeline -> LMBatch (numpy; `mesh.shard_batch` puts it on the devices)."""
  if "tokens_segment_ids" in rows:
    return LMBatch.from_sequences(rows["tokens"], rows["mask"], rows["tokens_segment_ids"], rows["tokens_positions"])
  return LMBatch.from_sequences(rows["tokens"], rows.get("mask"))


def stack_rows(batches: Sequence[Any]) -> Any:
  """Host batches (trees of numpy rows) -> one tree, each leaf stacked on a new leading axis: the replicas
  of a `train.seeds` run (`SeedIterators`), or the K batches of a call of K steps (train/loop.py)."""
  return jax.tree.map(lambda *rows: np.stack(rows), *batches)


class SeedIterators:
  """The data iterators of N replicas (`train.seeds`, one pipeline per seed) as one iterator: yields their
  host batches stacked on a new leading axis, and checkpoints all their positions.

  grain's orbax handler (`grain.checkpoint.CheckpointSave`) saves an iterator that is not a grain
  DatasetIterator as the bytes of `get_state()` and restores it with `set_state(bytes)`, then
  `start_prefetch()`; here the bytes are the JSON list of the N iterators' own states.
  """

  def __init__(self, iterators: Sequence[Iterator[dict]]):
    self.iterators = list(iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return stack_rows([next(it) for it in self.iterators])

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if len(states) != len(self.iterators):
      raise UserError(f"the checkpoint holds the data positions of {len(states)} seeds, but config key "
                      f"'train.seeds' is {len(self.iterators)}")
    for it, one in zip(self.iterators, states):
      it.set_state(one)

  def start_prefetch(self) -> None:
    for it in self.iterators:
      it.start_prefetch()


def left_pad_prompts(prompts: Sequence[np.ndarray], width: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Prompt ids (from `prompt_ids`) -> (tokens (N, width) int32, mask (N, width) bool), left-padded; a prompt
  longer than `width` keeps its first token (BOS) and its last width - 1 (the latest turns)."""
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, ids in enumerate(prompts):
    ids = np.asarray(ids, np.int32)
    if len(ids) > width:
      ids = np.concatenate([ids[:1], ids[len(ids) - width + 1:]])
    tokens[i, width - len(ids):] = ids
    mask[i, width - len(ids):] = True
  return tokens, mask


def ppo_pipeline(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, global_batch_size: int, seed: int,
                 ptx_tokens: Optional[np.ndarray] = None, ptx_rows: int = 0, ptx_seq_len: int = 0,
                 samples_per_prompt: int = 1) -> grain.IterDataset:
  """Endless PPO inputs, one element per iteration: {"index" (b,), "prompt" (b, P), "prompt_mask" (b, P)}
  (this host's share of `global_batch_size` rows: b / samples_per_prompt prompts, shuffled by seed and
  reshuffled every pass, each repeated samples_per_prompt times in consecutive rows) and, when `ptx_rows`,
  "ptx" (r, T + 1): random windows of the pretraining stream `ptx_tokens` for PPO-ptx.

  Element i is a pure function of i (random access into shuffled, repeated datasets), so the iterator's
  state is one integer and a resumed run sees exactly the batches an uninterrupted one would."""
  if len(prompt_tokens) < 1:
    raise UserError("no prompts to train PPO on")
  b = host_batch_size(global_batch_size)
  if b % samples_per_prompt:
    raise UserError(f"config key 'ppo.samples_per_prompt': {samples_per_prompt} does not divide the "
                    f"{b} rows of train.batch_size each process samples")
  prompts = _host_slice(grain.MapDataset.range(len(prompt_tokens)).seed(seed).shuffle()).repeat()
  prompts = prompts.batch(b // samples_per_prompt, drop_remainder=True)
  windows = None
  if ptx_rows:
    ptx_tokens = np.asarray(ptx_tokens, np.int32)
    num_windows = len(ptx_tokens) - ptx_seq_len
    if num_windows < 1:
      raise UserError(f"the PPO-ptx text has {len(ptx_tokens)} tokens, fewer than ppo.ptx_seq_len + 1")
    windows = _host_slice(grain.MapDataset.range(num_windows).seed(seed + 1).shuffle()).repeat()
    windows = windows.batch(host_batch_size(ptx_rows), drop_remainder=True)

  def element(i):
    index = np.repeat(np.asarray(prompts[i], np.int32), samples_per_prompt)
    out = {"index": index, "prompt": prompt_tokens[index], "prompt_mask": prompt_mask[index]}
    if windows is not None:
      out["ptx"] = np.stack([ptx_tokens[start:start + ptx_seq_len + 1] for start in windows[i]])
    return out

  return grain.MapDataset.range(1 << 40).map(element).to_iter_dataset(SYNCHRONOUS)


def encode_responses(tokenizer, pairs, seq_len: int, reward_token: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prompt, response text) pairs -> tokens (N, T), start (N,), end (N,): what `eval.rm.make_scorer` scores."""
  tokens = np.full((len(pairs), seq_len), tokenizer.pad_id, np.int32)
  start = np.zeros(len(pairs), np.int32)
  end = np.zeros(len(pairs), np.int32)
  for n, (prompt, text) in enumerate(pairs):
    ids, start[n], end[n] = scored_sequence(tokenizer, prompt_ids(tokenizer, prompt), tokenizer.encode(text), seq_len,
                                           reward_token)
    tokens[n, :len(ids)] = ids
  return tokens, start, end
