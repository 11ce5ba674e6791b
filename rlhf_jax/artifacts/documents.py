"""The pretraining documents of a config: what pretraining trains on, and what SFT and PPO measure the held-out
pretraining loss on (the alignment tax) and PPO-ptx mixes in."""

from __future__ import annotations

from rlhf_jax.data import sources, toyworld

def load_documents(config, path: str = "") -> tuple[list[str], list[str]]:
  """(training documents, validation documents) of `path`, by default data.path (toyworld: its corpus). One
  document is split by position (nanoGPT), several by order: the last `val_fraction` of them are held out."""
  if config.data.source == "toyworld" and not path:
    tw = config.toyworld
    world = toyworld.make_world(tw.seed)
    return (list(toyworld.corpus(world, tw.num_docs, seed=tw.seed)),
            list(toyworld.corpus(world, max(tw.num_docs // 20, 1), seed=tw.seed + 1)))
  source = sources.open_source(path or config.data.path, "pretrain")
  docs = [source[i]["text"] for i in range(len(source))]
  if len(docs) == 1:
    cut = int(len(docs[0]) * (1.0 - config.data.val_fraction))
    return [docs[0][:cut]], [docs[0][cut:]]
  cut = max(1, int(round(len(docs) * (1.0 - config.data.val_fraction))))
  return docs[:cut], docs[cut:]
