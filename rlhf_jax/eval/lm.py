"""Language-model evaluation: the masked next-token loss over a whole split, exactly (sum / count)."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import losses
from rlhf_jax import mesh as mesh_lib
from rlhf_jax.data import pipelines
from rlhf_jax.data.pipelines import to_lm_batch
from rlhf_jax.model.transformer import Transformer


def pad_rows(rows: dict, size: int) -> dict:
  """Pads a short final batch with all-zero rows (zero mask and segment ids: they count for nothing), so every
  evaluation batch has the shape the step was compiled for."""
  return {k: np.concatenate([v, np.zeros((size - len(v), *v.shape[1:]), v.dtype)]) if len(v) < size else v
          for k, v in rows.items()}


def make_lm_evaluator(model: Transformer, mesh: Mesh, batches: Callable[[], Iterable[dict]], batch_size: int,
                      prefix: str = "eval"):
  """Returns `evaluate(state) -> {prefix/loss, prefix/perplexity, prefix/accuracy, prefix/tokens}`.

  `batches()` yields global host batches (same on every process) of at most `batch_size` rows; each process
  feeds its own rows.
  """
  eval_model = model.clone(deterministic=True)

  @jax.jit
  def totals(params, batch):
    out = eval_model.apply({"params": params}, batch.tokens, batch.positions, batch.segment_ids)
    total, count, aux = losses.lm_loss(out.logits, batch.targets, batch.loss_mask)
    return total, count, aux["correct"]

  def evaluate(state) -> dict:
    total = count = correct = 0.0
    with mesh_lib.activate(mesh):
      for rows in batches():
        rows = pad_rows(rows, batch_size)
        local = jax.tree.map(lambda x: x[mesh_lib.process_batch_slice(x.shape[0])], rows)
        t, c, k = jax.device_get(totals(state.params, mesh_lib.shard_batch(to_lm_batch(local), mesh)))
        total, count, correct = total + float(t), count + float(c), correct + float(k)
    loss = total / max(count, 1.0)
    return {f"{prefix}/loss": loss, f"{prefix}/perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}/accuracy": correct / max(count, 1.0), f"{prefix}/tokens": count}

  return evaluate


def heldout_lm_evaluator(model, mesh, tokenizer, docs: list[str], seq_len: int, batch_size: int, seed: int,
                         prefix: str = "eval"):
  """The held-out pretraining loss as the pretraining stage measures it: documents (BOS + text + EOS) packed
  into rows of `seq_len` with segment ids, so no document attends to another, each token predicted once.
  SFT and PPO report the loss on the same documents through this function, so the alignment tax compares
  with pretraining's own figure (a stream cut into windows scores the same model far worse: the windows
  cross document boundaries the model never attended across, and cut documents mid-way)."""
  if model.config.position == "learned":  # A model with a position table reads no further than it.
    seq_len = min(seq_len, model.config.max_len)
  val = [pipelines.document_ids(tokenizer, d) for d in docs]
  return make_lm_evaluator(model, mesh, lambda: pipelines.packed_pipeline(val, seq_len, batch_size, seed,
                                                                          repeat=False),
                           batch_size, prefix=prefix)
