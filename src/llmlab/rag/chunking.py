"""Chunking: cut a document into retrievable pieces whose size is counted in the embedder's tokens.

Why tokens and not characters: the encoder truncates at 256 WordPiece tokens, so a chunk that
is "512 characters" may be 90 tokens of prose or 300 tokens of code; only a token count tells
whether the encoder will see the whole chunk. WordPiece never merges across whitespace, so a
text's token count is the sum of its words' counts, which lets us cut at word boundaries.

Every chunk keeps its character span [start, end) in the document, which context assembly
uses to detect and drop overlapping chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

CountTokens = Callable[[str], int]


@dataclass
class Chunk:
    text: str
    start: int  # character offsets in the source document
    end: int
    window: str | None = None  # sentence-window: the wider text handed to the generator


_WORD = re.compile(r"\S+")
# A sentence ends at . ! ? (optionally followed by quotes/brackets) before whitespace, or at a blank line.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_HEADING = re.compile(r"^#{1,6} .*$|^.+\n[=\-]{3,}\s*$", re.M)


def fixed_token_chunks(text: str, count_tokens: CountTokens, size: int = 200, overlap: int = 40,
                       offset: int = 0) -> list[Chunk]:
    """Windows of at most `size` tokens (cut at word boundaries), each sharing ~`overlap` tokens
    with the previous one so a fact split by a boundary is whole in at least one chunk."""
    if overlap >= size:
        raise ValueError(f"overlap ({overlap}) must be smaller than size ({size})")
    words = [(m.start(), m.end(), count_tokens(m.group())) for m in _WORD.finditer(text)]
    chunks, i = [], 0
    while i < len(words):
        j, used = i, 0
        while j < len(words) and (used + words[j][2] <= size or j == i):
            used += words[j][2]
            j += 1
        s, e = words[i][0], words[j - 1][1]
        chunks.append(Chunk(text[s:e], s + offset, e + offset))
        if j >= len(words):
            break
        # step back from j until ~overlap tokens are repeated, but always move forward
        k, back = j, 0
        while k - 1 > i and back + words[k - 1][2] <= overlap:
            k -= 1
            back += words[k][2]
        i = k
    return chunks


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (a simple rule: . ! ? then whitespace, or a blank line)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start:m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return [(s + len(text[s:e]) - len(text[s:e].lstrip()), e) for s, e in spans]


def _split_by(text: str, pattern: re.Pattern, keep_at_start: bool) -> list[tuple[int, int]]:
    cuts = [m.start() if keep_at_start else m.end() for m in pattern.finditer(text)]
    bounds = sorted({0, *cuts, len(text)})
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def recursive_chunks(text: str, count_tokens: CountTokens, max_tokens: int = 200) -> list[Chunk]:
    """Split by structure, coarsest first: headings, then paragraphs, then sentences, then words;
    a piece is split further only if it exceeds `max_tokens`, and adjacent small pieces are merged
    back up to the budget so chunks are neither tiny nor cut mid-thought."""
    levels = [(_HEADING, True), (re.compile(r"\n\s*\n"), False), (_SENTENCE_END, False)]

    def pieces(s: int, e: int, level: int) -> list[tuple[int, int]]:
        if count_tokens(text[s:e]) <= max_tokens:
            return [(s, e)]
        if level == len(levels):
            return [(c.start, c.end) for c in fixed_token_chunks(text[s:e], count_tokens, max_tokens, 0, offset=s)]
        out = []
        parts = _split_by(text[s:e], levels[level][0], levels[level][1])
        if len(parts) <= 1:
            return pieces(s, e, level + 1)
        for a, b in parts:
            out.extend(pieces(s + a, s + b, level + 1))
        return out

    merged: list[list[int]] = []
    used = 0
    for s, e in pieces(0, len(text), 0):
        n = count_tokens(text[s:e])
        starts_section = bool(_HEADING.match(text, s) or _HEADING.match(text, s + len(text[s:e]) - len(text[s:e].lstrip())))
        if merged and used + n <= max_tokens and not starts_section:  # never merge across a heading
            merged[-1][1] = e
            used += n
        else:
            merged.append([s, e])
            used = n
    return [Chunk(text[s:e].strip(), s, e) for s, e in merged if text[s:e].strip()]


def sentence_window_chunks(text: str, window: int = 2, max_tokens: int = 200,
                           count_tokens: CountTokens | None = None) -> list[Chunk]:
    """One chunk per sentence (precise matching), carrying the `window` sentences either side as
    the text the generator reads (enough context to answer)."""
    spans = split_sentences(text)
    chunks = []
    for i, (s, e) in enumerate(spans):
        ws, we = spans[max(0, i - window)][0], spans[min(len(spans) - 1, i + window)][1]
        sentence = text[s:e]
        if count_tokens is not None and count_tokens(sentence) > max_tokens:
            for c in fixed_token_chunks(sentence, count_tokens, max_tokens, 0, offset=s):
                chunks.append(Chunk(c.text, c.start, c.end, window=text[ws:we]))
        else:
            chunks.append(Chunk(sentence, s, e, window=text[ws:we]))
    return chunks


def char_chunks(text: str, size: int = 512) -> list[Chunk]:
    """The naive baseline: fixed character windows, no overlap, no regard for words or structure."""
    return [Chunk(text[i:i + size], i, min(len(text), i + size)) for i in range(0, len(text), size)
            if text[i:i + size].strip()]


def chunk_document(text: str, count_tokens: CountTokens, method: str = "recursive", size: int = 200,
                   overlap: int = 40, window: int = 2) -> list[Chunk]:
    if method == "fixed":
        return fixed_token_chunks(text, count_tokens, size, overlap)
    if method == "recursive":
        return recursive_chunks(text, count_tokens, size)
    if method == "sentence":
        return sentence_window_chunks(text, window, size, count_tokens)
    if method == "chars":
        return char_chunks(text, size)
    raise ValueError(f"unknown chunking method {method!r}: use fixed, recursive, sentence or chars")
