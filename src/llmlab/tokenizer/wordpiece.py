"""WordPiece tokenization for BERT-family vocabularies (vocab.txt), written from scratch.

Two stages, as in the original BERT release (Devlin et al. 2018, `tokenization.py`):

1. Basic tokenization: clean control characters, put spaces around CJK ideographs (they are
   written without spaces), lowercase and strip accents (NFD, then drop combining marks) for
   uncased models, split on whitespace, then split off every punctuation character.
2. WordPiece: for each word, greedy longest-match-first against the vocabulary; pieces after
   the first carry the `##` prefix. A word with no segmentation (or longer than 100 chars)
   becomes `[UNK]` as a whole (Wu et al. 2016, "Google's NMT system", Sec. 4.1).

`encode_for_model` adds `[CLS] ... [SEP]` and truncates to the model's max length, which is
what sentence-transformers does before the encoder sees the ids.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import Tokenizer


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats all non-alphanumeric ASCII as punctuation (e.g. "$", "^", "`"), which the
    # Unicode "P*" categories do not include.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> list[str]:
    """Split text into words and punctuation the way BERT's BasicTokenizer does."""
    if strip_accents is None:
        strip_accents = lowercase  # BERT ties accent stripping to lowercasing unless told otherwise
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words = []
    for word in "".join(out).split():
        if lowercase:
            word = word.lower()
        if strip_accents:
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
        current = []
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
    return words


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece over a vocab.txt (one token per line; the line number is the id)."""

    kind = "wordpiece"

    def __init__(self, vocab: list[str], lowercase: bool = True, strip_accents: bool | None = None,
                 max_chars_per_word: int = 100, model_max_length: int = 512):
        self.vocab = list(vocab)
        self.token_to_id = {tok: i for i, tok in enumerate(self.vocab)}
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.max_chars_per_word = max_chars_per_word
        self.model_max_length = model_max_length
        for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if special not in self.token_to_id:
                raise LLMLabError(f"WordPiece vocabulary has no {special} token: is this a BERT vocab.txt?")
        self.unk_id = self.token_to_id["[UNK]"]
        self.cls_id = self.token_to_id["[CLS]"]
        self.sep_id = self.token_to_id["[SEP]"]
        self.pad_id = self.token_to_id["[PAD]"]
        self._word_cache: dict[str, list[int]] = {}

    @classmethod
    def from_vocab_file(cls, path: str | Path, **kwargs) -> "WordPieceTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.txt"
        if not path.is_file():
            raise LLMLabError(f"{path} not found: pass a BERT vocab.txt or the model directory holding it")
        vocab = path.read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
        return cls(vocab, **kwargs)

    def _word_ids(self, word: str) -> list[int]:
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_chars_per_word:
            ids = [self.unk_id]
        else:
            ids, start = [], 0
            while start < len(word):
                end = len(word)
                found = None
                while start < end:  # longest match first
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    found = self.token_to_id.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        if len(self._word_cache) < 200_000:
            self._word_cache[word] = ids
        return ids

    def tokenize(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in basic_tokenize(text, self.lowercase, self.strip_accents):
            ids.extend(self._word_ids(word))
        return ids

    def encode_for_model(self, text: str, max_length: int | None = None) -> list[int]:
        """[CLS] ids [SEP], truncated so the whole sequence fits in `max_length` tokens."""
        max_length = max_length or self.model_max_length
        return [self.cls_id] + self.encode(text)[: max_length - 2] + [self.sep_id]

    def decode(self, ids: list[int]) -> str:
        out = ""
        for i in ids:
            tok = self.vocab[i]
            if tok in ("[CLS]", "[SEP]", "[PAD]"):
                continue
            out += tok[2:] if tok.startswith("##") else (" " + tok if out else tok)
        return out

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def to_dict(self) -> dict:
        return {"type": self.kind, "vocab": self.vocab, "lowercase": self.lowercase,
                "strip_accents": self.strip_accents, "model_max_length": self.model_max_length}

    @classmethod
    def from_dict(cls, data: dict) -> "WordPieceTokenizer":
        return cls(data["vocab"], lowercase=data.get("lowercase", True), strip_accents=data.get("strip_accents"),
                   model_max_length=data.get("model_max_length", 512))
