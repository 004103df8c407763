"""Exact dedup: documents whose *normalised* text is identical are one document.

The key is a 128-bit BLAKE2b digest of the text lower-cased with punctuation and whitespace
runs removed, so copies that differ only in case, spacing or punctuation collapse too (the
"exact substring" pass of Lee et al. 2022 goes further; near-dedup in minhash.py catches edits).
The first occurrence in corpus order is kept.
"""

from __future__ import annotations

import hashlib
import re

_NOT_WORD = re.compile(r"[\W_]+")


def dedup_key(text: str) -> bytes:
    canonical = _NOT_WORD.sub(" ", text.lower()).strip()
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


def exact_duplicates(keys: list[bytes]) -> list[int]:
    """For each document, the index of the first document with the same key (itself if first)."""
    first: dict[bytes, int] = {}
    return [first.setdefault(k, i) for i, k in enumerate(keys)]
