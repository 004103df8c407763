"""The interface every tokenizer implements, so data prep, training and sampling never care which.

A tokenizer maps text <-> integer ids. It serialises to a plain dict (`to_dict`) that is stored
inside every checkpoint and token dataset, so a model always travels with the exact tokenizer it
was trained on. `load_tokenizer` (in `llmlab.tokenizer`) rebuilds one from such a dict or a saved
directory.

BOS/EOS. `encode(text)` never adds them. Some models were trained with a BOS token in front of
every sequence (Llama 1-3, Mistral, TinyLlama); their files say so (`add_bos_token` in
tokenizer_config.json, a TemplateProcessing post-processor in tokenizer.json, or
`tokenizer.ggml.add_bos_token` in GGUF), which a tokenizer keeps as `add_bos` / `add_eos`.
`encode(text, add_special=True)` then adds them, as Hugging Face's `add_special_tokens=True` and
llama.cpp's `add_special` do. A prompt rendered by a chat template already holds its BOS, so it is
encoded without `add_special`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import regex

from llmlab.core.io import atomic_write_json

TOKENIZER_FILE = "llmlab-tokenizer.json"
FORMAT_VERSION = 1


class Tokenizer(ABC):
    """text -> ids -> text. Subclasses set `kind` and implement the four abstract methods."""

    kind: str = "base"
    eos_id: int | None = None
    bos_id: int | None = None
    add_bos: bool = False   # the model expects BOS before every sequence
    add_eos: bool = False   # ... and EOS after it (rare: some embedding / seq2seq models)

    @abstractmethod
    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Ids for `text`; with add_special=True, BOS/EOS as `add_bos` / `add_eos` say."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        ...

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The bytes these ids stand for. Byte-level tokenizers override it: one of their tokens may
        hold part of a UTF-8 character, which streaming must not decode alone."""
        return self.decode(ids).encode("utf-8")

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        ...

    @abstractmethod
    def to_dict(self) -> dict:
        """Everything needed to rebuild this tokenizer; must include {"type": self.kind}."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        ...

    def with_special(self, ids: list[int]) -> list[int]:
        """`ids` framed by the BOS / EOS this tokenizer's model expects (none unless add_bos/add_eos)."""
        bos = [self.bos_id] if self.add_bos and self.bos_id is not None else []
        eos = [self.eos_id] if self.add_eos and self.eos_id is not None else []
        return bos + list(ids) + eos

    def save(self, directory: str | Path) -> Path:
        """Write `<directory>/llmlab-tokenizer.json` atomically and return its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_json(path, {"format": "llmlab-tokenizer", "version": FORMAT_VERSION, **self.to_dict()})
        return path


def special_pattern(special_tokens: dict[str, int]) -> regex.Pattern | None:
    """One regex matching any special token's text, longest first (so "<|im_start|>" wins over "<|")."""
    if not special_tokens:
        return None
    return regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))


def split_special(text: str, pattern: regex.Pattern | None, special_tokens: dict[str, int],
                  allowed_special: bool | str | set) -> list[str | int]:
    """`text` cut at the special tokens that are allowed: plain-text pieces (str) and special ids (int).
    allowed_special: False (none: user text cannot inject control tokens), True / "all", or a set of names."""
    if not allowed_special or pattern is None:
        return [text]
    allowed = set(special_tokens) if allowed_special in (True, "all") else set(allowed_special)
    out: list[str | int] = []
    start = 0
    for m in pattern.finditer(text):
        if m.group() not in allowed:
            continue
        out.append(text[start:m.start()])
        out.append(special_tokens[m.group()])
        start = m.end()
    out.append(text[start:])
    return out
