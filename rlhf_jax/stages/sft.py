"""Stage 2, instruction tuning (SFT): the pretraining loss on chat demonstrations, counted only on the
assistant's tokens (InstructGPT section 3.5; the "SFT" box of Karpathy's "State of GPT").

  model, params, tokenizer <- init_from (a pretraining workdir, a converted or a Hugging Face checkpoint)
  conversations <- data.path (JSONL {"messages"} / {"prompt", "response"}) or toyworld demonstrations
  rows <- conversations packed with segment ids; loss mask = assistant content + its end-of-turn token, less
          what a tool wrote in it (sampling.tool: tools.tool_result_mask)
  train the LM step in the one loop; evaluate the held-out loss, and for toyworld the gold score of samples
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from rlhf_jax import judge as judge_lib
from rlhf_jax import tools
from rlhf_jax.artifacts import models
from rlhf_jax.artifacts.documents import load_documents
from rlhf_jax.data import pipelines, sources, toyworld
from rlhf_jax.errors import UserError
from rlhf_jax.eval.gold import gold_evaluation
from rlhf_jax.eval.lm import heldout_lm_evaluator, make_lm_evaluator
from rlhf_jax.stages import common


def load_conversations(config,
                       bad: sources.BadRecords | None = None) -> tuple[list[list[dict]], list[list[dict]]]:
  """(training conversations, held-out conversations), each a list of {"role", "content"} messages; `bad`:
  the invalid records of data.path that may be left out."""
  if config.data.source == "toyworld":
    tw = config.toyworld
    world = toyworld.make_world(tw.seed)
    train = toyworld.sft_examples(world, tw.num_sft, tw.seed, tw.error_rate, split="train",
                                   **toyworld.demonstrator_rates(tw))
    val = toyworld.sft_examples(world, tw.num_val_sft, tw.seed + 1, tw.error_rate, split="heldout",
                                 **toyworld.demonstrator_rates(tw))
    judging = judge_conversations(config, world, tw.judge_sft, tw.seed + 6, "train")
    val_judging = judge_conversations(config, world, tw.judge_sft // 10, tw.seed + 7, "heldout")
    return [ex["messages"] for ex in train] + judging, [ex["messages"] for ex in val] + val_judging
  source = sources.open_source(config.data.path, "sft", bad=bad)
  conversations = [source[i]["messages"] for i in range(len(source))]
  cut = max(1, int(round(len(conversations) * (1.0 - config.data.val_fraction))))
  return conversations[:cut], conversations[cut:] or conversations[-1:]


def judge_conversations(config, world, num: int, seed: int, split: str) -> list[list[dict]]:
  """`num` toyworld judging demonstrations (rlhf_jax/judge.py), the share toyworld.judge_pointwise of them
  pointwise: the questions of the config's judge section with their exact labels."""
  spec = judge_lib.JudgeSpec.from_config(config.judge)
  points = int(round(num * config.toyworld.judge_pointwise))
  pairs = toyworld.judge_pairs(world, num - points, seed, split) if num - points else []
  verdicts = toyworld.judge_verdicts(world, points, seed, split) if points else []
  out = [spec.pair_conversation(toyworld.JUDGE_PRINCIPLES[p["principle"]], p["instance"].prompt, p["first"],
                                p["second"], p["first_better"]) for p in pairs]
  out += [spec.point_conversation(v["instance"].prompt, v["answer"], v["good"]) for v in verdicts]
  order = np.random.default_rng([seed, 0x6A]).permutation(len(out))
  return [out[i] for i in order]


def encode_conversations(tokenizer, conversations, tool: str = "") -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(ids, loss masks) of SFT examples (`pipelines.conversation_ids`); with a `tool` (config key
  sampling.tool), the tokens its calls' results take are out of the loss: the tool writes them when the model
  samples (`tools.tool_result_mask`)."""
  markers = tools.marker_ids(tokenizer) if tool else None
  ids_list, masks = [], []
  for conversation in conversations:
    ids, mask = pipelines.conversation_ids(tokenizer, conversation)
    if markers is not None:
      mask = mask & ~tools.tool_result_mask(ids, *markers)
    ids_list.append(ids)
    masks.append(mask)
  return ids_list, masks


def pretrain_mix(config, tokenizer, sft_ids: list[np.ndarray], documents=None) -> list[np.ndarray]:
  """Pretraining documents (`pipelines.document_ids`) for SFT's training rows: data.pretrain_mix of all its
  training tokens, whole documents in one fixed shuffled order, cycling through them if they are too few; []
  when data.pretrain_mix is 0. The same documents for every seed, so that replica i of a `train.seeds` run
  trains on what the run with seed + i trains on (the pipeline's shuffle is the seed's). `documents`, when
  given, returns what `load_documents(config)` would (the run loads the toyworld corpus once for this and for
  its held-out pretraining loss); it is not used with data.pretrain_mix_path."""
  share = config.data.pretrain_mix
  if share <= 0.0:
    return []
  if config.data.source != "toyworld" and not config.data.pretrain_mix_path:
    raise UserError("config key 'data.pretrain_mix_path': data.pretrain_mix > 0 needs pretraining text to mix "
                    "into SFT (the toyworld corpus is used only with data.source=toyworld)")
  if documents is None or config.data.pretrain_mix_path:
    documents = lambda: load_documents(config, config.data.pretrain_mix_path)
  docs = documents()[0]
  if not docs:
    raise UserError(f"data.pretrain_mix_path={config.data.pretrain_mix_path!r}: no training documents")
  want = share / (1.0 - share) * sum(len(ids) for ids in sft_ids)
  order = np.random.default_rng([0, 0x5F7]).permutation(len(docs))  # One order for all seeds.
  out, have = [], 0
  while have < want:
    ids = pipelines.document_ids(tokenizer, docs[order[len(out) % len(docs)]])
    out.append(ids)
    have += len(ids)
  return out


def run(config, workdir: str) -> dict:
  if not config.init_from:
    raise UserError("config key 'init_from': SFT starts from a pretrained model; name its workdir or checkpoint")
  bad = sources.BadRecords(config.data.max_bad_records)
  train_convs, val_convs = load_conversations(config, bad)  # First: bad data stops the run before any write.
  for line in bad.warnings():
    print(line, file=sys.stderr)
  mesh = common.make_mesh(config)
  model, params, tokenizer = models.load_pretrained(config.init_from, mesh, config.model)
  common.record_model(config, workdir, model.config)
  model = common.adapted(config, model)  # With lora.rank > 0: adapters train, the model stays frozen.
  tokenizer = models.resolve_tokenizer(config, workdir, lambda: [], given=tokenizer)
  models.check_vocab(tokenizer, model.config, config.init_from)
  t, b = config.train.seq_len, config.train.batch_size

  encode = lambda convs: encode_conversations(tokenizer, convs, config.sampling.tool)
  train_ids, train_masks = encode(train_convs)
  val_ids, val_masks = encode(val_convs)
  documents = functools.cache(lambda: load_documents(config))  # Toyworld's corpus: made once, if needed.
  mixed = pretrain_mix(config, tokenizer, train_ids, documents)  # Whole documents, every token in the loss.
  train_ids, train_masks = train_ids + mixed, train_masks + [np.ones(len(ids), bool) for ids in mixed]
  make_data = lambda seed: pipelines.packed_pipeline(train_ids, t, b, seed, masks=train_masks)
  eval_batches = lambda: pipelines.packed_pipeline(val_ids, t, b, config.seed, masks=val_masks, repeat=False)
  lm_eval = make_lm_evaluator(model, mesh, eval_batches, b)

  evaluate = lambda state, seed: lm_eval(state)
  extra = {} if config.data.source == "toyworld" else bad.summary()  # The records of data.path left out.
  if config.data.source == "toyworld":
    tw = config.toyworld
    world = toyworld.make_world(tw.seed)
    heldout = toyworld.eval_instances(world, tw.num_eval_prompts)

    # The held-out pretraining loss, as pretraining measured it: what instruction tuning costs the LM.
    pretrain_eval = heldout_lm_evaluator(model, mesh, tokenizer, documents()[1], config.train.seq_len, b,
                                         config.seed, prefix="eval/pretrain")

    def evaluate_with_gold(state, seed):
      metrics = {**lm_eval(state), **pretrain_eval(state)}
      # The one evaluator: the same answers PPO's evaluation samples from this model (eval/gold.py).
      gold, _ = gold_evaluation(model, state.params, tokenizer, world, heldout, config.sampling, mesh=mesh)
      return {**metrics, **{f"eval/{k}": v for k, v in gold.items()}}

    evaluate = evaluate_with_gold

    # The demonstrators' own gold score on the same prompts: what imitating them perfectly would give.
    rng = np.random.default_rng(tw.seed + 3)
    demos = [toyworld.demonstrate(world, inst, rng, tw.error_rate, **toyworld.demonstrator_rates(tw))
             for inst in heldout]
    extra = {f"demonstrator/{k}": v for k, v in toyworld.mean_gold_by_task(world, heldout, demos).items()}

  summary = common.train_lm(config, workdir, model=model, mesh=mesh, make_data=make_data,
                            eval_batches=eval_batches, evaluate=evaluate, desc="sft", params=params,
                            extra_summary=extra)
  print(common.result_line("sft", summary, ["train/loss", "eval/loss", "eval/gold/all", "demonstrator/all",
                                            "eval/gold/end_of_turn_rate"]))
  return summary
