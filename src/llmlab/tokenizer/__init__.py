"""Tokenizers behind one interface (`Tokenizer`), and the functions that build and load them.

    base.py       the interface: encode / decode / vocab_size / to_dict / save
    char.py       character-level tokenizer
    patterns.py   pre-tokenization regexes (GPT-2, GPT-4 cl100k, Llama 3)
    bpe.py        byte-level BPE: rank-merge encoder and the incremental trainer
    spm.py        SentencePiece-style BPE ("▁" spaces, byte fallback): Llama 2, Mistral, TinyLlama
    steps.py      the tokenizer.json normalizer/decoder steps spm.py runs, as HF runs them
    formats.py    Hugging Face tokenizer.json (read/write), both BPE families
    gguf_vocab.py GGUF tokenizer metadata (read; the SentencePiece arrays for export)
    chat.py       chat templates rendered as Hugging Face does
    fast.py       the same vocabulary through HF `tokenizers`, for bulk encoding
"""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import TOKENIZER_FILE, Tokenizer
from llmlab.tokenizer.bpe import BPETokenizer, train_bpe
from llmlab.tokenizer.char import CharTokenizer
from llmlab.tokenizer.spm import SentencePieceBPE

# type name in a saved dict -> class.
TOKENIZER_TYPES: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "bpe": BPETokenizer, "spm": SentencePieceBPE}


def tokenizer_from_dict(data: dict) -> Tokenizer:
    kind = data.get("type")
    if kind not in TOKENIZER_TYPES:
        raise LLMLabError(f"unknown tokenizer type {kind!r}; known: {', '.join(TOKENIZER_TYPES)}")
    return TOKENIZER_TYPES[kind].from_dict(data)


def load_tokenizer(source: str | Path) -> Tokenizer:
    """Load a tokenizer from: "smollm2" (the built-in model's), a .gguf file, a Hugging Face
    tokenizer.json or model directory, or an llmlab tokenizer directory / llmlab-tokenizer.json."""
    if str(source) == "smollm2":
        from llmlab.core.assets import smollm2_gguf
        source = smollm2_gguf()
    path = Path(source)
    if path.suffix == ".gguf":
        from llmlab.tokenizer.formats import read_gguf_tokenizer
        return read_gguf_tokenizer(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        path = path / TOKENIZER_FILE
    elif path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.name == "tokenizer.json" and path.is_file():
        from llmlab.tokenizer.formats import read_hf_tokenizer
        return read_hf_tokenizer(path)
    if not path.is_file():
        raise LLMLabError(f"no tokenizer at {source}: give smollm2, a .gguf file, a tokenizer.json, a Hugging Face "
                          f"model directory, or a directory holding {TOKENIZER_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMLabError(f"{path} is not valid JSON ({e}); re-create it with `llmlab tokenizer train`") from None
    return tokenizer_from_dict(data)


def build_tokenizer(spec: str, text: str) -> Tokenizer:
    """The tokenizer a dataset asks for: "char" (built from `text`), "bpe:<vocab>[:<pattern>]"
    (a byte-level BPE trained on `text`), or anything `load_tokenizer` accepts."""
    if spec == "char":
        return CharTokenizer.train(text)
    if spec.startswith("bpe:"):
        parts = spec.split(":")
        try:
            vocab_size = int(parts[1])
        except (IndexError, ValueError):
            raise LLMLabError(f"tokenizer spec {spec!r}: write bpe:<vocab size>[:<pattern>], e.g. bpe:4096:gpt4") from None
        return train_bpe(text, vocab_size, parts[2] if len(parts) > 2 else "gpt4", progress=True)
    return load_tokenizer(spec)


__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "SentencePieceBPE", "train_bpe", "TOKENIZER_TYPES",
           "tokenizer_from_dict", "load_tokenizer", "build_tokenizer"]
