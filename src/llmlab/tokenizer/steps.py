"""The Hugging Face tokenizer.json steps SentencePiece-style files use, applied as HF applies them.

A tokenizer.json describes a pipeline: normalizer -> pre-tokenizer -> model -> decoder, the first and
last each a step or a Sequence of steps. `SentencePieceBPE` (spm.py) keeps the normalizer and decoder
as flat lists of these step dicts, exactly as the file spells them, and runs them here:

    normalizer  Prepend(prepend)          put a string in front of a non-empty segment
                Replace(String, content)  replace every occurrence (only plain-string patterns)
                NFC / NFD / NFKC / NFKD   Unicode normalization
    decoder     Replace, Fuse (join all tokens into one), Strip(content, start, stop) per token,
                ByteFallback (runs of "<0xNN>" tokens -> the text their bytes spell),
                Metaspace ("▁" -> " ", the first token's "▁" dropped unless prepend_scheme is never)

Decoder steps work on the *list* of token strings, in order, as HF's decode_chain does: Strip after
Fuse strips the whole text once; before Fuse it would strip every token.
"""

from __future__ import annotations

import unicodedata

import regex

from llmlab.core.errors import LLMLabError

SPACE = "\u2581"  # "▁", SentencePiece's visible space
_BYTE_TOKEN = regex.compile(r"<0x([0-9A-Fa-f]{2})>")
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
NORMALIZER_STEPS = ("Prepend", "Replace", *UNICODE_FORMS)
DECODER_STEPS = ("Replace", "ByteFallback", "Fuse", "Strip", "Metaspace")

# The two shapes real files use (transformers' LlamaConverter writes one or the other).
LEGACY_NORMALIZER = [{"type": "Prepend", "prepend": SPACE},
                     {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
SPM_DECODER = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
               {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]


def byte_of(token: str) -> int | None:
    """The byte a byte-fallback token "<0xNN>" stands for, else None."""
    m = _BYTE_TOKEN.fullmatch(token)
    return int(m.group(1), 16) if m else None


def _pattern(step: dict) -> str:
    pattern = step.get("pattern", {})
    if not isinstance(pattern, dict) or "String" not in pattern:
        raise LLMLabError(f"{step.get('type')} step with pattern {pattern!r}: only a plain string is supported")
    return pattern["String"]


def flatten_steps(spec: dict | list | None, kind: str, supported: tuple[str, ...]) -> list[dict]:
    """A tokenizer.json normalizer/decoder (one step or a Sequence) as a flat, checked list of steps."""
    if spec is None:
        return []
    steps = spec if isinstance(spec, list) else [spec]
    out: list[dict] = []
    for step in steps:
        if not isinstance(step, dict):
            raise LLMLabError(f"{kind} step {step!r} is not an object")
        if step.get("type") == "Sequence":
            out += flatten_steps(step.get("normalizers") or step.get("decoders") or [], kind, supported)
        elif step.get("type") in supported:
            if step["type"] == "Replace":
                _pattern(step)
            out.append(step)
        else:
            raise LLMLabError(f"{kind} {step.get('type')!r} is not supported (supported: {', '.join(supported)})")
    return out


def metaspace_scheme(step: dict) -> str:
    """prepend_scheme of a Metaspace step; files from tokenizers < 0.14 say add_prefix_space instead."""
    if "prepend_scheme" in step:
        return step["prepend_scheme"]
    return "always" if step.get("add_prefix_space", True) else "never"


def normalize(steps: list[dict], text: str) -> str:
    for step in steps:
        kind = step["type"]
        if kind == "Prepend":
            text = step["prepend"] + text if text else text  # HF leaves an empty segment empty
        elif kind == "Replace":
            text = text.replace(_pattern(step), step["content"])
        else:
            text = unicodedata.normalize(kind, text)
    return text


def decode_steps(steps: list[dict], tokens: list[str]) -> list[str]:
    for step in steps:
        kind = step["type"]
        if kind == "Replace":
            old, new = _pattern(step), step["content"]
            tokens = [t.replace(old, new) for t in tokens]
        elif kind == "ByteFallback":
            tokens = _byte_fallback(tokens)
        elif kind == "Fuse":
            tokens = ["".join(tokens)]
        elif kind == "Strip":
            content, start, stop = step.get("content", " "), step.get("start", 0), step.get("stop", 0)
            tokens = [_strip(t, content, start, stop) for t in tokens]
        else:  # Metaspace: "▁" -> " ", except that the first token loses its "▁"s (the prefix)
            space, keep_first = step.get("replacement", SPACE), metaspace_scheme(step) == "never"
            tokens = [t.replace(space, " " if (i > 0 or keep_first) else "") for i, t in enumerate(tokens)]
    return tokens


def _byte_fallback(tokens: list[str]) -> list[str]:
    """Runs of "<0xNN>" tokens become the text their bytes spell; a run that is not valid UTF-8
    becomes one U+FFFD per byte token (HF's rule, stricter than Python's errors="replace")."""
    out: list[str] = []
    run: list[int] = []

    def flush():
        if run:
            try:
                out.append(bytes(run).decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" for _ in run)
            run.clear()

    for t in tokens:
        b = byte_of(t) if len(t) == 6 else None
        if b is None:
            flush()
            out.append(t)
        else:
            run.append(b)
    flush()
    return out


def _strip(token: str, content: str, start: int, stop: int) -> str:
    """Remove up to `start` leading and `stop` trailing `content` characters."""
    left = 0
    while left < min(start, len(token)) and token[left] == content:
        left += 1
    right = len(token)
    while len(token) - right < stop and right > left and token[right - 1] == content:
        right -= 1
    return token[left:right]
