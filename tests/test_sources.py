"""Data sources: every malformed input stops with one line naming its file and line, unless
data.max_bad_records lets a run leave it out (named in a warning and the summary); good input comes back
normalised, by random access, from JSONL, text, ArrayRecord and TFDS."""

import json
import pathlib
import pickle
import sys

import grain
import numpy as np
import pytest

from conftest import BATCH, ROOT
from rlhf_jax import main as main_lib
from rlhf_jax.data import sources
from rlhf_jax.errors import UserError
from rlhf_jax.tokenizer import load_tokenizer

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def write_jsonl(path: pathlib.Path, lines: list) -> pathlib.Path:
  """Writes one line per entry: dicts as JSON, strings as they are (to write malformed lines)."""
  path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
  return path


def hh(*turns: tuple[str, str]) -> str:
  return "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)


# (kind, the line that is wrong, what the message must say). The bad line is written as line 3, after a
# valid record and a blank line, so the reported number is the file's line, not the record's index.
MALFORMED = {
    "bad JSON": ("pretrain", '{"text": "a"', "bad JSON"),
    "not an object": ("pretrain", '["text", "a"]', "expected a JSON object, got an array"),
    "missing key": ("sft", {"turns": [USER, ASSISTANT]}, 'missing key "messages"'),
    "text not a string": ("pretrain", {"text": 3}, '"text" must be a string, got a number'),
    "empty text": ("pretrain", {"text": ""}, '"text" is empty'),
    "content a list": ("sft", {"messages": [USER, {"role": "assistant", "content": ["a"]}]},
                       '"messages"[1]["content"] must be a string, got an array'),
    "turn missing content": ("sft", {"messages": [USER, {"role": "assistant"}]},
                             '"messages"[1] is missing key "content"'),
    "prompt without response": ("sft", {"prompt": "hi"}, 'missing key "response"'),
    "messages and prompt": ("sft", {"messages": [USER, ASSISTANT], "prompt": "hi"}, 'either "messages" or "prompt"'),
    "no assistant turn": ("sft", {"messages": [USER]}, "a conversation with no assistant turn"),
    "unknown role": ("sft", {"messages": [{"role": "bot", "content": "x"}, ASSISTANT]},
                     '"messages"[0]["role"] is "bot"'),
    "system turn not first": ("sft", {"messages": [USER, {"role": "system", "content": "x"}, ASSISTANT]},
                              "a system turn may only come first"),
    "prompt ends with assistant": ("prompts", {"messages": [USER, ASSISTANT]}, "ends with an assistant turn"),
    "prompt missing": ("prompts", {"text": "hi"}, 'missing key "prompt"'),
    "K < 2": ("comparisons", {"prompt": "p", "responses": ["a"], "ranking": [0]}, "at least 2"),
    "ranking wrong length": ("comparisons", {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]},
                             '"ranking" has 2 entries for 3 responses'),
    "rank not an int": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1.5]},
                        '"ranking"[1] must be an integer'),
    "rank negative": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [-1, 0]},
                      '"ranking"[0] is -1'),
    "missing rank": ("comparisons", {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 2, 2]},
                     "skips rank 1"),
    "all tied": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "ties all 2"),
    "order repeats an index": ("comparisons", {"prompt": "p", "responses": ["a", "b", "c"], "order": [2, 0, 2]},
                               '"order" repeats index 2 and leaves out index 1'),
    "order out of range": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "order": [0, 2]},
                           '"order"[1] is 2'),
    "ranking and order": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1],
                                          "order": [0, 1]}, 'either "ranking" or "order"'),
    "pair missing rejected": ("comparisons", {"prompt": "p", "chosen": "a"}, 'missing key "rejected"'),
    "gold wrong length": ("comparisons", {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2],
                                          "gold": [0.5, 0.2]}, '"gold" must be an array of 3 numbers'),
    "gold not an array": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "gold": 0.5},
                          '"gold" must be an array of 2 numbers'),
    "gold above 1": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "gold": [0.5, 1.5]},
                     '"gold"[1] must be a number in [0, 1], got 1.5'),
    "gold negative": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1],
                                      "gold": [-0.1, 0.0]}, '"gold"[0] must be a number in [0, 1]'),
    "gold a boolean": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1],
                                       "gold": [1.0, True]}, '"gold"[1] must be a number in [0, 1]'),
    "gold a string": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1],
                                      "gold": ["0.5", 0.1]}, '"gold"[0] must be a number in [0, 1]'),
    "task not a string": ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "task": 3},
                          '"task" must be a string, got a number'),
    "HH with no final Assistant turn": ("comparisons", {"chosen": hh(("Human", "hi"), ("Assistant", "a")),
                                                        "rejected": hh(("Human", "hi"), ("Assistant", "b"),
                                                                       ("Human", "more?"))},
                                        '"rejected" transcript has no final "Assistant:" turn'),
    "HH not a transcript": ("comparisons", {"chosen": "just text",
                                            "rejected": hh(("Human", "hi"), ("Assistant", "b"))},
                            '"chosen" does not start with a "Human:" or "Assistant:" turn'),
    "HH share no turn": ("comparisons", {"chosen": hh(("Human", "hi"), ("Assistant", "a")),
                                         "rejected": hh(("Human", "hello"), ("Assistant", "b"))},
                         'the "chosen" and "rejected" transcripts differ from their first turn'),
}

VALID = {
    "pretrain": {"text": "a document"},
    "sft": {"messages": [USER, ASSISTANT]},
    "prompts": {"prompt": "hi"},
    "comparisons": {"prompt": "p", "chosen": "a", "rejected": "b"},
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_jsonl_line_names_file_and_line(tmp_path, case):
  kind, bad_line, message = MALFORMED[case]
  path = write_jsonl(tmp_path / "data.jsonl", [VALID[kind], "", bad_line, VALID[kind]])
  with pytest.raises(UserError, match=r"data\.jsonl:3: ") as error:
    sources.open_jsonl(path, kind)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_unterminated_string_on_the_last_line_reads_once_at(tmp_path):
  """json's own message ends in "starting at": the error says "at character N" once, not "at at"."""
  path = tmp_path / "data.jsonl"
  path.write_bytes(b'{"text": "a"}\n{"text": "b')  # No newline at the end: the string runs to the end of input.
  with pytest.raises(UserError) as error:
    sources.open_jsonl(path, "pretrain")
  assert str(error.value) == f"{path}:2: bad JSON: Unterminated string starting at character 10"


@pytest.mark.parametrize("contents, says", [(b"", "the file is empty"),
                                            (b"\n  \n\n", "the file holds only blank lines")])
def test_jsonl_without_records(tmp_path, contents, says):
  path = tmp_path / "empty.jsonl"
  path.write_bytes(contents)
  with pytest.raises(UserError, match=rf"empty\.jsonl: no records: {says}"):
    sources.open_jsonl(path, "pretrain")


def test_jsonl_invalid_utf8_names_line_and_offset(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"text": "ok"}\n{"text": "ok"}\n{"text": "caf\xe9"}\n')
  with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid UTF-8: byte 0xe9 at file offset 43$"):
    sources.open_jsonl(path, "pretrain")


def test_missing_jsonl_file(tmp_path):
  with pytest.raises(UserError, match=r"nope\.jsonl: cannot open: No such file"):
    sources.open_jsonl(tmp_path / "nope.jsonl", "sft")


def test_jsonl_random_access_skips_blank_lines(tmp_path):
  path = tmp_path / "docs.jsonl"
  # A byte-order mark, blank and whitespace-only lines, CRLF endings and multi-byte characters: none of them
  # may shift a record's offset.
  path.write_bytes("\ufeff\n".encode() + b'{"text": "zero"}\r\n\n   \n{"text": "\xc3\xa9t\xc3\xa9"}\n\n'
                   b'{"text": "two", "id": 7}\n\t\n{"text": "three"}')
  source = sources.open_jsonl(path, "pretrain")
  assert isinstance(source, grain.sources.RandomAccessDataSource)
  assert len(source) == 4
  assert [source[i]["text"] for i in (3, 1, 0, 2, -1)] == ["three", "été", "zero", "two", "three"]
  assert source[2] == {"text": "two"}  # Keys we do not use are dropped.
  with pytest.raises(IndexError):
    source[4]
  assert pickle.loads(pickle.dumps(source))[1] == {"text": "été"}
  assert grain.MapDataset.source(source)[3] == {"text": "three"}


def test_sft_prompt_response_becomes_two_turns(tmp_path):
  system = {"role": "system", "content": "be brief", "name": "ignored"}
  path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "2+2?", "response": "4"},
                                              {"messages": [system, USER, ASSISTANT, USER]}])
  source = sources.open_jsonl(path, "sft")
  assert source[0] == {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
  assert source[1] == {"messages": [{"role": "system", "content": "be brief"}, USER, ASSISTANT, USER]}


def test_prompts_normalise_to_messages(tmp_path):
  path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"messages": [USER, ASSISTANT, USER]}])
  source = sources.open_jsonl(path, "prompts")
  assert source[0] == {"messages": [USER]}
  assert source[1] == {"messages": [USER, ASSISTANT, USER]}


def test_comparison_forms_normalise_to_one_record(tmp_path):
  path = write_jsonl(tmp_path / "rm.jsonl", [
      {"prompt": "p", "chosen": "good", "rejected": "bad"},
      {"prompt": [USER], "responses": ["a", "b", "c", "d"], "ranking": [1, 0, 2, 1]},
      {"prompt": "p", "responses": ["a", "b", "c"], "order": [2, 0, 1]},
  ])
  source = sources.open_jsonl(path, "comparisons")
  prompt = [{"role": "user", "content": "p"}]
  assert source[0] == {"prompt": prompt, "responses": ["good", "bad"], "ranking": [0, 1]}
  assert source[1] == {"prompt": [USER], "responses": ["a", "b", "c", "d"], "ranking": [1, 0, 2, 1]}
  # order [2, 0, 1]: response 2 is best, then 0, then 1.
  assert source[2] == {"prompt": prompt, "responses": ["a", "b", "c"], "ranking": [1, 2, 0]}


def test_comparison_keeps_simulated_gold_and_task(tmp_path):
  """A K-wise comparison's optional "gold" (numbers in [0, 1], integers included) and "task" are kept."""
  path = write_jsonl(tmp_path / "rm.jsonl", [
      {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 0, 2], "gold": [0.5, 1, 0], "task": "list",
       "instance": {"ignored": True}},
      {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]},
  ])
  source = sources.open_jsonl(path, "comparisons")
  assert source[0] == {"prompt": [{"role": "user", "content": "p"}], "responses": ["a", "b", "c"],
                       "ranking": [1, 0, 2], "gold": [0.5, 1.0, 0.0], "task": "list"}
  assert all(isinstance(g, float) for g in source[0]["gold"])
  assert "gold" not in source[1] and "task" not in source[1]


def test_hh_transcripts_split_into_shared_prompt_and_final_responses(tmp_path):
  prompt = ("\n\nHuman: What should I cook tonight?\n\nAssistant: Do you have rice?\n\n"
            "Human:  Yes, and eggs.\n\nAssistant: Fried rice, then.\n\nHuman: How long does it take?  \n")
  record = {"chosen": prompt + "\n\nAssistant: About 20 minutes.\n\n",
            "rejected": prompt.rstrip() + "\n\nAssistant:  An hour or so. \n"}
  path = write_jsonl(tmp_path / "hh.jsonl", [record])
  assert sources.open_jsonl(path, "comparisons")[0] == {
      "prompt": [
          {"role": "user", "content": "What should I cook tonight?"},
          {"role": "assistant", "content": "Do you have rice?"},
          {"role": "user", "content": "Yes, and eggs."},
          {"role": "assistant", "content": "Fried rice, then."},
          {"role": "user", "content": "How long does it take?"},
      ],
      "responses": ["About 20 minutes.", "An hour or so."],
      "ranking": [0, 1],
  }


def test_read_text_directory_sorted_and_recursive(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "1.txt").write_text("b1")
  (tmp_path / "a.txt").write_text("a")
  (tmp_path / "c.txt").write_text("c\n")
  (tmp_path / "notes.md").write_text("not text")
  assert sources.read_text(tmp_path) == ["a", "b1", "c\n"]
  source = sources.open_source(tmp_path, "pretrain")
  assert [source[i] for i in range(len(source))] == [{"text": "a"}, {"text": "b1"}, {"text": "c\n"}]


def test_read_text_invalid_utf8_names_line_and_offset(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_bytes(b"line one\nline two\nbad \xff byte\n")
  with pytest.raises(UserError, match=r"corpus\.txt:3: invalid UTF-8: byte 0xff at file offset 22$"):
    sources.read_text(path)


@pytest.mark.parametrize("contents", [b"", b" \n\n"])
def test_read_text_empty_file(tmp_path, contents):
  (tmp_path / "a.txt").write_text("fine")
  (tmp_path / "z.txt").write_bytes(contents)
  with pytest.raises(UserError, match=r"z\.txt: empty file"):
    sources.read_text(tmp_path)


def test_read_text_missing_path_and_directory_without_text(tmp_path):
  with pytest.raises(UserError, match="no such file or directory"):
    sources.read_text(tmp_path / "missing.txt")
  (tmp_path / "data.csv").write_text("a,b")
  with pytest.raises(UserError, match="a directory with no .txt files"):
    sources.read_text(tmp_path)


def test_array_record_round_trip_across_a_glob(tmp_path):
  records = [VALID["comparisons"], {"prompt": "q", "responses": ["x", "y", "z"], "ranking": [0, 1, 1]}]
  assert sources.write_array_record(tmp_path / "rm-0.array_record", records) == 2
  sources.write_array_record(tmp_path / "rm-1.array_record", [{"prompt": "ü", "chosen": "c", "rejected": "r"}])
  source = sources.open_source(str(tmp_path / "rm-*.array_record"), "comparisons")
  assert isinstance(source, grain.sources.RandomAccessDataSource)
  assert len(source) == 3
  assert source[2] == {"prompt": [{"role": "user", "content": "ü"}], "responses": ["c", "r"], "ranking": [0, 1]}
  assert source[1]["ranking"] == [0, 1, 1]
  assert pickle.loads(pickle.dumps(source))[0]["responses"] == ["a", "b"]


def test_array_record_errors_name_file_and_record(tmp_path):
  sources.write_array_record(tmp_path / "a.array_record", [{"text": "one"}])
  sources.write_array_record(tmp_path / "b.array_record", [{"text": "two"}, {"text": "three"}, {"txt": "four"}])
  with pytest.raises(UserError, match=r'b\.array_record: record 2: missing key "text"'):
    sources.open_array_record([tmp_path / "a.array_record", tmp_path / "b.array_record"], "pretrain")
  with pytest.raises(UserError, match=r"c-\*\.array_record: no files match"):
    sources.open_array_record(str(tmp_path / "c-*.array_record"), "pretrain")
  (tmp_path / "junk.array_record").write_bytes(b"junk" * 100)
  with pytest.raises(UserError, match=r"junk\.array_record: not an ArrayRecord file"):
    sources.open_array_record(tmp_path / "junk.array_record", "pretrain")


def test_open_source_dispatch_and_rejections(tmp_path):
  jsonl = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
  assert isinstance(sources.open_source(jsonl, "prompts"), sources.JsonlSource)
  (tmp_path / "doc.txt").write_text("text")
  assert sources.open_source(tmp_path / "doc.txt", "pretrain")[0] == {"text": "text"}
  with pytest.raises(UserError, match=r"doc\.txt: plain text is pretraining data"):
    sources.open_source(tmp_path / "doc.txt", "sft")
  with pytest.raises(UserError, match=r"data\.csv: unrecognised data source.*expected a \.jsonl file"):
    sources.open_source(tmp_path / "data.csv", "sft")
  with pytest.raises(UserError, match="unknown data kind 'rlhf'"):
    sources.open_source(jsonl, "rlhf")
  with pytest.raises(UserError, match="expected tfds:NAME/SPLIT"):
    sources.open_source("tfds:imdb_reviews", "pretrain")


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes `import tensorflow_datasets` fail.
  with pytest.raises(UserError, match=r"tfds:imdb/train: tensorflow_datasets is not installed.*\.\[tfds\]"):
    sources.open_source("tfds:imdb/train", "pretrain")


def test_tfds_source_maps_fields(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyChats(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "body": tfds.features.Text(),
          "turns": tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()}),
          "score": np.int32,
      }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      yield 0, {"body": "héllo", "turns": [USER, ASSISTANT], "score": 1}

  TinyChats(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  texts = sources.open_source("tfds:tiny_chats/train", "pretrain", data_dir=tmp_path, fields={"text": "body"})
  assert len(texts) == 1 and texts[0] == {"text": "héllo"}
  chats = sources.tfds_source("tiny_chats", "train", tmp_path, kind="sft", fields={"messages": "turns"})
  assert chats[0] == {"messages": [USER, ASSISTANT]}
  with pytest.raises(UserError, match=r'tfds:tiny_chats/train: record 0: missing key "text"'):
    sources.tfds_source("tiny_chats", "train", tmp_path, kind="pretrain")  # No fields: features as they are.
  with pytest.raises(UserError, match=r'tfds:tiny_chats/train: record 0: no feature "txt" \(for "text"\)'):
    sources.tfds_source("tiny_chats", "train", tmp_path, kind="pretrain", fields={"text": "txt"})
  with pytest.raises(UserError, match="tfds:tiny_chats/test: cannot open: "):
    sources.tfds_source("tiny_chats", "test", tmp_path, kind="pretrain")


# ---------------------------------------------------------------------------------------------------------
# Deep nesting, HH transcripts that part before their final turn, and data.max_bad_records (issue 18).


def test_deeply_nested_json_names_file_and_line(tmp_path):
  """JSON nested 100,000 deep stops with one line at the bracket past MAX_JSON_DEPTH, not a RecursionError."""
  path = write_jsonl(tmp_path / "deep.jsonl", [VALID["pretrain"], '{"text": "a", "meta": ' + "[" * 100_000
                                               + "]" * 100_000 + "}"])
  with pytest.raises(UserError) as error:
    sources.open_jsonl(path, "pretrain")
  # The object is level 1; the 100th "[" (character 22 + 100) is level 101.
  assert str(error.value) == f"{path}:2: bad JSON: arrays and objects nested more than 100 deep (at character 122)"


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_read(tmp_path):
  depth = sources.MAX_JSON_DEPTH - 1  # Arrays inside the record's object.
  path = write_jsonl(tmp_path / "ok.jsonl", ['{"text": "a", "meta": ' + "[" * depth + "]" * depth + "}",
                                             {"text": "[{" * 1000 + '\\"'}])
  source = sources.open_jsonl(path, "pretrain")
  assert [source[i]["text"] for i in range(2)] == ["a", "[{" * 1000 + '\\"']


def _files(*roots: pathlib.Path) -> dict:
  """Every file under `roots` (or the root itself) -> its bytes; a missing root -> None."""
  out = {}
  for root in roots:
    if root.is_file():
      out[root] = root.read_bytes()
    elif root.is_dir():
      out.update({p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    else:
      out[root] = None
  return out


def _main(capsys, argv: list) -> tuple[int, list[str]]:
  """Runs the command line in-process: (exit status, stderr lines that are not progress bars)."""
  capsys.readouterr()
  status = main_lib.main([str(arg) for arg in argv])
  lines = capsys.readouterr().err.splitlines()
  return status, [line for line in lines if line.startswith(("error: ", "warning: "))]


def test_cli_deeply_nested_json_exits_2_and_writes_nothing(tmp_path, capsys):
  path = write_jsonl(tmp_path / "deep.jsonl", [VALID["pretrain"], '{"text": ' + "[" * 5000 + "]" * 5000 + "}"])
  workdir = tmp_path / "run"
  before = _files(path, workdir)
  status, err = _main(capsys, ["--config", f"{ROOT}/experiments/shakespeare_char.py:smoke", "--workdir", workdir,
                               BATCH, f"--config.data.path={path}"])
  assert status == 2
  assert err == [f"error: {path}:2: bad JSON: arrays and objects nested more than 100 deep (at character 109)"]
  assert _files(path, workdir) == before


# (chosen turns, rejected turns, the normalised record): where the transcripts part before their final turns,
# the prompt is the turns they share and each response the rest of its transcript.
HH_PARTING = {
    "two Assistant turns in a row at the end": (
        [("Human", "Hi"), ("Assistant", "Hello."), ("Human", "A pun?"), ("Assistant", "Lettuce pray.")],
        [("Human", "Hi"), ("Assistant", "Hello."), ("Human", "A pun?"), ("Assistant", "No."), ("Assistant", "Bye.")],
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "A pun?"}],
         "responses": ["Lettuce pray.", "No.\n\nAssistant: Bye."], "ranking": [0, 1]}),
    "two Assistant turns in a row mid-conversation": (
        [("Human", "Hi"), ("Assistant", "Hello."), ("Human", "A pun?"), ("Assistant", "Lettuce pray.")],
        [("Human", "Hi"), ("Assistant", "Hello."), ("Assistant", "Hm."), ("Human", "A pun?"), ("Assistant", "No.")],
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
         "responses": ["Human: A pun?\n\nAssistant: Lettuce pray.", "Hm.\n\nHuman: A pun?\n\nAssistant: No."],
         "ranking": [0, 1]}),
    "one transcript begins the other": (  # Each keeps at least its last turn.
        [("Human", "Hi"), ("Assistant", "Hello.")],
        [("Human", "Hi"), ("Assistant", "Hello."), ("Assistant", "Bye.")],
        {"prompt": [{"role": "user", "content": "Hi"}], "responses": ["Hello.", "Hello.\n\nAssistant: Bye."],
         "ranking": [0, 1]}),
}


@pytest.mark.parametrize("case", HH_PARTING)
def test_hh_transcripts_that_part_before_their_final_turn(tmp_path, case):
  chosen, rejected, record = HH_PARTING[case]
  path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": hh(*chosen), "rejected": hh(*rejected)}])
  assert sources.open_jsonl(path, "comparisons")[0] == record


def _with_bad_lines(path: pathlib.Path) -> pathlib.Path:
  """Six lines: records "0" to "2" at lines 1, 3 and 6, invalid records at lines 2, 4 and 5."""
  return write_jsonl(path, [{"text": "0"}, '{"text": "1"', {"text": "1"}, {"txt": "x"}, {"text": ""}, {"text": "2"}])


def test_bad_records_left_out_up_to_the_limit(tmp_path):
  path = _with_bad_lines(tmp_path / "docs.jsonl")
  bad = sources.BadRecords(3)
  source = sources.open_jsonl(path, "pretrain", bad)
  assert [source[i]["text"] for i in range(len(source))] == ["0", "1", "2"]
  assert pickle.loads(pickle.dumps(source))[2] == {"text": "2"}
  assert bad.summary() == {"data/bad_records": 3, "data/bad_record_list": [
      f"{path}:2: bad JSON: Expecting ',' delimiter at character 14", f'{path}:4: missing key "text"',
      f'{path}:5: "text" is empty']}
  assert bad.warnings()[0] == (f"warning: {path}:2: bad JSON: Expecting ',' delimiter at character 14; left out, "
                               "invalid record 1 of the 3 that config key 'data.max_bad_records' allows")


def test_bad_records_past_the_limit_name_the_limit_and_the_first(tmp_path):
  path = _with_bad_lines(tmp_path / "docs.jsonl")
  with pytest.raises(UserError) as error:
    sources.open_source(path, "pretrain", bad=sources.BadRecords(2))
  assert str(error.value) == (f"{path}:5: \"text\" is empty; more invalid records than config key "
                              f"'data.max_bad_records' (2) allows, the first at {path}:2")


def test_bad_records_limit_counts_over_array_record_files(tmp_path):
  a = tmp_path / "a.array_record"
  b = tmp_path / "b.array_record"
  sources.write_array_record(a, [{"text": "0"}, {"txt": "x"}])
  sources.write_array_record(b, [{"text": ""}, {"text": "1"}])
  bad = sources.BadRecords(2)
  source = sources.open_array_record([a, b], "pretrain", bad)
  assert [source[i] for i in range(len(source))] == [{"text": "0"}, {"text": "1"}]
  assert bad.skipped == [f'{a}: record 1: missing key "text"', f'{b}: record 0: "text" is empty']
  with pytest.raises(UserError, match=rf"{b}: record 0: .* \(1\) allows, the first at {a}: record 1$"):
    sources.open_array_record([a, b], "pretrain", sources.BadRecords(1))


def test_a_file_of_only_bad_records_has_none_left(tmp_path):
  path = write_jsonl(tmp_path / "docs.jsonl", [{"txt": "x"}, "[]"])
  with pytest.raises(UserError) as error:
    sources.open_jsonl(path, "pretrain", sources.BadRecords(5))
  assert str(error.value) == (f"{path}: no records left: all 2 were invalid (skipped under config key "
                              "'data.max_bad_records')")


def test_negative_max_bad_records_is_refused(tmp_path, capsys):
  workdir = tmp_path / "run"
  status, err = _main(capsys, ["--config", f"{ROOT}/experiments/shakespeare_char.py:smoke", "--workdir", workdir,
                               "--config.data.max_bad_records=-1"])
  assert status == 2 and not workdir.exists()
  assert err == ["error: config key 'data.max_bad_records' must be >= 0 (0 = every record must be valid), got -1"]


def _hh_file_with_bad_records(path: pathlib.Path) -> pathlib.Path:
  """Eight HH comparisons, two of whose rejected transcripts end in two Assistant turns, and two invalid
  records: bad JSON at line 3, nesting too deep at line 6."""
  lines = []
  for i in range(8):
    prompt = [("Human", f"Question {i}?"), ("Assistant", "Which kind?"), ("Human", "Any.")]
    rejected = [("Assistant", "No."), ("Assistant", "Bye.")] if i in (1, 5) else [("Assistant", "No.")]
    lines.append({"chosen": hh(*prompt, ("Assistant", f"Answer {i}.")), "rejected": hh(*prompt, *rejected)})
  lines.insert(2, '{"chosen": "\\n\\nHuman: hi", "rejected": }')
  lines.insert(5, '{"chosen": ' + "[" * 500 + "]" * 500 + "}")
  return write_jsonl(path, lines)


def _reward_argv(workdir, *extra):
  return ["--config", f"{ROOT}/experiments/toyworld_reward.py:smoke", "--workdir", workdir, BATCH, *extra]


def test_reward_run_leaves_out_bad_records_and_names_them(toyworld_smoke, tmp_path, capsys):
  """A comparison file with two invalid records trains with data.max_bad_records=2: one warning line each,
  and the summary counts and lists them by file:line."""
  path = _hh_file_with_bad_records(tmp_path / "hh.jsonl")
  data = path.read_bytes()
  workdir = tmp_path / "reward"
  status, err = _main(capsys, _reward_argv(workdir, f"--config.init_from={toyworld_smoke['sft'][0]}",
                                           f"--config.data.path={path}", "--config.data.source=text",
                                           "--config.data.max_bad_records=2", "--config.reward.norm_samples=8"))
  assert status == 0
  skipped = [f"{path}:3: bad JSON: Expecting value at character 41",
             f"{path}:6: bad JSON: arrays and objects nested more than 100 deep (at character 111)"]
  assert err == [f"warning: {line}; left out, invalid record {i} of the 2 that config key 'data.max_bad_records' "
                 "allows" for i, line in enumerate(skipped, start=1)]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["data/bad_records"] == 2 and summary["data/bad_record_list"] == skipped
  assert summary["comparisons/train_prompts"] + summary["comparisons/heldout_prompts"] == 8
  assert summary["complete"] is True and path.read_bytes() == data


def test_reward_run_refuses_past_max_bad_records(toyworld_smoke, tmp_path, capsys):
  """One invalid record more than data.max_bad_records: one line naming the limit and the first bad record;
  the data file and an earlier run's workdir are left as they were."""
  path = _hh_file_with_bad_records(tmp_path / "hh.jsonl")
  workdir = tmp_path / "reward"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"earlier": "run"}\n')
  before = _files(path, workdir)
  status, err = _main(capsys, _reward_argv(workdir, f"--config.init_from={toyworld_smoke['sft'][0]}",
                                           f"--config.data.path={path}", "--config.data.source=text",
                                           "--config.data.max_bad_records=1"))
  assert status == 2
  assert err == [f"error: {path}:6: bad JSON: arrays and objects nested more than 100 deep (at character 111); "
                 f"more invalid records than config key 'data.max_bad_records' (1) allows, the first at {path}:3"]
  assert _files(path, workdir) == before


def test_reward_run_says_data_tokenizer_is_unused(toyworld_smoke, tmp_path, capsys):
  """--config.data.tokenizer=char on a reward run from a sentencepiece SFT model: one warning line that the
  SFT model's tokenizer is used. (train.seq_len past the model's positions then stops the run untrained.)"""
  sft = toyworld_smoke["sft"][0]
  workdir = tmp_path / "reward"
  status, err = _main(capsys, _reward_argv(workdir, f"--config.init_from={sft}", "--config.data.tokenizer=char",
                                           "--config.train.seq_len=4096"))
  assert status == 2 and not workdir.exists()
  assert err == [f"warning: config key 'data.tokenizer' ('char') is not used: the reward model reads text with its "
                 f"SFT model's tokenizer (sentencepiece, {load_tokenizer(sft).vocab_size} tokens; init_from {sft})",
                 f"error: config key 'train.seq_len': 4096 is longer than the model's 64 learned positions ({sft})"]


def test_sft_run_refuses_past_max_bad_records(toyworld_smoke, tmp_path, capsys):
  """The SFT stage reads data.path under the same limit, before it writes anything."""
  path = write_jsonl(tmp_path / "sft.jsonl", [VALID["sft"], {"messages": [USER]}, VALID["sft"], {"prompt": "hi"}])
  workdir = tmp_path / "sft"
  status, err = _main(capsys, ["--config", f"{ROOT}/experiments/toyworld_sft.py:smoke", "--workdir", workdir, BATCH,
                               f"--config.init_from={toyworld_smoke['pretrain'][0]}", f"--config.data.path={path}",
                               "--config.data.source=text", "--config.data.max_bad_records=1"])
  assert status == 2 and not workdir.exists()
  assert err == [f'error: {path}:4: missing key "response"; more invalid records than config key '
                 f"'data.max_bad_records' (1) allows, the first at {path}:2"]
