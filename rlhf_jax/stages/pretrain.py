"""Stage 1, pretraining: next-token prediction on raw text.

  texts  <- data.path (or the toyworld corpus)
  tokenizer <- trained on the training texts, saved in the workdir
  rows   <- packed documents with segment ids, or random windows of one token stream (data.layout)
  train the LM step (masked cross-entropy, AdamW) in the one loop; evaluate on the held-out split
"""

from __future__ import annotations

import functools

import numpy as np

from rlhf_jax.artifacts import models
from rlhf_jax.artifacts.documents import load_documents
from rlhf_jax.data import pipelines, toyworld
from rlhf_jax.eval.lm import make_lm_evaluator
from rlhf_jax.stages import common


def tokenizer_texts(config, train_docs: list[str]) -> list[str]:
  """The text the tokenizer is trained on. For toyworld this adds the chat data's words (instructions such
  as "write a review" never occur in the pretraining corpus), so later stages share one vocabulary; without
  their tool calls, so the tool's markers stay lone tokens (`rlhf_jax.tools.marker_ids`) and a world trains
  the same tokenizer with and without `toyworld.calculator_rate`."""
  if config.data.source != "toyworld":
    return train_docs
  tw = config.toyworld
  examples = toyworld.sft_examples(toyworld.make_world(tw.seed), tw.num_sft, tw.seed, tw.error_rate,
                                   **toyworld.demonstrator_rates(tw))
  return train_docs + [toyworld.strip_tool_calls(m["content"]) for ex in examples for m in ex["messages"]]


def run(config, workdir: str) -> dict:
  mesh = common.make_mesh(config)
  train_docs, val_docs = load_documents(config)
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: tokenizer_texts(config, train_docs))
  model = common.model_for(config, workdir, tokenizer)
  t, b = config.train.seq_len, config.train.batch_size

  if config.data.layout == "windows":  # One stream of characters or tokens, as nanoGPT reads Shakespeare.
    train_tokens = np.asarray(tokenizer.encode("".join(train_docs)), np.int32)
    val_tokens = np.asarray(tokenizer.encode("".join(val_docs)), np.int32)
    make_data = functools.partial(pipelines.window_pipeline, train_tokens, t, b)
    eval_batches = functools.partial(pipelines.window_eval_batches, val_tokens, t, b)
  else:
    encode = lambda docs: [pipelines.document_ids(tokenizer, d) for d in docs]
    make_data = functools.partial(pipelines.packed_pipeline, encode(train_docs), t, b)
    val = encode(val_docs)
    eval_batches = lambda: pipelines.packed_pipeline(val, t, b, config.seed, repeat=False)
  lm_eval = make_lm_evaluator(model, mesh, eval_batches, b)  # = heldout_lm_evaluator for packed documents.
  summary = common.train_lm(config, workdir, model=model, mesh=mesh, make_data=make_data,
                            eval_batches=eval_batches, evaluate=lambda state, seed: lm_eval(state),
                            desc="pretrain")
  print(common.result_line("pretrain", summary, ["train/loss", "eval/loss"]))
  return summary
