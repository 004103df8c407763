"""Chunking: cut a document into retrievable pieces whose size is counted in the embedder's tokens.

Why tokens and not characters: the encoder truncates at 256 WordPiece tokens, so a chunk that
is "512 characters" may be 90 tokens of prose or 300 tokens of code; only a token count tells
whether the encoder will see the whole chunk. WordPiece never merges across whitespace, so a
text's token count is the sum of its words' counts, which lets us cut at word boundaries.

Every chunk keeps its character span [start, end) in the document, which context assembly
uses to detect and drop overlapping chunks.

The "structure" method (structure_chunks) follows the document's own outline (rag/sections.py):
chunks stay inside one section, code blocks stay whole, every chunk starts with its section's
heading path, and each carries its parent section as the wider text for answering.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from llmlab.rag.sections import Outline, Section

CountTokens = Callable[[str], int]


@dataclass
class Chunk:
    text: str
    start: int  # character offsets in the source document
    end: int
    window: str | None = None  # the wider text handed to the generator (sentence / structure)
    section: str = ""  # heading path "Title > Sub" of the section the chunk lies in (structure only)


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
                   overlap: int = 40, window: int = 2, title: str = "", parent_tokens: int = 400) -> list[Chunk]:
    """Dispatch on `method`; `title` and `parent_tokens` are used by "structure" only."""
    if method == "structure":
        return structure_chunks(text, count_tokens, size, parent_tokens, title)
    if method == "fixed":
        return fixed_token_chunks(text, count_tokens, size, overlap)
    if method == "recursive":
        return recursive_chunks(text, count_tokens, size)
    if method == "sentence":
        return sentence_window_chunks(text, window, size, count_tokens)
    if method == "chars":
        return char_chunks(text, size)
    raise ValueError(f"unknown chunking method {method!r}: use structure, fixed, recursive, sentence or chars")


# ---- structure: chunks that follow the document's outline -----------------------------------
#
# Why a header line: a chunk deep inside a section often never names its subject ("It is
# called when ..."), so neither BM25 nor the encoder can match it to a question that does. Writing
# the heading path at the top of the chunk's text, which is what gets embedded and indexed, puts
# the subject back; this is the idea behind Anthropic's "contextual retrieval" (2024), which asks
# an LLM for such a context line, with the document's own headings in place of the LLM.
#
# Packing rule: inside one section, whole paragraphs and code blocks are packed into as few chunks
# of <= `size` tokens (header included) as greedy packing needs, evened out (_pack); a paragraph
# ending in ":" is glued to the code block it introduces. Merging rule: a run of consecutive leaf
# subsections (no subsections of their own) of one parent, each under size/4 tokens, becomes one
# chunk while the run fits; that chunk's section is the parent (whose span holds them all), and
# their headings stay in its text.

# Where an oversize block may be cut, gentlest first (then fixed windows of words):
_CODE_CUTS = [re.compile(r"\n[ \t]*\n"), re.compile(r"\n")]  # blank lines, then line breaks
_PROSE_CUTS = [_SENTENCE_END, re.compile(r"\n")]  # sentences, then (wrapped) lines


def _memo_words(count_tokens: CountTokens) -> CountTokens:
    """The same count, as a sum over whitespace-separated words with each word counted once: exact
    for WordPiece (see the top of this module), and the chunker counts overlapping spans often."""
    memo: dict[str, int] = {}

    def count(text: str) -> int:
        total = 0
        for word in text.split():
            n = memo.get(word)
            if n is None:
                n = memo[word] = count_tokens(word)
            total += n
        return total

    return count


def _same_title(a: str, b: str) -> bool:
    """Is title `a` already said by heading `b`? ("with" is, in 'The "with" statement')."""
    norm = lambda s: re.sub(r"\W+", " ", s.lower()).strip()  # noqa: E731
    return bool(norm(a)) and norm(a) in norm(b)


def _header(titles: tuple[str, ...], count_tokens: CountTokens, budget: int) -> str:
    """'A > B > C' within `budget` tokens: drop outer titles first, then cut the innermost."""
    while titles and count_tokens(" > ".join(titles)) > budget and len(titles) > 1:
        titles = titles[1:]
    header = " > ".join(titles)
    if header and count_tokens(header) > budget:
        header = fixed_token_chunks(header, count_tokens, budget, 0)[0].text if budget > 0 else ""
    return header


def _greedy(counts: list[int], cap: int) -> list[tuple[int, int]]:
    groups, first, used = [], 0, 0
    for j, c in enumerate(counts):
        if j > first and used + c > cap:
            groups.append((first, j))
            first, used = j, 0
        used += c
    return groups + [(first, len(counts))] if counts else []


def _pack(spans: list[tuple[int, int]], counts: list[int], budget: int) -> list[tuple[int, int, int, int]]:
    """Group consecutive spans into chunks of <= `budget` tokens: as few chunks as greedy packing
    makes, with the largest chunk as small as possible (binary search on the cap), so a 210-token
    section becomes ~105 + 105, not 190 + a 20-token scrap.
    Returns (first index, last index + 1, start, end) per chunk."""
    n = len(_greedy(counts, budget))
    lo, hi = max(counts, default=0), max(budget, max(counts, default=0))
    while lo < hi:  # the smallest cap that still needs only n chunks
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(_greedy(counts, mid)) <= n else (mid + 1, hi)
    return [(i, j, spans[i][0], spans[j - 1][1]) for i, j in _greedy(counts, lo)]


def _cut(text: str, s: int, e: int, count_tokens: CountTokens, budget: int, cuts: list[re.Pattern],
         level: int = 0) -> list[tuple[int, int]]:
    """A block as spans of <= budget tokens: whole if it fits, else cut at `cuts[0]` (then the
    next, then fixed windows of words) and packed back together up to the budget. This is the
    only place a code block is ever cut: when it alone exceeds the budget."""
    if count_tokens(text[s:e]) <= budget:
        return [(s, e)]
    if level == len(cuts):
        return [(c.start, c.end) for c in fixed_token_chunks(text[s:e], count_tokens, budget, 0, offset=s)]
    parts, pos = [], s
    for m in [*cuts[level].finditer(text, s, e), None]:
        b = m.start() if m else e
        if text[pos:b].strip():
            parts.append((pos + len(text[pos:b]) - len(text[pos:b].lstrip("\n")), b))
        pos = m.end() if m else e
    if len(parts) <= 1:
        return _cut(text, s, e, count_tokens, budget, cuts, level + 1)
    pieces = [p for a, b in parts for p in _cut(text, a, b, count_tokens, budget, cuts, level + 1)]
    counts = [count_tokens(text[a:b]) for a, b in pieces]
    return [(a, b) for _, _, a, b in _pack(pieces, counts, budget)]


def _units(text: str, blocks: list, count_tokens: CountTokens, budget: int) -> list[tuple[int, int]]:
    """The packing units of a section body: its paragraphs and code blocks, each cut only if it
    alone exceeds `budget`, and a paragraph ending in ':' joined to the code block after it."""
    units, k = [], 0
    while k < len(blocks):
        b, nxt = blocks[k], blocks[k + 1] if k + 1 < len(blocks) else None
        if (nxt is not None and nxt.code and not b.code and text[b.start:b.end].endswith(":")
                and count_tokens(text[b.start:nxt.end]) <= budget):  # "... is equivalent to:" + its code
            units.append((b.start, nxt.end))
            k += 2
            continue
        units += _cut(text, b.start, b.end, count_tokens, budget, _CODE_CUTS if b.code else _PROSE_CUTS)
        k += 1
    return units


def _grow(counts: list[int], i: int, j: int, limit: int) -> tuple[int, int]:
    """Units [i, j) widened by whole units, alternately before and after, while <= `limit` tokens."""
    used = sum(counts[i:j])
    while True:
        grew = False
        if i > 0 and used + counts[i - 1] <= limit:
            i, used, grew = i - 1, used + counts[i - 1], True
        if j < len(counts) and used + counts[j] <= limit:
            j, used, grew = j + 1, used + counts[j], True
        if not grew:
            return i, j


def structure_chunks(text: str, count_tokens: CountTokens, size: int = 200, parent_tokens: int = 400,
                     title: str = "") -> list[Chunk]:
    """Chunks that never cross a section, each `header + "\n" + body`, at most `size` tokens.

    header: the heading path, with the document `title` first unless the first heading already
    says it. start/end: the body's span in `text`. window: the chunk's smallest enclosing section
    (header + its text) when that is <= `parent_tokens` tokens, else the chunk grown outwards by
    whole paragraphs/blocks of its section up to `parent_tokens`.
    """
    count_tokens = _memo_words(count_tokens)
    outline = Outline(text)
    first = outline.root.children[0].title if outline.root.children else ""
    prefix = (title,) if title and not _same_title(title, first) else ()
    chunks: list[Chunk] = []

    def header_of(sec: Section) -> str:
        return _header(prefix + sec.path, count_tokens, size // 2)

    def with_header(header: str, body: str) -> str:
        return f"{header}\n{body}" if header else body

    def section_window(sec: Section, header: str) -> str | None:
        whole = text[sec.body_start:sec.end].lstrip("\r\n").rstrip()  # keep a code block's indentation
        if count_tokens(header) + count_tokens(whole) <= parent_tokens:
            return with_header(header, whole)
        return None

    def emit_body(sec: Section) -> None:
        header = header_of(sec)
        budget = max(1, size - count_tokens(header))
        units = _units(text, outline.blocks(sec.body_start, sec.body_end), count_tokens, budget)
        counts = [count_tokens(text[a:b]) for a, b in units]
        window = section_window(sec, header)
        for i, j, s, e in _pack(units, counts, budget):
            win = window
            if win is None:  # the section is too long: the chunk and its neighbours
                lo, hi = _grow(counts, i, j, parent_tokens - count_tokens(header))
                win = with_header(header, text[units[lo][0]:units[hi - 1][1]])
            chunks.append(Chunk(with_header(header, text[s:e]), s, e, window=win, section=sec.heading_path))

    def small_leaf(sec: Section) -> int | None:
        """The tokens of a leaf section under size/4 (a merge candidate), else None."""
        if sec.children:
            return None
        n = count_tokens(text[sec.start:sec.end])
        return n if n < size // 4 else None

    def emit(sec: Section) -> None:
        emit_body(sec)
        run: list[Section] = []
        used = 0
        header = header_of(sec)

        def flush() -> None:
            if len(run) == 1:
                emit(run[0])
            elif run:
                s, e = run[0].start, run[-1].end
                e = s + len(text[s:e].rstrip())
                chunks.append(Chunk(with_header(header, text[s:e]), s, e,
                                    window=section_window(sec, header) or with_header(header, text[s:e]),
                                    section=sec.heading_path))
            run.clear()

        for child in sec.children:
            n = small_leaf(child)
            if n is None or count_tokens(header) + used + n > size:
                flush()
                used = 0
            if n is None:
                emit(child)
            else:
                run.append(child)
                used += n
        flush()

    emit(outline.root)
    return chunks
