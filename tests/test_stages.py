"""Smoke runs of the toyworld stages as a user launches them (the experiments' `smoke` variants), and the
`sample` and `chat` tools on their workdirs."""

import argparse
import io
import json
import os
import re

import numpy as np
import pytest
from conftest import run_smoke

from rlhf_jax import chat, main as main_lib, sample
from rlhf_jax.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = "--config.train.batch_size=8"  # Splits over conftest's 8 fake devices.


@pytest.fixture(scope="module")
def runs(toyworld_smoke):
  return toyworld_smoke


def test_pretrain_writes_the_workdir_contract(runs):
  workdir, summary = runs["pretrain"]
  config = json.load(open(workdir / "config.json"))
  tokenizer = load_tokenizer(str(workdir))
  assert config["model"]["vocab_size"] == tokenizer.vocab_size  # Resolved from the tokenizer.
  assert summary["step"] == config["train"]["steps"] and "eval/loss" in summary and summary["num_params"] > 0
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert any("train/loss" in r for r in rows) and any("eval/loss" in r for r in rows)
  assert os.listdir(workdir / "tensorboard")


def test_sft_starts_from_pretraining_and_reports_gold_scores(runs):
  pre_dir, _ = runs["pretrain"]
  workdir, summary = runs["sft"]
  config = json.load(open(workdir / "config.json"))
  pre_config = json.load(open(pre_dir / "config.json"))
  assert config["model"] == pre_config["model"]  # The architecture came from init_from.
  assert open(workdir / "tokenizer.model", "rb").read() == open(pre_dir / "tokenizer.model", "rb").read()
  for task in ("review", "list", "arithmetic", "repeat", "reverse", "all"):
    assert 0.0 <= summary[f"eval/gold/{task}"] <= 1.0
    assert 0.0 < summary[f"demonstrator/{task}"] <= 1.0
  assert 0.0 <= summary["eval/gold/end_of_turn_rate"] <= 1.0


def test_sample_and_chat_tools(runs, capsys, monkeypatch):
  workdir, _ = runs["sft"]
  assert sample.main(["--workdir", str(workdir), "--prompt", "name 3 fruits .", "--num", "2",
                      "--max-new-tokens", "6"]) == 0
  out = capsys.readouterr().out
  assert out.count("--- sample") == 2
  monkeypatch.setattr("sys.stdin", io.StringIO("what is 3 plus 4 ?\n/reset\nname 2 tools .\n"))
  assert chat.main(["--workdir", str(workdir), "--max-new-tokens", "6", "--greedy"]) == 0
  out = capsys.readouterr().out
  assert out.count("assistant> ") == 2 and "(conversation reset)" in out
  assert sample.main(["--workdir", str(workdir / "nope"), "--prompt", "x"]) == 2
  assert "nope" in capsys.readouterr().err
  # Constrained and voted: one answer, and it matches.
  assert sample.main(["--workdir", str(workdir), "--prompt", "what is 3 plus 4 ?", "--num", "4", "--vote",
                      "--regex", r"-?\d{1,2} \.", "--max-new-tokens", "6"]) == 0
  captured = capsys.readouterr()
  assert re.fullmatch(r"-?\d{1,2} \.\n", captured.out) and "majority of 4" in captured.err
  assert sample.main(["--workdir", str(workdir), "--prompt", "x", "--choices", "yes|no", "--num", "3"]) == 0
  assert set(capsys.readouterr().out.split()) <= {"yes", "no", "---", "sample", "1", "2", "3"}
  assert sample.main(["--workdir", str(workdir), "--prompt", "x", "--regex", "(ab"]) == 2
  assert "constraint regex '(ab'" in capsys.readouterr().err
  parser = argparse.ArgumentParser()
  sample.add_sampling_args(parser)
  tool = lambda *flags: sample.Sampler(parser.parse_args(["--workdir", str(workdir), *flags])).tool
  assert tool("--tool", "calculator").name == "calculator" and tool() is None  # Else the run's sampling.tool ("").


def test_gold_evaluation_constrained_and_voted(runs):
  """`sampling.regex` and `sampling.vote` through the evaluators' one sampler (eval/gold.py)."""
  from rlhf_jax import mesh as mesh_lib
  from rlhf_jax.artifacts.models import load_pretrained
  from rlhf_jax.config import base_config
  from rlhf_jax.data import toyworld
  from rlhf_jax.eval.gold import gold_evaluation

  model, params, tokenizer = load_pretrained(str(runs["sft"][0]), mesh_lib.single_device_mesh())
  world = toyworld.make_world(0)
  instances = [i for i in toyworld.eval_instances(world, 60) if i.task == "arithmetic"][:5]
  sampling = base_config().sampling
  sampling.regex, sampling.vote, sampling.max_new_tokens, sampling.batch_size = r"-?\d{1,2} \.", 3, 6, 8
  metrics, texts = gold_evaluation(model, params, tokenizer, world, instances, sampling)
  assert len(texts) == 5 and all(re.fullmatch(r"-?\d{1,2} \.", t) for t in texts)
  assert 0.0 <= metrics["gold/arithmetic"] <= 1.0 and metrics["gold/end_of_turn_rate"] == 1.0


def test_sft_from_a_hugging_face_checkpoint(runs, tmp_path):
  """A GPT-2 directory as transformers writes it is a valid `init_from`, with a tokenizer given separately."""
  transformers = pytest.importorskip("transformers")
  pre_dir, _ = runs["pretrain"]
  tokenizer = load_tokenizer(str(pre_dir))
  hf_dir = tmp_path / "hf"
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4))
  model.save_pretrained(hf_dir)
  workdir = tmp_path / "sft"
  summary = run_smoke("toyworld_sft.py", workdir, f"--config.init_from={hf_dir}",
                 f"--config.data.tokenizer={pre_dir / 'tokenizer.model'}")
  assert json.load(open(workdir / "config.json"))["model"]["activation"] == "gelu_tanh"
  assert summary["eval/loss"] > 0
  # A tokenizer larger than the model's embedding table is refused with one line.
  small = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=tokenizer.vocab_size - 1, n_positions=64, n_embd=32, n_layer=2, n_head=4))
  small.save_pretrained(tmp_path / "small")
  code = main_lib.main(["--config", os.path.join(ROOT, "experiments", "toyworld_sft.py") + ":smoke",
                        "--workdir", str(tmp_path / "sft2"), BATCH, f"--config.init_from={tmp_path / 'small'}",
                        f"--config.data.tokenizer={pre_dir / 'tokenizer.model'}"])
  assert code == 2


def _mix_config(tmp_path, share, texts=None):
  from rlhf_jax.config import base_config
  config = base_config()
  config.data.pretrain_mix = share
  if texts is not None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config.data.pretrain_mix_path = str(path)
  return config


def test_pretrain_mix_takes_its_share_of_the_tokens_in_whole_documents(tmp_path):
  """data.pretrain_mix: the documents mixed into SFT hold that share of all training tokens (the last one
  tips it over), each a whole document as pretraining encodes it, in a shuffled order that cycles and does
  not depend on the run's seed (replica i of train.seeds = N must equal the run with seed + i)."""
  import numpy as np
  from rlhf_jax.data import pipelines
  from rlhf_jax.errors import UserError
  from rlhf_jax.stages.sft import pretrain_mix
  from rlhf_jax.tokenizer import CharTokenizer
  texts = [f"document {i} " + "ab" * i for i in range(1, 21)]  # The last 10% (2) are held out.
  tokenizer = CharTokenizer.from_text("".join(texts))
  sft_ids = [np.arange(30, dtype=np.int32)] * 10  # 300 tokens.
  whole = {tuple(pipelines.document_ids(tokenizer, t)) for t in texts[:18]}
  config = _mix_config(tmp_path, 0.25, texts)
  mixed = pretrain_mix(config, tokenizer, sft_ids)
  total = sum(len(ids) for ids in mixed)
  assert total >= 100 > total - len(mixed[-1])  # 0.25 / 0.75 x 300 = 100 tokens.
  assert all(tuple(ids) in whole for ids in mixed)
  assert [list(x) for x in pretrain_mix(config, tokenizer, sft_ids)] == [list(x) for x in mixed]
  assert [list(x) for x in mixed] != [list(pipelines.document_ids(tokenizer, t)) for t in texts[:len(mixed)]]
  config.seed = 1
  assert [list(x) for x in pretrain_mix(config, tokenizer, sft_ids)] == [list(x) for x in mixed]
  many = pretrain_mix(_mix_config(tmp_path, 0.9, texts), tokenizer, sft_ids)  # 2,700 tokens: every doc twice+.
  assert sum(len(ids) for ids in many) >= 2700 and len(many) > 2 * 18
  assert len({tuple(ids) for ids in many}) == 18
  assert pretrain_mix(_mix_config(tmp_path, 0.0, texts), tokenizer, sft_ids) == []
  with pytest.raises(UserError, match="data.pretrain_mix_path"):
    pretrain_mix(_mix_config(tmp_path, 0.25), tokenizer, sft_ids)


def test_pretrain_mix_out_of_range_is_refused():
  from rlhf_jax.config import base_config, finalize
  from rlhf_jax.errors import UserError
  for bad in (-0.1, 1.0):
    config = base_config()
    config.data.pretrain_mix = bad
    with pytest.raises(UserError, match="data.pretrain_mix"):
      finalize(config)


def test_sft_trains_on_the_mixed_documents(runs, tmp_path, monkeypatch):
  """sft.run feeds data.pretrain_mix's documents to the loop: with half the tokens from them, far more of each
  training row is in the loss (documents count every token, demonstrations only the assistant's)."""
  from rlhf_jax.artifacts.documents import load_documents
  from rlhf_jax.config import finalize, load_config
  from rlhf_jax.data import pipelines
  from rlhf_jax.stages import common, sft
  pre_dir, _ = runs["pretrain"]
  seen = {}

  def capture(config, workdir, *, make_data, **kwargs):
    rows = iter(make_data(config.seed))
    seen[config.data.pretrain_mix] = np.mean([next(rows)["mask"].mean() for _ in range(8)])
    return {}

  loads = []
  counted = lambda *args: loads.append(args) or load_documents(*args)
  monkeypatch.setattr(common, "train_lm", capture)
  monkeypatch.setattr(common, "result_line", lambda *args: "")
  monkeypatch.setattr(sft, "load_documents", counted)
  for share in (0.0, 0.5):
    config = load_config(os.path.join(ROOT, "experiments", "toyworld_sft.py") + ":smoke")
    config.init_from, config.data.pretrain_mix, config.train.batch_size = str(pre_dir), share, 8
    loads.clear()
    sft.run(finalize(config), str(tmp_path / f"sft{share}"))
    # The toyworld corpus is made once, for the mix and the held-out pretraining loss alike.
    assert len(loads) == 1, (share, loads)
  assert seen[0.5] > seen[0.0] + 0.15, seen
