"""Decontamination: drop training documents that share a long n-gram with evaluation data.

GPT-3 (Brown et al. 2020, appendix C) flagged overlaps of 13-grams of normalised words; we do
the same: lower-case, keep letters and digits, split into words, and drop any document that
contains one of the evaluation files' 13-grams. n-grams are stored as 64-bit BLAKE2b digests
in a Python set (8-9 words of memory each), so millions of evaluation n-grams fit easily.
Evaluation files are read as plain text, or as JSONL whose string fields are all taken.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from llmlab.core.errors import LLMLabError

_WORDS = re.compile(r"[^\W_]+")


def _ngram_digests(text: str, n: int) -> set[int]:
    words = _WORDS.findall(text.lower())
    return {int.from_bytes(hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=8).digest(), "little")
            for i in range(len(words) - n + 1)}


def _eval_texts(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LLMLabError(f"decontamination file {path} cannot be read ({e}); fix decontam.eval_files") from None
    if path.suffix in (".jsonl", ".ndjson"):
        texts = []
        for line in raw.splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                texts.append(line)
                continue
            texts += [v for v in (obj.values() if isinstance(obj, dict) else [obj]) if isinstance(v, str)]
        return texts
    return [raw]


class Decontaminator:
    def __init__(self, eval_files: list[str | Path], n: int = 13):
        self.n = n
        self.ngrams: set[int] = set()
        for f in eval_files:
            for text in _eval_texts(Path(f)):
                self.ngrams |= _ngram_digests(text, n)

    @classmethod
    def from_texts(cls, texts: list[str], n: int = 13) -> "Decontaminator":
        """The n-grams of texts given directly (e.g. a training corpus, to ask which eval items it holds)."""
        index = cls([], n)
        for text in texts:
            index.ngrams |= _ngram_digests(text, n)
        return index

    def contaminated(self, text: str) -> bool:
        return bool(self.ngrams) and not self.ngrams.isdisjoint(_ngram_digests(text, self.n))
