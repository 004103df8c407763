"""Context assembly: turn ranked chunks into a numbered, budget-fitting context and a grounded prompt.

Pure functions (no model), so every rule is testable: drop chunks that overlap one already taken
(overlapping windows would spend the budget twice on the same text), stop adding when the next
chunk would not fit the token budget, number what is kept so the answer can cite [1], [2].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from llmlab.core.errors import LLMLabError

SYSTEM_PROMPT = (
    "You answer questions using only the numbered context passages given by the user. "
    "Cite the passages you used with their numbers in square brackets, like [1] or [2][3]. "
    "If the context does not contain the answer, say \"I don't know based on the provided context.\" "
    "Do not use outside knowledge."
)


@dataclass
class ContextChunk:
    number: int
    source: str
    title: str
    text: str
    start: int
    end: int
    score: float


_WORD = re.compile(r"\S+")


def focus_passage(window: str, chunk: str, max_words: int, anchor: str | None = None) -> str:
    """At most `max_words` words of `window` around `anchor`, the heading line kept.

    `window` is the parent section of the retrieved `chunk` (both "header\nbody" for structure
    chunks, rag.chunking.structure_chunks); `anchor` is the text to centre on, by default the
    chunk's body (training examples pass the span their synthetic question came from).
    A 135M answerer reads a 400-token section worse than the 100 words that hold the match, so
    the generator gets the anchor with its neighbourhood rather than the whole parent; answer
    time and the answerer's training examples cut passages with this one function, so the model
    trains on exactly what it will read. The cut follows the original characters (a code block
    keeps its indentation); "..." marks where text was cut. An anchor not found in the window
    (whitespace and case are ignored) centres the cut on the window's start.
    """
    if max_words < 1:
        raise LLMLabError(f"max_words={max_words}: a passage needs at least one word")
    header, sep, body = window.partition("\n")
    chunk_header, _, chunk_body = chunk.partition("\n")
    if not sep or chunk_header.strip() != header.strip():
        header, body, chunk_body = "", window, chunk   # no shared heading line: all of it is body
    anchor = chunk_body if anchor is None else anchor
    spans = [m.span() for m in _WORD.finditer(body)]
    if len(spans) <= max_words:
        return window
    words = [body[a:b].lower() for a, b in spans]
    target = [w.lower() for w in _WORD.findall(anchor)]
    start, length, probe = 0, 0, 6
    for skip in range(max(len(target) - probe, 0) + 1):   # the anchor may open with header words
        needle = target[skip:skip + probe]
        hit = next((i for i in range(len(words) - len(needle) + 1) if words[i:i + len(needle)] == needle), None)
        if hit is not None:
            start, length = hit, min(len(target) - skip, max_words)
            break
    lo = max(0, start - (max_words - length) // 2)
    hi = min(len(spans), lo + max_words)
    lo = max(0, hi - max_words)
    text = body[spans[lo][0]:spans[hi - 1][1]]
    text = ("... " if lo > 0 else "") + text + (" ..." if hi < len(spans) else "")
    return f"{header}\n{text}" if header else text


def _overlaps(a: dict, b: dict) -> bool:
    return a["source"] == b["source"] and a["start"] < b["end"] and b["start"] < a["end"]


def pack_context(hits: list[dict], budget_tokens: int, count_tokens: Callable[[str], int],
                 order: str = "relevance") -> list[ContextChunk]:
    """Take hits best-first, skipping overlaps with kept ones and stopping at the token budget.

    `hits` are dicts with source, title, text, start, end, score (best first). order="source"
    re-sorts the kept chunks by (source, position) so neighbouring passages read in sequence;
    "relevance" keeps the best first. Numbers follow the final order.
    """
    if order not in ("relevance", "source"):
        raise ValueError("order must be 'relevance' or 'source'")
    kept, used = [], 0
    for hit in hits:
        if any(_overlaps(hit, k) for k in kept):
            continue
        n = count_tokens(hit["text"]) + 8  # + the "[n] title" header line
        if used + n > budget_tokens:
            continue  # a smaller, lower-ranked chunk may still fit
        kept.append(hit)
        used += n
    if order == "source":
        kept.sort(key=lambda h: (h["source"], h["start"]))
    return [ContextChunk(i, h["source"], h.get("title", ""), h["text"], h["start"], h["end"], h["score"])
            for i, h in enumerate(kept, start=1)]


def format_context(chunks: list[ContextChunk]) -> str:
    return "\n\n".join(f"[{c.number}] ({c.title})\n{c.text.strip()}" for c in chunks)


def build_messages(question: str, chunks: list[ContextChunk]) -> list[dict]:
    """Chat messages for a grounded answer: the rules in the system turn, context + question in the user turn."""
    context = format_context(chunks) if chunks else "(no passages were retrieved)"
    user = f"Context:\n{context}\n\nQuestion: {question}\nAnswer (cite passages by number):"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def format_sources(chunks: list[ContextChunk]) -> str:
    return "\n".join(f"[{c.number}] {c.source} ({c.title}) chars {c.start}-{c.end}" for c in chunks)


def fit_context(question: str, hits: list[dict], count_tokens: Callable[[str], int],
                prompt_tokens: Callable[[list[dict]], int], max_context: int, max_new_tokens: int,
                context_tokens: int, order: str = "relevance", model: str = "the model",
                ) -> tuple[list[ContextChunk], list[dict], str | None]:
    """(chunks, messages, note): the passages that fit the generator's window, packed by `pack_context`.

    The room for passages is what the window leaves after the answer (`max_new_tokens`) and the
    prompt without passages (instructions, question, chat template), capped by `context_tokens`;
    `prompt_tokens(messages)` measures the real rendered prompt, and the budget shrinks until it
    fits, since `pack_context`'s per-passage header is an estimate. A window with room for no
    retrieved passage is an LLMLabError (answering "from the context" with no context would be
    silently ungrounded); when only some fit, `note` says how many.
    """
    overhead = prompt_tokens(build_messages(question, []))
    room = max_context - max_new_tokens - overhead
    budget = min(context_tokens, room)
    wanted = pack_context(hits, 10**9, count_tokens, order)  # all non-overlapping hits
    while True:
        chunks = pack_context(hits, budget, count_tokens, order) if budget > 0 else []
        messages = build_messages(question, chunks)
        excess = prompt_tokens(messages) + max_new_tokens - max_context
        if excess <= 0 or not chunks:
            break
        budget -= excess
    limit = (f"--context-tokens {context_tokens}" if context_tokens < room else
             f"{model}'s {max_context}-token context less {overhead} tokens of instructions and question "
             f"and --max-new-tokens {max_new_tokens}")
    if wanted and not chunks:
        need = min(count_tokens(h["text"]) + 8 for h in hits)
        fix = ("raise --context-tokens" if context_tokens < room else
               "lower --max-new-tokens, re-index with a smaller --chunk-size, or use a model with a longer context")
        raise LLMLabError(f"{model} has a {max_context}-token context: the instructions and question take "
                          f"{overhead} tokens and --max-new-tokens {max_new_tokens}, which leaves {max(budget, 0)} "
                          f"tokens for passages ({limit}); the smallest retrieved passage needs {need}. To fix: {fix}")
    if not wanted and overhead + max_new_tokens > max_context:
        raise LLMLabError(f"{model} has a {max_context}-token context: the instructions and question take {overhead} "
                          f"tokens, no room for --max-new-tokens {max_new_tokens}; lower it or use a longer-context model")
    note = None
    if len(chunks) < len(wanted):
        note = (f"only {len(chunks)} of {len(wanted)} retrieved passages fit in the {budget}-token room for "
                f"context ({limit}); the answer sees only those")
    return chunks, messages, note
