"""Stage 1, pretraining: next-token prediction on raw text.

  texts  <- data.path (or the toyworld corpus)
  tokenizer <- trained on the training texts, saved in the workdir
  rows   <- packed documents with segment ids, or random windows of one token stream (data.layout)
  train the LM step (masked cross-entropy, AdamW) in the one loop; evaluate on the held-out split
"""

from __future__ import annotations

import functools

import numpy as np

from rlhf_jax.data import pipelines, sources, toyworld
from rlhf_jax.eval.lm import make_lm_evaluator
from rlhf_jax.stages import common


def load_documents(config) -> tuple[list[str], list[str]]:
  """(training documents, validation documents). One document is split by position (nanoGPT), several by
  order: the last `val_fraction` of them are held out."""
  if config.data.source == "toyworld":
    tw = config.toyworld
    world = toyworld.make_world(tw.seed)
    return (list(toyworld.corpus(world, tw.num_docs, seed=tw.seed)),
            list(toyworld.corpus(world, max(tw.num_docs // 20, 1), seed=tw.seed + 1)))
  source = sources.open_source(config.data.path, "pretrain")
  docs = [source[i]["text"] for i in range(len(source))]
  if len(docs) == 1:
    cut = int(len(docs[0]) * (1.0 - config.data.val_fraction))
    return [docs[0][:cut]], [docs[0][cut:]]
  cut = max(1, int(round(len(docs) * (1.0 - config.data.val_fraction))))
  return docs[:cut], docs[cut:]


def tokenizer_texts(config, train_docs: list[str]) -> list[str]:
  """The text the tokenizer is trained on. For toyworld this adds the chat data's words (instructions such
  as "write a review" never occur in the pretraining corpus), so later stages share one vocabulary."""
  if config.data.source != "toyworld":
    return train_docs
  tw = config.toyworld
  examples = toyworld.sft_examples(toyworld.make_world(tw.seed), tw.num_sft, tw.seed, tw.error_rate,
                                   **toyworld.demonstrator_rates(tw))
  return train_docs + [m["content"] for ex in examples for m in ex["messages"]]


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


def run(config, workdir: str) -> dict:
  mesh = common.make_mesh(config)
  train_docs, val_docs = load_documents(config)
  tokenizer = common.resolve_tokenizer(config, workdir, lambda: tokenizer_texts(config, train_docs))
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
