"""Quality heuristics from Gopher (Rae et al. 2021, "Scaling Language Models", appendix A.1.1)
and C4 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2).

Gopher's rules drop a whole document; C4's are partly line-level (drop lines, keep the page).
Every threshold is a field of `QualityConfig` (defaults = the papers' values) and every removal
returns a reason string "gopher:<rule>" / "c4:<rule>" so stats.json can count them.

Deviations, and why:
- C4 keeps only lines ending in terminal punctuation. That deletes verse and lists wholesale,
  so by default we use the document-level form FineWeb adopted (Penedo et al. 2024): drop the
  document when fewer than `min_terminal_punct_line_fraction` of its lines end in punctuation.
  `c4_terminal_punct_lines = true` restores C4's line filter.
- C4 drops any page containing "{" (to remove code). Technical prose such as the Python docs
  quotes code, so we drop the document only when more than `max_curly_line_fraction` of its
  lines contain a curly bracket (0 reproduces C4 exactly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Gopher's stop-word rule: at least two of these must appear.
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "■", "□", "▪", "‣", "-", "*", "–", "—")
ELLIPSES = ("...", "…")
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", ":", ";")
C4_POLICY_WORDS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                   "use cookies")
_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")


@dataclass
class QualityConfig:
    enabled: bool = field(default=True, metadata={"help": "run the Gopher/C4 quality filters"})
    min_words: int = field(default=50, metadata={"help": "Gopher: fewest words in a document"})
    max_words: int = field(default=100_000, metadata={"help": "Gopher: most words in a document"})
    min_mean_word_length: float = field(default=3.0, metadata={"help": "Gopher: shortest mean word length"})
    max_mean_word_length: float = field(default=10.0, metadata={"help": "Gopher: longest mean word length"})
    max_symbol_word_ratio: float = field(default=0.1, metadata={"help": "Gopher: most '#' and ellipses per word"})
    max_bullet_line_fraction: float = field(default=0.9, metadata={"help": "Gopher: most lines starting with a bullet"})
    max_ellipsis_line_fraction: float = field(default=0.3, metadata={"help": "Gopher: most lines ending in an ellipsis"})
    min_alpha_word_fraction: float = field(default=0.8, metadata={"help": "Gopher: fewest words with a letter"})
    min_stop_words: int = field(default=2, metadata={"help": "Gopher: fewest distinct stop words present"})
    min_terminal_punct_line_fraction: float = field(
        default=0.12, metadata={"help": "C4/FineWeb: fewest lines ending in terminal punctuation (0: off)"})
    c4_terminal_punct_lines: bool = field(default=False, metadata={"help": "C4: drop lines without terminal punctuation"})
    c4_remove_javascript_lines: bool = field(default=True, metadata={"help": "C4: drop lines mentioning javascript"})
    c4_remove_policy_lines: bool = field(default=True, metadata={"help": "C4: drop cookie/terms-of-use lines"})
    c4_lorem_ipsum: bool = field(default=True, metadata={"help": "C4: drop documents containing 'lorem ipsum'"})
    max_curly_line_fraction: float = field(default=0.1, metadata={"help": "C4: most lines with '{' (0: C4's any-'{' rule)"})


def c4_line_filter(text: str, cfg: QualityConfig) -> tuple[str, int]:
    """C4's line-level cleaning: (text without javascript/policy lines, number of lines removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        low = line.lower()
        if (cfg.c4_remove_javascript_lines and "javascript" in low) or \
           (cfg.c4_remove_policy_lines and any(p in low for p in C4_POLICY_WORDS)) or \
           (cfg.c4_terminal_punct_lines and line.strip() and not line.rstrip().endswith(TERMINAL_PUNCT)):
            removed += 1
            continue
        kept.append(line)
    return "\n".join(kept).strip(), removed


def quality_metrics(text: str) -> dict[str, float]:
    """The measured quantities the rules compare against thresholds (also used for histograms)."""
    words = _WORD.findall(text)
    lines = [ln for ln in text.split("\n") if ln.strip()]
    n_words, n_lines = max(1, len(words)), max(1, len(lines))
    lower = {w.lower().strip(".,;:!?\"'()") for w in words}
    symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
    return {
        "words": float(len(words)),
        "mean_word_length": sum(map(len, words)) / n_words,
        "symbol_word_ratio": symbols / n_words,
        "bullet_line_fraction": sum(ln.lstrip().startswith(BULLETS) for ln in lines) / n_lines,
        "ellipsis_line_fraction": sum(ln.rstrip().endswith(ELLIPSES) for ln in lines) / n_lines,
        "alpha_word_fraction": sum(bool(_ALPHA.search(w)) for w in words) / n_words,
        "stop_words": float(len(lower & GOPHER_STOP_WORDS)),
        "terminal_punct_line_fraction": sum(ln.rstrip().endswith(TERMINAL_PUNCT) for ln in lines) / n_lines,
        "curly_line_fraction": sum("{" in ln for ln in lines) / n_lines,
    }


def quality_reason(text: str, cfg: QualityConfig, metrics: dict[str, float] | None = None) -> str | None:
    """The first rule `text` breaks ("gopher:..." / "c4:..."), or None when it passes all."""
    m = metrics or quality_metrics(text)
    if m["words"] < cfg.min_words:
        return "gopher:too_few_words"
    if m["words"] > cfg.max_words:
        return "gopher:too_many_words"
    if not cfg.min_mean_word_length <= m["mean_word_length"] <= cfg.max_mean_word_length:
        return "gopher:mean_word_length"
    if m["symbol_word_ratio"] > cfg.max_symbol_word_ratio:
        return "gopher:symbol_word_ratio"
    if m["bullet_line_fraction"] > cfg.max_bullet_line_fraction:
        return "gopher:bullet_lines"
    if m["ellipsis_line_fraction"] > cfg.max_ellipsis_line_fraction:
        return "gopher:ellipsis_lines"
    if m["alpha_word_fraction"] < cfg.min_alpha_word_fraction:
        return "gopher:non_alpha_words"
    if m["stop_words"] < cfg.min_stop_words:
        return "gopher:stop_words"
    if cfg.c4_lorem_ipsum and "lorem ipsum" in text.lower():
        return "c4:lorem_ipsum"
    if m["curly_line_fraction"] > cfg.max_curly_line_fraction or (cfg.max_curly_line_fraction == 0 and "{" in text):
        return "c4:curly_bracket"
    if m["terminal_punct_line_fraction"] < cfg.min_terminal_punct_line_fraction:
        return "c4:terminal_punctuation"
    return None
