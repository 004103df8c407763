"""Our WordPiece must give exactly the ids of HF `tokenizers` loading the same tokenizer.json."""

import pytest
from tokenizers import Tokenizer as HFTokenizer

from llmlab.core.assets import minilm_dir, pydocs_topics
from llmlab.tokenizer.wordpiece import WordPieceTokenizer, basic_tokenize

TRICKY = [
    "Hello, World!", "The café in Zürich serves crème brûlée.", "naïve résumé — coöperate",
    "中文测试 mixed with English", "日本語のテキスト", "def f(x): return x**2  # squares",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "e-mail me at someone@example.com or https://example.org/a?b=c&d=e",
    "Tabs\tand\nnewlines\r\nand   spaces", "$100 ^ `backticks` ~tilde~ |pipe|", "Ελληνικά και русский текст",
    "x" * 150, "emoji 🙂 and symbols ©®™", "control\x00char\x07s", "", "   ",
]


@pytest.fixture(scope="module")
def ours():
    return WordPieceTokenizer.from_vocab_file(minilm_dir() / "vocab.txt")


@pytest.fixture(scope="module")
def reference():
    tok = HFTokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_identical_ids_on_tricky_text(ours, reference):
    for text in TRICKY:
        assert ours.encode_for_model(text, 10_000) == reference.encode(text).ids, text


def test_identical_ids_on_python_docs(ours, reference):
    topics = pydocs_topics()
    texts = [topics[name][:3000] for name in sorted(topics)[:60]]
    for text in texts:
        assert ours.encode_for_model(text, 10_000) == reference.encode(text).ids


def test_basic_tokenizer_splits_punctuation_and_cjk():
    assert basic_tokenize("Héllo,world 中文") == ["hello", ",", "world", "中", "文"]


def test_truncation_keeps_cls_and_sep(ours):
    ids = ours.encode_for_model("word " * 1000, 256)
    assert len(ids) == 256 and ids[0] == ours.cls_id and ids[-1] == ours.sep_id


def test_round_trip_dict(ours):
    again = WordPieceTokenizer.from_dict(ours.to_dict())
    assert again.encode("Round trip works.") == ours.encode("Round trip works.")
    assert ours.decode(ours.encode("unbelievable things")) == "unbelievable things"
