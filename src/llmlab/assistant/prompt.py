"""The grounded-answer prompt and reading an answer back: citations [n] and abstentions.

The answerer sees numbered passages and a question. It must answer only from them, cite the
passages it used as [n], and, when they do not hold the answer, say so in one fixed sentence, so
that an abstention is a string match rather than a judgement call (the evaluation counts it, the
page shows it, a tuned answerer is trained to produce exactly it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmlab.rag.context import focus_passage

ABSTAIN = "The answer is not in the documents."
ABSTAIN_MARK = "not in the documents"

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages from the user's documents. "
    "Quote or paraphrase the passage that answers, and cite it by its number in square brackets, like [2]. "
    f"If the passages do not contain the answer, reply exactly: {ABSTAIN}"
)

_CITATION = re.compile(r"\[(\d{1,2})\]")


@dataclass
class Source:
    """One numbered passage of an answer's context, resolved to where it lives."""

    number: int
    source: str      # file path, or pydocs:<topic>
    section: str     # heading path inside the document ("" when the chunking has none)
    title: str
    text: str        # the passage the answerer read (the parent section when expanded)
    start: int       # character span of the retrieved chunk in the document
    end: int
    score: float

    def label(self) -> str:
        """'path § section' (or the path alone): how a citation is shown to a person."""
        return f"{self.source} § {self.section}" if self.section else self.source


def answer_passage(hit: dict, parent: bool = True, passage_words: int = 100, anchor: str | None = None) -> str:
    """What the answerer reads for a retrieved chunk: with `parent`, its parent section (the
    store's window) cut to `passage_words` words around the chunk, or around `anchor` (0: the
    whole section); otherwise the chunk itself. Answer time and `assistant tune`'s training
    examples both call this, so the tuned answerer trains on passages cut as it will read them."""
    window = hit.get("window")
    if not parent or not window:
        return hit["text"]
    return focus_passage(window, hit["text"], passage_words, anchor) if passage_words else window


def format_passages(sources: list[Source]) -> str:
    """'[n] heading path' then the text; structure chunks already open with their heading path
    (the contextual header), so for them the number goes in front of that line instead."""
    parts = []
    for s in sources:
        text, label = s.text.strip(), s.section or s.title
        opens_with_label = bool(label) and label in text.partition("\n")[0]
        parts.append(f"[{s.number}] {text}" if opens_with_label else f"[{s.number}] {label}\n{text}")
    return "\n\n".join(parts)


def grounded_messages(question: str, sources: list[Source]) -> list[dict]:
    """Chat messages for a grounded answer: the rules in the system turn, passages + question after."""
    passages = format_passages(sources) if sources else "(no passages were found)"
    user = f"Passages:\n{passages}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def cited_numbers(answer: str, n_sources: int | None = None) -> list[int]:
    """The distinct passage numbers an answer cites, in order of first citation; numbers outside
    1..n_sources (a hallucinated [7] with four passages) are dropped."""
    seen: list[int] = []
    for m in _CITATION.finditer(answer):
        n = int(m.group(1))
        if n not in seen and n >= 1 and (n_sources is None or n <= n_sources):
            seen.append(n)
    return seen


def is_abstention(answer: str) -> bool:
    return ABSTAIN_MARK in " ".join(answer.lower().split())
