"""Data sources: every input format the stages read, checked in full when it is opened.

A source is a grain random-access data source (`__len__`, `__getitem__`, a stable `__repr__` for grain's
checkpoints) whose records are small normalised dicts of one *kind*:

  kind         accepted records (JSON objects)                          normalised record
  pretrain     {"text": str}                                            {"text": str}
  sft          {"messages": [{"role", "content"}, ...]}                 {"messages": [...]}
               or {"prompt": str, "response": str}                      (a user turn, an assistant turn)
  prompts      {"prompt": str} or {"messages": [...]} not ending        {"messages": [...]}
               with an assistant turn
  comparisons  {"prompt", "chosen", "rejected"},                        {"prompt": [messages],
               {"prompt", "responses": [str, ...], "ranking": [int]},    "responses": [str, ...],
               {"prompt", "responses", "order": [int]}, or Anthropic      "ranking": [int, ...]}
               HH {"chosen": transcript, "rejected": transcript}

A K-wise comparison may also carry "gold" (K numbers in [0, 1]) and "task" (a string), the labels of
simulated data (toyworld writes them); they are kept, checked, so a reward model can be judged against gold.

Messages are `{"role": one of ROLES, "content": str}`; a system turn may only come first. Keys other than
those above are ignored, so datasets that carry ids or metadata need no cleaning. A comparison's "prompt"
may be a string (it becomes one user turn) or a conversation; the normalised prompt is always messages, so
every stage renders prompts with the one chat template.

Ranking semantics. `ranking[i]` is the rank of `responses[i]`: 0 is best, tied responses share a rank, and
ranks are dense: the ranks used are exactly 0, 1, ..., m-1 ([0, 1, 1, 2] is valid, [0, 2, 2] is not). So a
repeated rank is a tie, never an error, while a skipped rank (a "missing index") is rejected, as is a ranking
that ties every response (it holds no preference). A pair `{"chosen", "rejected"}` is ranking [0, 1]. The
ordering form is accepted only under its own key, so the two can never be confused: `order[j]` is the index
of the j-th best response, best first, a permutation of 0..K-1 (no ties; a repeated or missing index is an
error); it is normalised to the equivalent ranking.

Anthropic HH transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") are split at the "\\n\\nHuman:" and
"\\n\\nAssistant:" markers, each turn's content stripped of surrounding whitespace; each must end with an
assistant turn. The prompt is the turns both transcripts share, from the first (the longest common prefix of
whole turns, short enough that each transcript keeps at least one turn: TRL's `extract_prompt` reads them so),
and each response is the rest of its transcript. Usually that is the final assistant turn alone; where one
transcript has two Assistant turns in a row, the two part earlier, and a response of several turns is written
as the transcript writes it ("first reply\\n\\nAssistant: second reply"), less the marker of an opening
Assistant turn, which the chat template's assistant header stands for.

Errors. Opening a source reads and validates every record once, so a malformed record stops the run before
training starts, never hours into it. Each error is a `UserError` whose one line names the file and the
1-based line ("data/sft.jsonl:17: missing key "messages""), or for ArrayRecord and TFDS the 0-based record
index ("data/rm.array_record: record 5: ..."). Arrays and objects may nest at most MAX_JSON_DEPTH deep, so
parsing never recurses without bound. Only byte spans (JSONL) or nothing (ArrayRecord, TFDS) are
kept: a record is re-read and re-parsed when it is asked for, so a multi-GB file is never held in memory.
Plain text is the exception: `read_text` returns its documents, for corpora that fit in memory.

Skipping bad records. Public data sets hold a few broken records. A `BadRecords(limit)` passed to a source
(config key `data.max_bad_records`) lets it leave out up to `limit` invalid records, over every file it is
shared by, listing each as "file:line: reason"; one more stops the run with one line naming the limit and
the first record skipped. The default, limit 0, stops at the first invalid record with its own message.
"""

import array
import codecs
import glob
import json
import operator
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from rlhf_jax.errors import UserError
from rlhf_jax.tokenizer import ROLES

Record = dict[str, Any]
Messages = list[dict[str, str]]
# A validator checks one parsed JSON object and returns its normalised record; `where` ("path:line" or
# "path: record i") starts every error message it raises.
Validator = Callable[[dict[str, Any], str], Record]
PathLike = str | os.PathLike

KINDS = ("pretrain", "sft", "prompts", "comparisons")

# JSON's own whitespace: a line holding only these is blank. (bytes.strip() would also strip \x0b and \x0c,
# which json.loads rejects.)
_JSON_SPACE = b" \t\r\n"
_BOM = codecs.BOM_UTF8
# Records the ArrayRecord validation pass reads per call: large enough to amortise the call, small enough
# to keep memory flat on big files.
_READ_CHUNK = 1024
# How deep arrays and objects may nest in a record. Ours nest three deep ({"messages": [{...}]}); 100 leaves
# room for metadata, and keeps json.loads, which recurses once a level, far from Python's recursion limit
# (1,000 frames: deeper nesting ends in a RecursionError), in whichever thread reads the record.
MAX_JSON_DEPTH = 100
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SOURCE_FORMS = ("a .jsonl file, .array_record file(s) (a glob is fine), tfds:NAME/SPLIT, or for pretraining "
                 "a .txt file or a directory of .txt files")


# ---------------------------------------------------------------------------------------------------------
# Validators: parsed JSON object -> normalised record.


def _json_type(value: Any) -> str:
  """The JSON name of a parsed value's type, for messages such as `"text" must be a string, got a number`."""
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "a boolean"
  if isinstance(value, (int, float)):
    return "a number"
  if isinstance(value, str):
    return "a string"
  if isinstance(value, list):
    return "an array"
  return "an object"


def _get(obj: Mapping[str, Any], key: str, where: str, item: str = "") -> Any:
  """obj[key], or a UserError naming `where` (file:line) and, inside a list, the `item` that lacks it."""
  if key not in obj:
    raise UserError(f'{where}: {item + " is " if item else ""}missing key "{key}"')
  return obj[key]


def _string(value: Any, where: str, name: str) -> str:
  if not isinstance(value, str):
    raise UserError(f"{where}: {name} must be a string, got {_json_type(value)}")
  return value


def _messages(value: Any, where: str, name: str) -> Messages:
  """A validated conversation `[{"role", "content"}, ...]`, extra keys of each turn dropped."""
  if not isinstance(value, list):
    raise UserError(f'{where}: {name} must be an array of {{"role", "content"}} objects, got {_json_type(value)}')
  if not value:
    raise UserError(f"{where}: {name} is empty")
  messages = []
  for i, turn in enumerate(value):
    item = f"{name}[{i}]"
    if not isinstance(turn, dict):
      raise UserError(f'{where}: {item} must be a {{"role", "content"}} object, got {_json_type(turn)}')
    role = _string(_get(turn, "role", where, item), where, f'{item}["role"]')
    if role not in ROLES:
      expected = ", ".join(json.dumps(r) for r in ROLES)
      raise UserError(f'{where}: {item}["role"] is {json.dumps(role)}; expected one of {expected}')
    if role == "system" and i > 0:
      raise UserError(f"{where}: {item} is a system turn; a system turn may only come first")
    content = _string(_get(turn, "content", where, item), where, f'{item}["content"]')
    messages.append({"role": role, "content": content})
  return messages


def _conversation_so_far(value: Any, where: str, name: str) -> Messages:
  """A prompt: a string (one user turn) or a conversation whose last turn awaits the assistant's reply."""
  if isinstance(value, str):
    return [{"role": "user", "content": value}]
  if not isinstance(value, list):
    raise UserError(f"{where}: {name} must be a string or an array of messages, got {_json_type(value)}")
  messages = _messages(value, where, name)
  if messages[-1]["role"] == "assistant":
    raise UserError(f"{where}: {name} ends with an assistant turn; a prompt is the conversation before the reply")
  return messages


def _exclusive(obj: Mapping[str, Any], first: str, others: Sequence[str], where: str) -> None:
  """Rejects records that give two alternative forms at once: which one was meant cannot be known."""
  clash = [key for key in others if key in obj]
  if first in obj and clash:
    raise UserError(f'{where}: give either "{first}" or "{clash[0]}", not both')


def validate_pretrain(obj: Mapping[str, Any], where: str) -> Record:
  """`{"text": str}`, non-empty: an empty document trains nothing and usually means a broken export."""
  text = _string(_get(obj, "text", where), where, '"text"')
  if not text:
    raise UserError(f'{where}: "text" is empty')
  return {"text": text}


def validate_sft(obj: Mapping[str, Any], where: str) -> Record:
  """A demonstration: `{"messages"}` or `{"prompt", "response"}`, with at least one assistant turn to learn."""
  _exclusive(obj, "messages", ("prompt", "response"), where)
  if "messages" in obj:
    messages = _messages(obj["messages"], where, '"messages"')
  elif "prompt" in obj or "response" in obj:
    messages = [
        {"role": "user", "content": _string(_get(obj, "prompt", where), where, '"prompt"')},
        {"role": "assistant", "content": _string(_get(obj, "response", where), where, '"response"')},
    ]
  else:
    raise UserError(f'{where}: missing key "messages" (or "prompt" and "response")')
  if not any(turn["role"] == "assistant" for turn in messages):
    raise UserError(f"{where}: a conversation with no assistant turn (SFT learns only assistant tokens)")
  return {"messages": messages}


def validate_prompts(obj: Mapping[str, Any], where: str) -> Record:
  """A prompt for PPO rollouts: `{"prompt": str}` or `{"messages"}` not ending with an assistant turn."""
  _exclusive(obj, "prompt", ("messages",), where)
  if "prompt" in obj:
    return {"messages": _conversation_so_far(obj["prompt"], where, '"prompt"')}
  if "messages" in obj:
    return {"messages": _conversation_so_far(obj["messages"], where, '"messages"')}
  raise UserError(f'{where}: missing key "prompt" (or "messages")')


def _int_list(value: Any, key: str, k: int, where: str) -> list[int]:
  if not isinstance(value, list):
    raise UserError(f'{where}: "{key}" must be an array of integers, got {_json_type(value)}')
  if len(value) != k:
    raise UserError(f'{where}: "{key}" has {len(value)} entries for {k} responses')
  for i, entry in enumerate(value):
    if isinstance(entry, bool) or not isinstance(entry, int):
      raise UserError(f'{where}: "{key}"[{i}] must be an integer, got {_json_type(entry)}')
  return value


def _ranking(obj: Mapping[str, Any], k: int, where: str) -> list[int]:
  """The dense rank list of a K-wise comparison, from "ranking" or "order" (see the module docstring)."""
  _exclusive(obj, "ranking", ("order",), where)
  if "ranking" in obj:
    ranking = _int_list(obj["ranking"], "ranking", k, where)
    for i, rank in enumerate(ranking):
      if rank < 0:
        raise UserError(f'{where}: "ranking"[{i}] is {rank}; ranks start at 0 (best)')
    used = set(ranking)
    skipped = next((rank for rank in range(max(ranking)) if rank not in used), None)
    if skipped is not None:
      raise UserError(f'{where}: "ranking" {ranking} skips rank {skipped}; ranks are 0 = best, ties share a rank '
                      "and the next rank follows on, e.g. [0, 1, 1, 2]")
    if len(used) == 1:
      raise UserError(f'{where}: "ranking" ties all {k} responses, so it prefers none of them')
    return list(ranking)
  if "order" in obj:
    order = _int_list(obj["order"], "order", k, where)
    for j, index in enumerate(order):
      if not 0 <= index < k:
        raise UserError(f'{where}: "order"[{j}] is {index}; response indices run from 0 to {k - 1}')
    if len(set(order)) != k:
      repeated = next(index for j, index in enumerate(order) if index in order[:j])
      missing = next(index for index in range(k) if index not in order)
      raise UserError(f'{where}: "order" repeats index {repeated} and leaves out index {missing}; it must list '
                      "every response index once, best first")
    ranking = [0] * k
    for rank, index in enumerate(order):
      ranking[index] = rank
    return ranking
  raise UserError(f'{where}: missing key "ranking" (or "order")')


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(transcript: str, key: str, where: str) -> Messages:
  """An HH transcript -> its turns, checked to end with an assistant turn that follows at least one other."""
  if not transcript.strip():
    raise UserError(f'{where}: "{key}" is empty')
  # Each turn starts with "\n\nHuman:" or "\n\nAssistant:"; leading blank lines vary between dumps, so the
  # first marker is normalised to carry its "\n\n" too.
  parts = _HH_TURN.split("\n\n" + transcript.lstrip())
  if parts[0]:
    raise UserError(f'{where}: "{key}" does not start with a "Human:" or "Assistant:" turn')
  turns = [{"role": _HH_ROLES[role], "content": content.strip()}
           for role, content in zip(parts[1::2], parts[2::2])]
  if turns[-1]["role"] != "assistant":
    raise UserError(f'{where}: "{key}" transcript has no final "Assistant:" turn')
  if len(turns) == 1:
    raise UserError(f'{where}: "{key}" transcript has no turn before its final "Assistant:" turn')
  return turns


def _hh_response(turns: Messages) -> str:
  """The turns of a transcript after the prompt as one response: as the transcript writes them, less the
  marker of an opening assistant turn (the chat template's assistant header takes its place)."""
  speakers = {role: speaker for speaker, role in _HH_ROLES.items()}
  lines = [f'{speakers[turn["role"]]}: {turn["content"]}' for turn in turns]
  if turns[0]["role"] == "assistant":
    lines[0] = turns[0]["content"]
  return "\n\n".join(lines)


def _hh_comparison(obj: Mapping[str, Any], where: str) -> Record:
  """The shared turns as the prompt, the rest of each transcript as its response (module docstring)."""
  chosen = _hh_turns(_string(_get(obj, "chosen", where), where, '"chosen"'), "chosen", where)
  rejected = _hh_turns(_string(_get(obj, "rejected", where), where, '"rejected"'), "rejected", where)
  shared, most = 0, min(len(chosen), len(rejected)) - 1  # Each keeps at least one turn to score.
  while shared < most and chosen[shared] == rejected[shared]:
    shared += 1
  if not shared:
    raise UserError(f'{where}: the "chosen" and "rejected" transcripts differ from their first turn; a '
                    "comparison needs a prompt they share")
  return {"prompt": chosen[:shared], "responses": [_hh_response(chosen[shared:]), _hh_response(rejected[shared:])],
          "ranking": [0, 1]}


def _simulated_labels(obj: Mapping[str, Any], k: int, where: str) -> Record:
  """The optional extras of simulated comparisons (toyworld writes them): "gold", the gold score of each
  response in [0, 1], and "task", the task's name. Kept so the reward model can be judged against gold."""
  out = {}
  if "gold" in obj:
    gold = obj["gold"]
    if not isinstance(gold, list) or len(gold) != k:
      raise UserError(f'{where}: "gold" must be an array of {k} numbers (one per response)')
    for i, value in enumerate(gold):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f'{where}: "gold"[{i}] must be a number in [0, 1], got {value!r}')
    out["gold"] = [float(v) for v in gold]
  if "task" in obj:
    out["task"] = _string(obj["task"], where, '"task"')
  return out


def validate_comparison(obj: Mapping[str, Any], where: str) -> Record:
  """A pair, a K-wise ranking or an HH pair -> `{"prompt": messages, "responses", "ranking"}`."""
  if "prompt" not in obj:
    if "chosen" in obj or "rejected" in obj:
      return _hh_comparison(obj, where)
    raise UserError(f'{where}: missing key "prompt" (or Anthropic HH "chosen" and "rejected" transcripts)')
  prompt = _conversation_so_far(obj["prompt"], where, '"prompt"')
  _exclusive(obj, "responses", ("chosen", "rejected"), where)
  if "responses" in obj:
    value = obj["responses"]
    if not isinstance(value, list):
      raise UserError(f'{where}: "responses" must be an array of strings, got {_json_type(value)}')
    responses = [_string(response, where, f'"responses"[{i}]') for i, response in enumerate(value)]
    if len(responses) < 2:
      raise UserError(f'{where}: "responses" has {len(responses)} entries; a comparison needs at least 2')
    record = {"prompt": prompt, "responses": responses, "ranking": _ranking(obj, len(responses), where)}
    return {**record, **_simulated_labels(obj, len(responses), where)}
  if "chosen" in obj or "rejected" in obj:
    responses = [_string(_get(obj, key, where), where, f'"{key}"') for key in ("chosen", "rejected")]
    return {"prompt": prompt, "responses": responses, "ranking": [0, 1]}
  raise UserError(f'{where}: missing key "responses" (or "chosen" and "rejected")')


VALIDATORS: dict[str, Validator] = {
    "pretrain": validate_pretrain,
    "sft": validate_sft,
    "prompts": validate_prompts,
    "comparisons": validate_comparison,
}


def _validator(kind: str) -> Validator:
  if kind not in VALIDATORS:
    raise UserError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
  return VALIDATORS[kind]


# ---------------------------------------------------------------------------------------------------------
# Parsing bytes.


def _decode(data: bytes, where: str, file_offset: int | None) -> str:
  """UTF-8 text of `data`; an error names the first bad byte, by file offset when the bytes come from one."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    if file_offset is None:
      position = f"byte {e.start} of the record"
    else:
      position = f"file offset {file_offset + e.start}"
    raise UserError(f"{where}: invalid UTF-8: byte 0x{data[e.start]:02x} at {position}") from None


def _check_depth(data: bytes, where: str) -> None:
  """Stops a record whose arrays and objects nest deeper than MAX_JSON_DEPTH, before json.loads recurses."""
  if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
    return  # Too few brackets to nest that deep: all a usual record costs.
  # Brackets inside strings do not nest: blank the strings out, keeping every offset.
  code = np.frombuffer(_JSON_STRING.sub(lambda m: b" " * len(m[0]), data), np.uint8)
  step = ((code == ord("[")) | (code == ord("{"))).astype(np.int64) - ((code == ord("]")) | (code == ord("}")))
  too_deep = np.flatnonzero(np.cumsum(step) > MAX_JSON_DEPTH)
  if too_deep.size:
    character = len(data[:too_deep[0]].decode("utf-8")) + 1  # A bracket: never inside a multi-byte character.
    raise UserError(f"{where}: bad JSON: arrays and objects nested more than {MAX_JSON_DEPTH} deep (at "
                    f"character {character})")


def _parse_object(data: bytes, where: str, file_offset: int | None) -> dict[str, Any]:
  text = _decode(data, where, file_offset)
  _check_depth(data, where)
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Unterminated string starting at": no "at at".
    raise UserError(f"{where}: bad JSON: {msg} at character {e.pos + 1}") from None
  if not isinstance(obj, dict):
    raise UserError(f"{where}: expected a JSON object, got {_json_type(obj)}")
  return obj


def _check_index(index: int, length: int) -> int:
  """`index` as a position in [0, length), negative indices counting from the end as for a list."""
  index = operator.index(index)
  if not -length <= index < length:
    raise IndexError(f"record index {index} out of range for {length} records")
  return index % length


# ---------------------------------------------------------------------------------------------------------
# Invalid records left out.


class BadRecords:
  """The invalid records that sources may leave out: at most `limit` (config key `data.max_bad_records`) over
  every source it is given to, listed in `skipped` as "file:line: reason". With limit 0, the first invalid
  record stops the run with its own message, as it would without skipping."""

  def __init__(self, limit: int = 0):
    self.limit = limit
    self.skipped: list[str] = []
    self._first = ""

  def skip(self, where: str, error: UserError) -> None:
    """Leaves out the record at `where`, which failed with `error`; raises past the limit."""
    if len(self.skipped) >= self.limit:
      if not self.limit:
        raise error
      raise UserError(f"{error}; more invalid records than config key 'data.max_bad_records' ({self.limit}) "
                      f"allows, the first at {self._first}")
    self._first = self._first or where
    self.skipped.append(str(error))

  def warnings(self) -> list[str]:
    """One line for the log per record left out."""
    return [f"warning: {entry}; left out, invalid record {i + 1} of the {self.limit} that config key "
            "'data.max_bad_records' allows" for i, entry in enumerate(self.skipped)]

  def summary(self) -> dict[str, Any]:
    """The summary's account of the records left out: how many, and which ("file:line: reason")."""
    return {"data/bad_records": len(self.skipped), "data/bad_record_list": list(self.skipped)}


def _kept(total: int, bad_indices: Sequence[int]) -> np.ndarray | None:
  """The indices of the records left after the invalid ones, or None when there were none to leave out."""
  if not bad_indices:
    return None
  return np.setdiff1d(np.arange(total, dtype=np.int64), np.asarray(bad_indices, np.int64))


# ---------------------------------------------------------------------------------------------------------
# Plain text.


def _read_document(path: pathlib.Path) -> str:
  try:
    data = path.read_bytes()
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror}") from None
  start = len(_BOM) if data.startswith(_BOM) else 0
  try:
    text = data[start:].decode("utf-8")
  except UnicodeDecodeError as e:
    bad = start + e.start
    line = data.count(b"\n", 0, bad) + 1
    raise UserError(f"{path}:{line}: invalid UTF-8: byte 0x{data[bad]:02x} at file offset {bad}") from None
  if not text.strip():
    raise UserError(f"{path}: empty file: a pretraining document needs some text")
  return text


def read_text(path: PathLike) -> list[str]:
  """The documents of a plain text file (one) or a directory (every `*.txt` under it, sorted by path).

  Sorting makes the document order, and so the packed batches, the same on every machine and every run.
  """
  root = pathlib.Path(path)
  if root.is_dir():
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
      raise UserError(f"{root}: a directory with no .txt files")
  elif root.exists():
    files = [root]
  else:
    raise UserError(f"{root}: no such file or directory")
  return [_read_document(file) for file in files]


class TextSource:
  """Pretraining documents of `read_text`, as `{"text": document}` records (held in memory)."""

  def __init__(self, path: PathLike):
    self.path = os.fspath(path)
    self._documents = read_text(path)

  def __len__(self) -> int:
    return len(self._documents)

  def __getitem__(self, index: int) -> Record:
    return {"text": self._documents[_check_index(index, len(self))]}

  def __repr__(self) -> str:
    return f"TextSource({self.path!r}, {len(self)} documents)"


# ---------------------------------------------------------------------------------------------------------
# JSONL.


class JsonlSource:
  """Random access to the validated records of a JSONL file, holding only each record's byte span.

  Opening reads the file once, validating every non-blank line with `validate` (leaving out invalid ones
  while `bad` allows); `__getitem__` re-reads and re-validates one line by its span, so memory stays at 24
  bytes a record whatever the file's size. Each read opens the file afresh: that is thread-safe, and the
  source pickles for grain's worker processes.
  """

  def __init__(self, path: PathLike, validate: Validator, bad: BadRecords | None = None):
    self.path = os.fspath(path)
    self._validate = validate
    bad = BadRecords() if bad is None else bad
    skipped = len(bad.skipped)
    # Record i is the bytes starts[i]:ends[i] of line lines[i] (1-based).
    starts, ends, lines = array.array("q"), array.array("q"), array.array("q")
    try:
      file = open(self.path, "rb")
    except OSError as e:
      raise UserError(f"{self.path}: cannot open: {e.strerror}") from None
    with file:
      offset = 0
      for number, line in enumerate(file, start=1):
        begin = offset
        offset += len(line)
        if number == 1 and line.startswith(_BOM):  # Editors on Windows write one; json.loads rejects it.
          line, begin = line[len(_BOM):], begin + len(_BOM)
        if not line.strip(_JSON_SPACE):
          continue
        where = f"{self.path}:{number}"
        try:
          validate(_parse_object(line, where, begin), where)
        except UserError as e:
          bad.skip(where, e)
          continue
        starts.append(begin)
        ends.append(offset)
        lines.append(number)
    if not lines:
      if len(bad.skipped) > skipped:
        raise UserError(f"{self.path}: no records left: all {len(bad.skipped) - skipped} were invalid (skipped "
                        "under config key 'data.max_bad_records')")
      contents = "is empty" if offset == 0 else "holds only blank lines"
      raise UserError(f"{self.path}: no records: the file {contents}")
    self._starts = np.array(starts, dtype=np.int64)
    self._ends = np.array(ends, dtype=np.int64)
    self._lines = np.array(lines, dtype=np.int64)

  def __len__(self) -> int:
    return len(self._lines)

  def __getitem__(self, index: int) -> Record:
    index = _check_index(index, len(self))
    start, end = int(self._starts[index]), int(self._ends[index])
    with open(self.path, "rb") as file:
      file.seek(start)
      data = file.read(end - start)
    where = f"{self.path}:{self._lines[index]}"
    return self._validate(_parse_object(data, where, start), where)

  def __repr__(self) -> str:
    return f"JsonlSource({self.path!r}, {len(self)} records)"


def open_jsonl(path: PathLike, kind: str, bad: BadRecords | None = None) -> JsonlSource:
  """A JSONL file of records of `kind` ("pretrain", "sft", "prompts" or "comparisons")."""
  return JsonlSource(path, _validator(kind), bad)


# ---------------------------------------------------------------------------------------------------------
# ArrayRecord.


def _expand(paths: PathLike | Sequence[PathLike]) -> list[str]:
  """A path, a glob (sorted matches) or a list of paths -> the list of files, in a fixed order."""
  if isinstance(paths, (str, os.PathLike)):
    pattern = os.fspath(paths)
    if not any(char in pattern for char in "*?["):
      return [pattern]
    files = sorted(glob.glob(pattern))
    if not files:
      raise UserError(f"{pattern}: no files match")
    return files
  return [os.fspath(path) for path in paths]


def _validate_array_record(path: str, validate: Validator, bad: BadRecords) -> tuple[int, list[int]]:
  """Validates every record of one ArrayRecord file, reading it front to back; returns the record count and
  the indices of the invalid records `bad` let through."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file")
  reader = ArrayRecordReader(path)
  if not reader.ok():  # Not closed: close() would raise the reader's own error instead of ours.
    raise UserError(f"{path}: not an ArrayRecord file")
  invalid = []
  try:
    count = reader.num_records()
    for begin in range(0, count, _READ_CHUNK):
      for i, data in enumerate(reader.read(begin, min(begin + _READ_CHUNK, count)), start=begin):
        where = f"{path}: record {i}"
        try:
          validate(_parse_object(data, where, None), where)
        except UserError as e:
          bad.skip(where, e)
          invalid.append(i)
  finally:
    reader.close()
  return count, invalid


class ArrayRecordSource:
  """Random access to validated records stored as UTF-8 JSON objects in ArrayRecord files.

  Reads go through `grain.sources.ArrayRecordDataSource`, which treats the files as one sequence in the
  given order; errors name the file and the record's 0-based index inside it. Invalid records that `bad`
  lets through are left out of the sequence.
  """

  def __init__(self, paths: PathLike | Sequence[PathLike], validate: Validator, bad: BadRecords | None = None):
    self.paths = _expand(paths)
    if not self.paths:
      raise UserError("an ArrayRecord source needs at least one file")
    self._validate = validate
    bad = BadRecords() if bad is None else bad
    counts, invalid = [], []
    for path in self.paths:
      count, file_invalid = _validate_array_record(path, validate, bad)
      invalid += [sum(counts) + i for i in file_invalid]
      counts.append(count)
    if sum(counts) == len(invalid):
      left = f" left: all {len(invalid)} were invalid" if invalid else ""
      raise UserError(f"{', '.join(self.paths)}: no records{left}")
    self._ends = np.cumsum(counts)  # Record i of the files lives in the first file whose end exceeds i.
    self._kept = _kept(int(self._ends[-1]), invalid)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return int(self._ends[-1]) if self._kept is None else len(self._kept)

  def _where(self, index: int) -> str:
    file = int(np.searchsorted(self._ends, index, side="right"))
    first = int(self._ends[file - 1]) if file else 0
    return f"{self.paths[file]}: record {index - first}"

  def __getitem__(self, index: int) -> Record:
    index = _check_index(index, len(self))
    if self._kept is not None:
      index = int(self._kept[index])
    where = self._where(index)
    return self._validate(_parse_object(self._source[index], where, None), where)

  def __repr__(self) -> str:
    return f"ArrayRecordSource({self.paths!r}, {len(self)} records)"


def open_array_record(paths: PathLike | Sequence[PathLike], kind: str,
                      bad: BadRecords | None = None) -> ArrayRecordSource:
  """ArrayRecord file(s) — a path, a glob or a list — of records of `kind`."""
  return ArrayRecordSource(paths, _validator(kind), bad)


def write_array_record(path: PathLike, records: Iterable[Mapping[str, Any]]) -> int:
  """Writes `records` as UTF-8 JSON objects to one ArrayRecord file; returns how many were written.

  Uses group_size 1 (one record per compressed chunk), as array_record advises for random access: a read
  then decompresses just the record asked for.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = ArrayRecordWriter(os.fspath(path), "group_size:1")
  if not writer.ok():
    raise UserError(f"{path}: cannot write an ArrayRecord file there")
  count = 0
  try:
    for record in records:
      writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
      count += 1
  finally:
    writer.close()
  return count


# ---------------------------------------------------------------------------------------------------------
# TFDS.


def _to_python(value: Any, where: str) -> Any:
  """A TFDS value as JSON-like Python: bytes -> str, arrays -> lists, numpy scalars -> numbers.

  TFDS returns a `Sequence` of a features dict (e.g. the turns of a conversation) as a dict of equal-length
  lists; it becomes a list of dicts, the shape our records use. No record field is itself a dict, so this
  never reshapes a value that was meant as one.
  """
  if isinstance(value, bytes):
    return _decode(value, where, None)
  if isinstance(value, np.ndarray):
    return _to_python(value.tolist(), where)  # Numbers become Python numbers; bytes are decoded below.
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [_to_python(item, where) for item in value]
  if isinstance(value, Mapping):
    columns = {key: _to_python(column, where) for key, column in value.items()}
    lengths = {len(column) if isinstance(column, list) else -1 for column in columns.values()}
    if columns and len(lengths) == 1 and -1 not in lengths:
      return [dict(zip(columns, row)) for row in zip(*columns.values())]
    return columns
  return value


class TfdsSource:
  """Random access to the validated records of a prepared TFDS dataset (array_record format).

  `fields` maps each record key of ours to the dataset's feature name, e.g. {"text": "content"}; without it
  the features are used under their own names. The dataset is not downloaded here: build it first (`tfds
  build NAME --file_format=array_record`), so that a training run never starts a download. Invalid records
  that `bad` lets through are left out.
  """

  def __init__(self, name: str, split: str, validate: Validator, data_dir: PathLike | None = None,
               fields: Mapping[str, str] | None = None, bad: BadRecords | None = None):
    self.spec = f"tfds:{name}/{split}"
    try:
      import tensorflow_datasets as tfds
    except ImportError:
      raise UserError(f"{self.spec}: tensorflow_datasets is not installed; run `pip install -e .[tfds]`") from None
    self._validate = validate
    self._fields = dict(fields) if fields is not None else None
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many types here; the first line of its message says what is wrong.
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise UserError(f"{self.spec}: cannot open: {reason}") from None
    if not len(self._source):
      raise UserError(f"{self.spec}: no records")
    bad = BadRecords() if bad is None else bad
    invalid = []
    for index in range(len(self._source)):
      try:
        self._load(index)
      except UserError as e:
        bad.skip(f"{self.spec}: record {index}", e)
        invalid.append(index)
    if len(invalid) == len(self._source):
      raise UserError(f"{self.spec}: no records left: all {len(invalid)} were invalid")
    self._kept = _kept(len(self._source), invalid)

  def _record(self, element: Mapping[str, Any], where: str) -> dict[str, Any]:
    if self._fields is None:
      return {key: _to_python(value, where) for key, value in element.items()}
    record = {}
    for ours, theirs in self._fields.items():
      if theirs not in element:
        raise UserError(f'{where}: no feature "{theirs}" (for "{ours}"); features: {", ".join(sorted(element))}')
      record[ours] = _to_python(element[theirs], where)
    return record

  def __len__(self) -> int:
    return len(self._source) if self._kept is None else len(self._kept)

  def _load(self, index: int) -> Record:
    where = f"{self.spec}: record {index}"
    return self._validate(self._record(self._source[index], where), where)

  def __getitem__(self, index: int) -> Record:
    index = _check_index(index, len(self))
    return self._load(index if self._kept is None else int(self._kept[index]))

  def __repr__(self) -> str:
    return f"TfdsSource({self.spec!r}, {len(self)} records)"


def tfds_source(name: str, split: str, data_dir: PathLike | None = None, *, kind: str,
                fields: Mapping[str, str] | None = None, bad: BadRecords | None = None) -> TfdsSource:
  """The TFDS dataset `name`, split `split`, as records of `kind`, features renamed by `fields`."""
  return TfdsSource(name, split, _validator(kind), data_dir=data_dir, fields=fields, bad=bad)


# ---------------------------------------------------------------------------------------------------------
# Dispatch.

Source = JsonlSource | ArrayRecordSource | TfdsSource | TextSource


def open_source(path_or_spec: PathLike, kind: str, *, fields: Mapping[str, str] | None = None,
                data_dir: PathLike | None = None, bad: BadRecords | None = None) -> Source:
  """Opens any supported input as a source of `kind` records, chosen by its form (`bad`: the invalid records
  it may leave out; plain text has no records to leave out):

    *.jsonl                       JsonlSource
    *.array_record* (or a glob)   ArrayRecordSource (TFDS's "x.array_record-00000-of-00004" shards too)
    tfds:NAME/SPLIT               TfdsSource (NAME may hold a config, "glue/cola"; `fields`, `data_dir`)
    *.txt or a directory          TextSource, for kind "pretrain" only
  """
  validate = _validator(kind)
  spec = os.fspath(path_or_spec)
  if spec.startswith("tfds:"):
    name, _, split = spec[len("tfds:"):].rpartition("/")
    if not name or not split:
      raise UserError(f"{spec}: expected tfds:NAME/SPLIT, e.g. tfds:imdb_reviews/train")
    return TfdsSource(name, split, validate, data_dir=data_dir, fields=fields, bad=bad)
  if fields is not None or data_dir is not None:
    raise UserError(f"{spec}: fields and data_dir apply only to tfds:NAME/SPLIT sources")
  if spec.endswith(".jsonl"):
    return JsonlSource(spec, validate, bad)
  if ".array_record" in os.path.basename(spec):
    return ArrayRecordSource(spec, validate, bad)
  if spec.endswith(".txt") or os.path.isdir(spec):
    if kind != "pretrain":
      raise UserError(f"{spec}: plain text is pretraining data; {kind} data must be JSONL, ArrayRecord or TFDS")
    return TextSource(spec)
  raise UserError(f"{spec}: unrecognised data source (and no such directory); expected {_SOURCE_FORMS}")
