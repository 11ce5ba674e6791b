"""Tokenizers and the chat template shared by every stage.

Two tokenizers implement one small interface (`Tokenizer`): a sentencepiece model (BPE or unigram) trained
in memory for real corpora, and a character-level one for tiny corpora such as Tiny Shakespeare. Both use
the same fixed layout of special ids, so the chat template, the reward model and the samplers never ask a
tokenizer where its special tokens live:

  id  token            use
  0   <pad>            padding
  1   <unk>            reserved; neither tokenizer produces it (byte fallback / encode raises instead)
  2   <s>              beginning of sequence (callers add it where they want it)
  3   </s>             end of sequence
  4   <|system|>       starts a system turn
  5   <|user|>         starts a user turn
  6   <|assistant|>    starts an assistant turn
  7   <|end|>          ends a turn
  8   <|reward|>       a slot the reward model may append to read its score from
  9.. ordinary pieces (sentencepiece: the 256 byte pieces first, then learned pieces; char: the characters)

Special ids are never produced by `encode` of ordinary text, so a user who types "<|user|>" in a message
gets the characters, not a role token, and `decode` drops them.

Chat template (`render_chat`): each message is `role id, encode(content), end-of-turn id`, with no BOS.
Contents are encoded one by one, never across a turn boundary, so `parse_chat(render_chat(m)) == m`
exactly whenever `decode(encode(content)) == content`, which both tokenizers guarantee.
"""

import abc
import io
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import sentencepiece as spm

from rlhf_jax.errors import UserError

PAD = "<pad>"
UNK = "<unk>"
BOS = "<s>"
EOS = "</s>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
REWARD = "<|reward|>"

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SYSTEM_ID = 4
USER_ID = 5
ASSISTANT_ID = 6
END_OF_TURN_ID = 7
REWARD_ID = 8

# Every special token, indexed by its id.
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, SYSTEM, USER, ASSISTANT, END_OF_TURN, REWARD)
NUM_SPECIAL = len(SPECIAL_TOKENS)
CHAT_TOKENS = SPECIAL_TOKENS[SYSTEM_ID:]

ROLES = ("system", "user", "assistant")
ROLE_IDS = {"system": SYSTEM_ID, "user": USER_ID, "assistant": ASSISTANT_ID}

SENTENCEPIECE_FILE = "tokenizer.model"
CHAR_FILE = "tokenizer.json"

# Sentencepiece skips, without a word, every training sentence longer than `max_sentence_length` bytes
# (default 4192). We raise the limit and cut longer texts ourselves (`_chunks`) so no text is lost.
_MAX_SENTENCE_BYTES = 1 << 16
_MODEL_TYPES = ("bpe", "unigram")


class Tokenizer(abc.ABC):
  """What the stages need from a tokenizer: text <-> ids plus the fixed special ids above."""

  pad_id: ClassVar[int] = PAD_ID
  unk_id: ClassVar[int] = UNK_ID
  bos_id: ClassVar[int] = BOS_ID
  eos_id: ClassVar[int] = EOS_ID
  end_of_turn_id: ClassVar[int] = END_OF_TURN_ID
  reward_id: ClassVar[int] = REWARD_ID

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, special ids included: the size of the model's embedding table."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids of `text`, never containing a special id, with no BOS or EOS added."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text; subclasses override it where the backend batches faster."""
    return [self.encode(text) for text in texts]

  @abc.abstractmethod
  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    """Writes the tokenizer file into `directory` (created if needed) and returns its path."""

  @abc.abstractmethod
  def _decode_pieces(self, ids: list[int]) -> str:
    """Text of ordinary ids (all >= NUM_SPECIAL and < vocab_size)."""

  def role_id(self, role: str) -> int:
    """Id of the token that starts a `role` turn."""
    if role not in ROLE_IDS:
      raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return ROLE_IDS[role]

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of `ids`, a list or 1-D array; special ids are dropped, as they stand for no text."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1:
      raise ValueError(f"decode takes a 1-D sequence of ids, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
    return self._decode_pieces(ids[ids >= NUM_SPECIAL].tolist())


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model whose first nine pieces follow the special-id layout of this module."""

  def __init__(self, model_proto: bytes):
    """Loads a serialized sentencepiece `ModelProto`.

    Raises ValueError (or sentencepiece's RuntimeError for bytes that are no model at all) when the
    model's special pieces do not match the fixed layout; `load_tokenizer` turns both into a UserError
    that names the file.
    """
    self._model_proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
    num_pieces = self._sp.get_piece_size()
    if num_pieces < NUM_SPECIAL:
      raise ValueError(f"the model has {num_pieces} pieces, fewer than the {NUM_SPECIAL} special ones")
    for token_id, token in enumerate(SPECIAL_TOKENS):
      piece = self._sp.id_to_piece(token_id)
      expected_kind = self._sp.is_unknown if token_id == UNK_ID else self._sp.is_control
      if piece != token or not expected_kind(token_id):
        raise ValueError(f"id {token_id} should be the special token {token!r}, found piece {piece!r}")

  @property
  def model_proto(self) -> bytes:
    """The serialized sentencepiece model, exactly as `save` writes it."""
    return self._model_proto

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # One call encodes the whole list on sentencepiece's own threads.
    return self._sp.encode(list(texts))

  def _decode_pieces(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(directory) / SENTENCEPIECE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(self._model_proto)
    return path


def _chunks(text: str, max_bytes: int) -> Iterator[str]:
  """Cuts `text` into pieces of at most `max_bytes` UTF-8 bytes, after a newline where there is one.

  Cutting after a newline keeps words (and so the statistics BPE learns from) whole; a line longer than
  `max_bytes` is cut at the last character boundary instead.
  """
  data = text.encode("utf-8")
  start = 0
  while len(data) - start > max_bytes:
    end = data.rfind(b"\n", start, start + max_bytes) + 1
    if end <= start:
      end = start + max_bytes
      while data[end] & 0xC0 == 0x80:  # A UTF-8 continuation byte: back off to the character's start.
        end -= 1
    yield data[start:end].decode("utf-8")
    start = end
  if start < len(data):
    yield data[start:].decode("utf-8")


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    *,
    num_threads: int = 1,
) -> SentencePieceTokenizer:
  """Trains a sentencepiece model in memory on `texts` that reproduces any text byte for byte.

  The settings keep text exact: identity normalisation (no NFKC), spaces kept as they are (no stripping,
  no collapsing, no dummy leading space), pieces made only of spaces allowed (code indentation), every
  character seen kept (character_coverage 1.0), and byte fallback so characters never seen in training
  encode as their UTF-8 bytes rather than <unk>. Digits are split one per piece, so numbers get consistent
  tokens (as in LLaMA). Texts longer than sentencepiece's sentence limit are cut into chunks first
  (`_chunks`), because sentencepiece would otherwise drop them silently.

  Training reads every sentence (no sampling), so there is no seed: the same texts, vocab_size, model_type
  and num_threads give the same model bytes. The thread count is part of that: unigram's EM splits its
  sums across threads and its pieces change with the count (BPE's do not), so the default of 1 gives the
  same model on any machine.

  Raises UserError when `texts` is empty, `vocab_size` is too small for the special and byte pieces and
  the characters of the corpus, or larger than the number of pieces the corpus supports. The last is an
  error rather than a smaller vocabulary, because configs size the embedding table from `vocab_size`.
  """
  if model_type not in _MODEL_TYPES:
    raise UserError(f"model_type={model_type!r}: expected one of {', '.join(_MODEL_TYPES)}")
  num_sentences = 0

  def sentences() -> Iterator[str]:
    nonlocal num_sentences
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise UserError(f"texts[{i}] is a {type(text).__name__}, expected str")
      for chunk in _chunks(text, _MAX_SENTENCE_BYTES):
        num_sentences += 1
        yield chunk

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        minloglevel=1,  # Warnings only: the info log runs to hundreds of lines per training.
        sentence_iterator=sentences(),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        # Soft limit, so a corpus with too few pieces still trains and we can report how many it has.
        hard_vocab_limit=False,
        num_threads=num_threads,
        input_sentence_size=0,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece=PAD,
        unk_piece=UNK,
        bos_piece=BOS,
        eos_piece=EOS,
        # Control symbols, not the user_defined_symbols that NOTES-stack.md suggests: user-defined
        # symbols are matched in raw text, so a message containing "<|user|>" would encode to the role
        # token and could forge a turn. Control symbols get ids (4..8, in this order, right after the
        # four above) but are never produced by encoding text; only the chat template places them.
        control_symbols=list(CHAT_TOKENS),
    )
  except RuntimeError as e:
    if num_sentences == 0:
      raise UserError("texts: no text to train a tokenizer on") from e
    raise UserError(f"sentencepiece training failed for vocab_size={vocab_size}: {e}") from e
  tokenizer = SentencePieceTokenizer(model.getvalue())
  if tokenizer.vocab_size < vocab_size:
    raise UserError(
        f"vocab_size={vocab_size} is more than this corpus supports ({tokenizer.vocab_size} pieces); "
        "lower vocab_size or train on more text"
    )
  return tokenizer


class CharTokenizer(Tokenizer):
  """One id per character, for small corpora whose characters are all known up front.

  `encode` raises UserError for a character outside the vocabulary instead of mapping it to <unk>: a
  silent <unk> would break `decode(encode(text)) == text`, and with a vocabulary built from the corpus
  such a character means the wrong tokenizer or corpus is in use.
  """

  def __init__(self, chars: Sequence[str]):
    """`chars[i]` gets id NUM_SPECIAL + i. Raises ValueError unless they are distinct single characters."""
    chars = tuple(chars)
    for char in chars:
      if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"chars must be single characters, got {char!r}")
    if len(set(chars)) != len(chars):
      raise ValueError("chars contains a character twice")
    self._chars = chars
    self._ids = {char: NUM_SPECIAL + i for i, char in enumerate(chars)}

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    """A tokenizer whose vocabulary is the distinct characters of `text`, sorted by code point."""
    if not text:
      raise UserError("CharTokenizer.from_text: text is empty")
    return cls(sorted(set(text)))

  @property
  def chars(self) -> tuple[str, ...]:
    """The vocabulary, in id order."""
    return self._chars

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + len(self._chars)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[char] for char in text]
    except KeyError as e:
      char = e.args[0]
      raise UserError(
          f"character {char!r} (offset {text.index(char)}) is not in the char tokenizer's vocabulary"
      ) from None

  def _decode_pieces(self, ids: list[int]) -> str:
    return "".join(self._chars[i - NUM_SPECIAL] for i in ids)

  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(directory) / CHAR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "char", "chars": list(self._chars)}), encoding="utf-8")
    return path


def _load_char(path: pathlib.Path) -> CharTokenizer:
  try:
    spec = json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: not a valid tokenizer JSON file ({e})") from e
  if not isinstance(spec, dict) or spec.get("type") != "char" or not isinstance(spec.get("chars"), list):
    raise UserError(f'{path}: expected a JSON object {{"type": "char", "chars": [...]}}')
  try:
    return CharTokenizer(spec["chars"])
  except ValueError as e:
    raise UserError(f"{path}: {e}") from e


def _load_file(path: pathlib.Path) -> Tokenizer:
  """Picks the tokenizer class from the file name's suffix, as `save` writes them."""
  try:
    if path.suffix == ".model":
      try:
        return SentencePieceTokenizer(path.read_bytes())
      except (RuntimeError, ValueError) as e:
        raise UserError(f"{path}: not a valid sentencepiece model for rlhf_jax ({e})") from e
    if path.suffix == ".json":
      return _load_char(path)
  except OSError as e:
    raise UserError(f"{path}: cannot read tokenizer file ({e.strerror})") from e
  raise UserError(f"{path}: unknown tokenizer file format; expected a .model or .json file")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads a tokenizer from a file, or from a directory holding tokenizer.model or tokenizer.json.

  A directory with both is read as sentencepiece: the char tokenizer is only for small experiments.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    for name in (SENTENCEPIECE_FILE, CHAR_FILE):
      if (path / name).is_file():
        return _load_file(path / name)
    raise UserError(f"{path}: directory holds neither {SENTENCEPIECE_FILE} nor {CHAR_FILE}")
  if not path.is_file():
    raise UserError(f"{path}: no such tokenizer file or directory")
  return _load_file(path)


def _check_message(index: int, message: Any) -> None:
  if not isinstance(message, Mapping):
    raise UserError(f"messages[{index}] is a {type(message).__name__}, expected a dict")
  for key in ("role", "content"):
    if key not in message:
      raise UserError(f'messages[{index}] has no "{key}"')
  if message["role"] not in ROLE_IDS:
    raise UserError(
        f"messages[{index}] has unknown role {message['role']!r}; expected one of {', '.join(ROLES)}"
    )
  if not isinstance(message["content"], str):
    raise UserError(f"messages[{index}] content is a {type(message['content']).__name__}, expected str")


def render_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids of a conversation and the mask of the tokens SFT trains on.

  Each message `{"role": ..., "content": ...}` (other keys are ignored) becomes its role id, the ids of
  its content and the end-of-turn id. No BOS is added, so rendered chats can be concatenated or packed
  as they are; callers that want one prepend `tokenizer.bos_id` (and a False to the mask).

  Returns `(ids, assistant_mask)`, both of shape [T]: int32 ids, and a bool mask that is True on the
  content and end-of-turn ids of assistant turns, so SFT learns to answer and to stop; role ids and
  system/user turns are False. With `add_generation_prompt`, an assistant role id (mask False) is
  appended so that sampling continues as the assistant.
  """
  for index, message in enumerate(messages):
    _check_message(index, message)
  contents = tokenizer.encode_batch([message["content"] for message in messages])
  ids: list[int] = []
  mask: list[bool] = []
  for message, content in zip(messages, contents):
    is_assistant = message["role"] == "assistant"
    ids += [tokenizer.role_id(message["role"]), *content, tokenizer.end_of_turn_id]
    mask += [False] + [is_assistant] * (len(content) + 1)
  if add_generation_prompt:
    ids.append(tokenizer.role_id("assistant"))
    mask.append(False)
  return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)


def parse_chat(tokenizer: Tokenizer, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
  """The messages of rendered chat `ids`: the inverse of `render_chat`.

  Outside turns, pad, BOS, EOS and reward ids are skipped (padding, a prepended BOS, an appended reward
  slot); inside a turn, special ids are dropped as `decode` drops them. A final turn with no end-of-turn
  id (a generation cut off, or the prompt of `add_generation_prompt`) comes back as
  `{"role": ..., "content": ..., "incomplete": True}`; complete turns have only role and content, so
  `parse_chat(tokenizer, render_chat(tokenizer, messages)[0]) == messages`.

  Raises ValueError for ids that no rendering produces: content outside a turn, an end-of-turn id with
  no turn open, or a role id inside an open turn.
  """
  ids = np.asarray(ids, dtype=np.int64)
  if ids.ndim != 1:
    raise ValueError(f"parse_chat takes a 1-D sequence of ids, got shape {ids.shape}")
  role_of = {tokenizer.role_id(role): role for role in ROLES}
  skipped = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.reward_id}
  messages: list[dict[str, Any]] = []
  role, start = None, 0
  for position, token in enumerate(ids.tolist()):
    if role is None:
      if token in role_of:
        role, start = role_of[token], position + 1
      elif token not in skipped:
        raise ValueError(f"id {token} at position {position} lies outside any turn")
    elif token == tokenizer.end_of_turn_id:
      messages.append({"role": role, "content": tokenizer.decode(ids[start:position])})
      role = None
    elif token in role_of:
      raise ValueError(f"role id {token} at position {position} is inside an unfinished {role} turn")
  if role is not None:
    messages.append({"role": role, "content": tokenizer.decode(ids[start:]), "incomplete": True})
  return messages
