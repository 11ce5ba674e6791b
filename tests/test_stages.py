"""Smoke runs of the toyworld stages as a user launches them (the experiments' `smoke` variants), and the
`sample` and `chat` tools on their workdirs."""

import argparse
import io
import json
import os
import re

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
