"""Normalisation: one canonical form of the text before any filter looks at it.

Unicode NFC (so "é" is one code point whatever the source wrote), control characters removed
(except newline and tab), Windows/old-Mac line ends -> "\\n", runs of spaces collapsed, at most
two consecutive newlines. Broken encodings ("mojibake" such as "CafÃ©") are fixed with `ftfy`
when `fix_encoding` is on: ftfy is an optional extra because a wrong guess changes text, and
an own mojibake fixer would be a research project of its own (Speer, ftfy, 2019).
"""

from __future__ import annotations

import re
import unicodedata

from llmlab.core.errors import LLMLabError

# C0/C1 control characters except \t and \n, plus zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, fix_encoding: bool = False) -> str:
    if fix_encoding:
        try:
            import ftfy
        except ImportError:
            raise LLMLabError("normalize.fix_encoding = true needs ftfy: pip install 'llmlab[curation]' "
                              "(or pip install ftfy), or set it to false") from None
        text = ftfy.fix_text(text, normalization="NFC")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def normalize_batch(docs: list[dict], fix_encoding: bool = False) -> list[dict]:
    for doc in docs:
        doc["text"] = normalize_text(doc["text"], fix_encoding)
    return docs
