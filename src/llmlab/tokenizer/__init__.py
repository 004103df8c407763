"""Tokenizers behind one interface (`Tokenizer`), and the functions that build and load them.

    base.py    the interface: encode / decode / vocab_size / to_dict / save
    char.py    character-level tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import TOKENIZER_FILE, Tokenizer
from llmlab.tokenizer.char import CharTokenizer

# type name in a saved dict -> class. Other tokenizer kinds register here.
TOKENIZER_TYPES: dict[str, type[Tokenizer]] = {"char": CharTokenizer}


def tokenizer_from_dict(data: dict) -> Tokenizer:
    kind = data.get("type")
    if kind not in TOKENIZER_TYPES:
        raise LLMLabError(f"unknown tokenizer type {kind!r}; known: {', '.join(TOKENIZER_TYPES)}")
    return TOKENIZER_TYPES[kind].from_dict(data)


def load_tokenizer(source: str | Path) -> Tokenizer:
    """Load a tokenizer saved with `Tokenizer.save` (a directory or its llmlab-tokenizer.json)."""
    path = Path(source)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise LLMLabError(f"no tokenizer at {source}: expected a directory containing {TOKENIZER_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMLabError(f"{path} is not valid JSON ({e}); re-create it with `llmlab tokenizer train`") from e
    return tokenizer_from_dict(data)


def build_tokenizer(spec: str, text: str) -> Tokenizer:
    """The tokenizer a dataset asks for: "char" (built from `text`) or a saved tokenizer path."""
    if spec == "char":
        return CharTokenizer.train(text)
    return load_tokenizer(spec)


__all__ = ["Tokenizer", "CharTokenizer", "TOKENIZER_TYPES", "tokenizer_from_dict", "load_tokenizer", "build_tokenizer"]
