"""Gopher repetition filters (Rae et al. 2021, appendix A.1.1, table A1).

Repetitive text (link farms, templated pages, generation loops) is removed when:
  - duplicate lines are > 30% of lines or > 20% of characters (same for paragraphs);
  - the most frequent 2/3/4-gram covers > 20/18/16% of all word characters;
  - characters inside n-grams that occur more than once are > 15..10% for n = 5..10.
The thresholds are `RepetitionConfig` fields; character fractions count word characters only,
as in the paper, so whitespace formatting does not change the verdict.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RepetitionConfig:
    enabled: bool = field(default=True, metadata={"help": "run the Gopher repetition filters"})
    max_dup_line_fraction: float = field(default=0.30, metadata={"help": "most duplicate lines (by count)"})
    max_dup_para_fraction: float = field(default=0.30, metadata={"help": "most duplicate paragraphs (by count)"})
    max_dup_line_char_fraction: float = field(default=0.20, metadata={"help": "most characters in duplicate lines"})
    max_dup_para_char_fraction: float = field(default=0.20, metadata={"help": "most characters in duplicate paragraphs"})
    top_ngram_max_fraction: list[float] = field(
        default_factory=lambda: [0.20, 0.18, 0.16], metadata={"help": "most chars in the top 2-,3-,4-gram"})
    dup_ngram_max_fraction: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10],
        metadata={"help": "most chars in duplicated 5..10-grams"})


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def top_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of the most frequent n-gram (times its count) over all word characters."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, freq = counts.most_common(1)[0]
    return freq * sum(map(len, gram)) / total if freq > 1 else 0.0


def dup_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of words covered by any n-gram that occurs more than once, over all word chars."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = bytearray(len(words))  # each word counted once even if in several repeated n-grams
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i:i + n] = b"\x01" * n
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def repetition_reason(text: str, cfg: RepetitionConfig) -> str | None:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    paras = [p for p in text.split("\n\n") if p.strip()]
    chars = max(1, len(text))
    for name, items, max_frac, max_char_frac in (
            ("line", lines, cfg.max_dup_line_fraction, cfg.max_dup_line_char_fraction),
            ("paragraph", paras, cfg.max_dup_para_fraction, cfg.max_dup_para_char_fraction)):
        dup, dup_chars = _duplicates(items)
        if items and dup / len(items) > max_frac:
            return f"gopher:dup_{name}_fraction"
        if dup_chars / chars > max_char_frac:
            return f"gopher:dup_{name}_chars"
    words = text.lower().split()
    for n, limit in zip((2, 3, 4), cfg.top_ngram_max_fraction):
        if top_ngram_fraction(words, n) > limit:
            return f"gopher:top_{n}gram"
    for n, limit in zip(range(5, 11), cfg.dup_ngram_max_fraction):
        if dup_ngram_fraction(words, n) > limit:
            return f"gopher:dup_{n}gram"
    return None
