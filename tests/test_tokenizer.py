"""Tests for rlhf_jax.tokenizer: exact round trips, the special-id layout, the chat template and errors."""

import io
import json
import random
import re

import numpy as np
import pytest
import sentencepiece as spm

from rlhf_jax import tokenizer as tok
from rlhf_jax.errors import UserError

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there one all we their can has been more if no when will would who so up out "
    "them about two into do then these some could than my other time like only its now over also after did "
    "many before must through back years where much your way down should because each just those people "
    "how too little state good very make world still own see men work long get here between both life"
).split()
_ODD = ("café", "naïve", "—", "東京", "\t", "  ", "   ", "12", "2024", "3.14", "<|user|>", "x<y|z>")

# Strings every tokenizer must reproduce byte for byte.
ROUND_TRIP = (
    "",
    "the world",
    "one\ntwo",
    "\n\n",
    "end.\n\nThe next",
    "  leading spaces",
    "trailing spaces   ",
    "a      run    of spaces",
    "\ttabs\tand\t\ttabs\t",
    " \n \t\n",
    "café — naïve 東京 2024",
    "literal <|user|> and <|end|> text",
)
# Characters never seen in training: sentencepiece must fall back to bytes, not <unk>.
UNSEEN = ("Ωmega ж 🙂 ∑ ñ", "<s></s><pad><unk><0x41>", "\r\n\x00")


def _corpus(num_lines: int = 400) -> list[str]:
  """Synthetic English-ish documents with the whitespace and characters the round trips need."""
  rng = random.Random(0)
  lines = []
  for i in range(num_lines):
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 15))]
    if i % 3 == 0:
      words.insert(rng.randint(0, len(words)), rng.choice(_ODD))
    if i % 4 == 1:
      words.append(rng.choice(("2024", "12", "365")))
    lines.append(" ".join(words) + rng.choice(".,!?:") + rng.choice(["\n", "\n\n", "\t\n", "  \n"]))
  return ["".join(lines[i : i + 20]) for i in range(0, num_lines, 20)]


CORPUS = _corpus()
VOCAB_SIZE = 500

CONVERSATION = [
    {"role": "system", "content": "You are  a helpful assistant.\nAnswer briefly."},
    {"role": "user", "content": "what is the world?\n\n  two lines"},
    {"role": "assistant", "content": "The world is\tlarge.\n\nVery   large, café."},
    {"role": "user", "content": "type <|user|> and <|end|> please"},
    {"role": "assistant", "content": "<|user|> <|assistant|>\n"},
]

# A char vocabulary is closed: it has to be built from every text the tests encode.
CHAR_TEXT = "".join([*CORPUS, *ROUND_TRIP, *(m["content"] for m in CONVERSATION), "The world\n  is"])


@pytest.fixture(scope="module")
def sp_tokenizer() -> tok.SentencePieceTokenizer:
  return tok.train_sentencepiece(CORPUS, vocab_size=VOCAB_SIZE)


@pytest.fixture(scope="module")
def char_tokenizer() -> tok.CharTokenizer:
  return tok.CharTokenizer.from_text(CHAR_TEXT)


@pytest.fixture(params=["sentencepiece", "char"])
def any_tokenizer(request, sp_tokenizer, char_tokenizer) -> tok.Tokenizer:
  return {"sentencepiece": sp_tokenizer, "char": char_tokenizer}[request.param]


# --- layout ----------------------------------------------------------------------------------------------


def test_documented_special_ids():
  assert (tok.PAD_ID, tok.UNK_ID, tok.BOS_ID, tok.EOS_ID) == (0, 1, 2, 3)
  assert (tok.SYSTEM_ID, tok.USER_ID, tok.ASSISTANT_ID, tok.END_OF_TURN_ID, tok.REWARD_ID) == (4, 5, 6, 7, 8)
  assert tok.SPECIAL_TOKENS[tok.END_OF_TURN_ID] == tok.END_OF_TURN == "<|end|>"
  assert tok.ROLES == ("system", "user", "assistant")


def test_tokenizers_use_the_documented_ids(any_tokenizer):
  t = any_tokenizer
  assert (t.pad_id, t.unk_id, t.bos_id, t.eos_id, t.end_of_turn_id, t.reward_id) == (0, 1, 2, 3, 7, 8)
  assert [t.role_id(role) for role in tok.ROLES] == [4, 5, 6]


def test_sentencepiece_pieces_follow_the_layout(sp_tokenizer):
  sp = spm.SentencePieceProcessor(model_proto=sp_tokenizer.model_proto)
  assert [sp.id_to_piece(i) for i in range(tok.NUM_SPECIAL)] == list(tok.SPECIAL_TOKENS)
  assert all(sp.is_control(i) for i in range(tok.NUM_SPECIAL) if i != tok.UNK_ID)
  assert sp_tokenizer.vocab_size == VOCAB_SIZE


def test_char_ids_follow_the_special_ids(char_tokenizer):
  chars = char_tokenizer.chars
  assert list(chars) == sorted(set(CHAR_TEXT))
  assert char_tokenizer.vocab_size == tok.NUM_SPECIAL + len(chars)
  assert char_tokenizer.encode(chars[0] + chars[-1]) == [tok.NUM_SPECIAL, tok.NUM_SPECIAL + len(chars) - 1]


# --- encode / decode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(any_tokenizer, text):
  ids = any_tokenizer.encode(text)
  assert all(i >= tok.NUM_SPECIAL for i in ids)
  assert any_tokenizer.decode(ids) == text
  assert any_tokenizer.decode(np.asarray(ids, dtype=np.int32)) == text


@pytest.mark.parametrize("text", UNSEEN)
def test_sentencepiece_byte_fallback(sp_tokenizer, text):
  ids = sp_tokenizer.encode(text)
  assert all(i >= tok.NUM_SPECIAL for i in ids)  # Neither <unk> nor a literal "<s>" becomes a special id.
  assert sp_tokenizer.decode(ids) == text


def test_literal_chat_tokens_are_plain_text(any_tokenizer):
  ids = any_tokenizer.encode("<|user|><|assistant|><|end|>")
  assert len(ids) > 3 and min(ids) >= tok.NUM_SPECIAL


def test_sentencepiece_digits_and_space_runs(sp_tokenizer):
  # Numbers split one digit per piece even though the corpus repeats these ones a hundred times.
  for number in ("2024", "12", "365", "3.14"):
    assert sp_tokenizer.encode(number) == [sp_tokenizer.encode(char)[0] for char in number]
  # Runs of spaces are learned as pieces of their own, so indentation does not cost a token per space.
  assert len(sp_tokenizer.encode("  ")) == 1
  assert len(sp_tokenizer.encode(" " * 8)) < 8


def test_encode_batch_matches_encode(any_tokenizer):
  assert any_tokenizer.encode_batch(list(ROUND_TRIP)) == [any_tokenizer.encode(t) for t in ROUND_TRIP]


def test_decode_drops_special_ids(any_tokenizer):
  ids = any_tokenizer.encode("one\ntwo")
  wrapped = [tok.BOS_ID, tok.USER_ID, *ids, tok.END_OF_TURN_ID, tok.PAD_ID, tok.UNK_ID, tok.REWARD_ID]
  assert any_tokenizer.decode(wrapped) == "one\ntwo"


def test_decode_rejects_out_of_range_ids(any_tokenizer):
  with pytest.raises(ValueError, match="ids must lie"):
    any_tokenizer.decode([tok.NUM_SPECIAL, any_tokenizer.vocab_size])


def test_char_encode_names_unknown_character(char_tokenizer):
  with pytest.raises(UserError, match=r"'Ω' \(offset 3\)"):
    char_tokenizer.encode("the\u03a9")


# --- training --------------------------------------------------------------------------------------------


def test_training_is_deterministic(sp_tokenizer):
  again = tok.train_sentencepiece(CORPUS, vocab_size=VOCAB_SIZE)
  assert again.model_proto == sp_tokenizer.model_proto


def test_training_keeps_lines_longer_than_sentencepiece_limit():
  # One 140 kB line: sentencepiece alone would skip it, and "quokka" would not even be a character.
  tokenizer = tok.train_sentencepiece([*CORPUS, "quokka " * 20_000], vocab_size=VOCAB_SIZE)
  assert len(tokenizer.encode(" quokka")) == 1


def test_chunks_cut_on_newlines_and_character_boundaries():
  text = "ab\ncd東京\n" + "é" * 50 + "x\n\n"
  chunks = list(tok._chunks(text, max_bytes=7))
  assert "".join(chunks) == text
  assert all(0 < len(chunk.encode("utf-8")) <= 7 for chunk in chunks)
  assert chunks[0] == "ab\n"


def test_unigram_round_trip():
  tokenizer = tok.train_sentencepiece(CORPUS, vocab_size=400, model_type="unigram")
  for text in ROUND_TRIP + UNSEEN:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_vocab_larger_than_corpus_supports():
  with pytest.raises(UserError, match="vocab_size=50000 is more than this corpus supports"):
    tok.train_sentencepiece(CORPUS, vocab_size=50_000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"texts": [], "vocab_size": 500}, "no text"),
        ({"texts": CORPUS, "vocab_size": 100}, "vocab_size=100"),
        ({"texts": CORPUS, "vocab_size": 500, "model_type": "word"}, "model_type='word'"),
        ({"texts": [b"bytes"], "vocab_size": 500}, r"texts\[0\] is a bytes"),
    ],
)
def test_training_errors(kwargs, message):
  with pytest.raises(UserError, match=message):
    tok.train_sentencepiece(**kwargs)


# --- chat template ---------------------------------------------------------------------------------------


def test_chat_round_trip(any_tokenizer):
  ids, mask = tok.render_chat(any_tokenizer, CONVERSATION)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
  assert tok.parse_chat(any_tokenizer, ids) == CONVERSATION


def test_literal_role_text_cannot_forge_a_turn(any_tokenizer):
  ids, _ = tok.render_chat(any_tokenizer, CONVERSATION)
  role_count = {role: int(np.sum(ids == any_tokenizer.role_id(role))) for role in tok.ROLES}
  assert role_count == {"system": 1, "user": 2, "assistant": 2}
  assert int(np.sum(ids == tok.END_OF_TURN_ID)) == len(CONVERSATION)


def test_assistant_mask(any_tokenizer):
  ids, mask = tok.render_chat(any_tokenizer, CONVERSATION)
  contents = [any_tokenizer.encode(message["content"]) for message in CONVERSATION]
  expected_ids, expected_mask = [], []
  for message, content in zip(CONVERSATION, contents):
    is_assistant = message["role"] == "assistant"
    expected_ids += [any_tokenizer.role_id(message["role"]), *content, tok.END_OF_TURN_ID]
    expected_mask += [False] + [is_assistant] * len(content) + [is_assistant]
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_array_equal(mask, expected_mask)
  assistant_lengths = [len(content) for content, m in zip(contents, CONVERSATION) if m["role"] == "assistant"]
  assert mask.sum() == sum(assistant_lengths) + len(assistant_lengths)
  assert not mask[np.isin(ids, [tok.SYSTEM_ID, tok.USER_ID, tok.ASSISTANT_ID])].any()
  assert mask[ids == tok.END_OF_TURN_ID].tolist() == [False, False, True, False, True]


def test_generation_prompt(any_tokenizer):
  plain, plain_mask = tok.render_chat(any_tokenizer, CONVERSATION[:2])
  ids, mask = tok.render_chat(any_tokenizer, CONVERSATION[:2], add_generation_prompt=True)
  np.testing.assert_array_equal(ids, [*plain, tok.ASSISTANT_ID])
  np.testing.assert_array_equal(mask, [*plain_mask, False])
  assert tok.parse_chat(any_tokenizer, ids) == [
      *CONVERSATION[:2],
      {"role": "assistant", "content": "", "incomplete": True},
  ]


def test_parse_unfinished_assistant_turn(any_tokenizer):
  prompt, _ = tok.render_chat(any_tokenizer, CONVERSATION[:2], add_generation_prompt=True)
  ids = [tok.BOS_ID, *prompt, *any_tokenizer.encode("The world\n  is")]
  last = tok.parse_chat(any_tokenizer, ids)[-1]
  assert last == {"role": "assistant", "content": "The world\n  is", "incomplete": True}


def test_parse_skips_padding_and_reward_slot(any_tokenizer):
  ids, _ = tok.render_chat(any_tokenizer, CONVERSATION)
  padded = [tok.BOS_ID, *ids, tok.REWARD_ID, tok.EOS_ID, tok.PAD_ID, tok.PAD_ID]
  assert tok.parse_chat(any_tokenizer, padded) == CONVERSATION


@pytest.mark.parametrize(
    "ids, message",
    [
        ([tok.NUM_SPECIAL, tok.USER_ID, tok.END_OF_TURN_ID], "outside any turn"),
        ([tok.USER_ID, tok.END_OF_TURN_ID, tok.END_OF_TURN_ID], "outside any turn"),
        ([tok.USER_ID, tok.NUM_SPECIAL, tok.ASSISTANT_ID], "inside an unfinished user turn"),
    ],
)
def test_parse_rejects_malformed_ids(char_tokenizer, ids, message):
  with pytest.raises(ValueError, match=message):
    tok.parse_chat(char_tokenizer, ids)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "robot", "content": "hi"}], r"messages\[0\] has unknown role 'robot'"),
        ([{"role": "user", "content": "hi"}, {"role": "user"}], r'messages\[1\] has no "content"'),
        ([{"content": "hi"}], r'messages\[0\] has no "role"'),
        ([{"role": "user", "content": 3}], r"messages\[0\] content is a int"),
        (["hi"], r"messages\[0\] is a str"),
    ],
)
def test_render_rejects_bad_messages(char_tokenizer, messages, message):
  with pytest.raises(UserError, match=message):
    tok.render_chat(char_tokenizer, messages)


def test_role_id_rejects_unknown_role(any_tokenizer):
  with pytest.raises(UserError, match="unknown role 'robot'"):
    any_tokenizer.role_id("robot")


# --- save / load -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["directory", "file"])
def test_save_load_round_trip(any_tokenizer, tmp_path, via):
  path = any_tokenizer.save(tmp_path / "tok")
  assert path.name == {tok.SentencePieceTokenizer: "tokenizer.model", tok.CharTokenizer: "tokenizer.json"}[
      type(any_tokenizer)
  ]
  loaded = tok.load_tokenizer(tmp_path / "tok" if via == "directory" else path)
  assert type(loaded) is type(any_tokenizer)
  assert loaded.vocab_size == any_tokenizer.vocab_size
  assert loaded.encode_batch(list(ROUND_TRIP)) == any_tokenizer.encode_batch(list(ROUND_TRIP))
  assert (loaded.pad_id, loaded.end_of_turn_id, loaded.role_id("assistant")) == (0, 7, 6)


def test_char_file_is_plain_json(char_tokenizer, tmp_path):
  spec = json.loads(char_tokenizer.save(tmp_path).read_text(encoding="utf-8"))
  assert spec == {"type": "char", "chars": list(char_tokenizer.chars)}


def test_load_missing_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(UserError, match=f"^{re.escape(str(missing))}: no such"):
    tok.load_tokenizer(missing)
  with pytest.raises(UserError, match=f"{re.escape(str(tmp_path))}: directory holds neither"):
    tok.load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("tokenizer.model", b"not a sentencepiece model", "not a valid sentencepiece model"),
        ("tokenizer.model", b"", "fewer than the 9 special ones"),
        ("tokenizer.json", b"{not json", "not a valid tokenizer JSON file"),
        ("tokenizer.json", b'{"type": "bpe", "chars": []}', "expected a JSON object"),
        ("tokenizer.json", b'{"type": "char", "chars": ["ab"]}', "single characters"),
        ("tokenizer.json", b'{"type": "char", "chars": ["a", "a"]}', "twice"),
        ("tokenizer.pkl", b"\x80\x04", "unknown tokenizer file format"),
    ],
)
def test_load_malformed_file(tmp_path, name, content, reason):
  path = tmp_path / name
  path.write_bytes(content)
  # The directory form must find the same file and report it by its full path.
  for target in (path, tmp_path) if name != "tokenizer.pkl" else (path,):
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}: .*{reason}"):
      tok.load_tokenizer(target)


def test_load_rejects_sentencepiece_model_with_other_layout(tmp_path):
  model = tmp_path / "tokenizer.model"
  buffer = io.BytesIO()
  # Sentencepiece's default layout: unk=0, bos=1, eos=2, no pad.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=150, minloglevel=1
  )
  model.write_bytes(buffer.getvalue())
  with pytest.raises(UserError, match=f"{re.escape(str(model))}: .*id 0 should be the special token '<pad>'"):
    tok.load_tokenizer(model)
