"""Pre-tokenization: how text is cut into pieces before BPE merges inside each piece.

BPE never merges across a piece boundary, so the split pattern decides what a token *can* be:
with GPT-2's pattern " the" is one piece (the leading space belongs to the word), digits and
letters never share a token, and runs of spaces stay separate from the word that follows.

    gpt2     GPT-2 (Radford et al. 2019) / Hugging Face ByteLevel: ' ?\\p{L}+', ' ?\\p{N}+', ...
    gpt4     cl100k_base (tiktoken): case-insensitive contractions, numbers in groups of 1-3,
             punctuation runs, newlines kept apart from other whitespace
    llama3   Llama 3's variant of the gpt4 pattern
    qwen2    Qwen2's: the llama3 pattern with single digits (one \\p{N} instead of 1-3); llama.cpp's
             "qwen2" pre-tokenizer (src/llama-vocab.cpp) runs the same regex, case-expanded
    none     no pre-tokenization: the whole text is one piece

`split_digits` first isolates every digit (as SmolLM2/StarCoder tokenizers do with HF's
`Digits(individual_digits=True)`), so numbers are always spelled digit by digit.
"""

from __future__ import annotations

from functools import lru_cache

import regex

from llmlab.core.errors import LLMLabError

PATTERNS: dict[str, str] = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "none": "",
}
_DIGIT = regex.compile(r"(\p{N})")


def resolve_pattern(name_or_regex: str) -> str:
    """A pattern name from PATTERNS, or a regex given literally."""
    return PATTERNS.get(name_or_regex, name_or_regex)


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> regex.Pattern:
    try:
        return regex.compile(pattern)
    except regex.error as error:
        raise LLMLabError(f"split pattern {pattern!r} is not a valid regex ({error}); give one of "
                          f"{', '.join(PATTERNS)} or a regex that compiles") from None


def pretokenize(text: str, pattern: str, split_digits: bool = False) -> list[str]:
    """Cut `text` into the pieces BPE works inside. `pattern` is a name from PATTERNS ("gpt4") or a
    regex. With a named pattern, concatenating the pieces gives `text` back (every character matches
    some branch); a regex of your own drops what it does not match, as `findall` does."""
    segments = [s for s in _DIGIT.split(text) if s] if split_digits else [text]
    pattern = resolve_pattern(pattern)
    if not pattern:
        return segments
    compiled = _compiled(pattern)
    pieces: list[str] = []
    for segment in segments:
        pieces.extend(compiled.findall(segment))
    return pieces
