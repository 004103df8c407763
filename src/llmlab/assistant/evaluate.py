"""`llmlab assistant eval`: retrieval hit@k per stage, and answers (correctness, citations, abstention).

A question line is {"question", "answer", "gold_doc" and/or "gold_text", "answerable": true} or
{"question", "answerable": false}. Retrieval counts a hit when a chunk contains gold_text (the
sentence that answers), strictly: coming from the right document is not enough, since one Python
docs topic can run to 60,000 characters. Only a line without gold_text falls back to gold_doc
(rag.evaluate.is_hit). The answer measures:

    correct             the reference answer occurs in the generated answer (case and whitespace
                        folded), over answerable questions
    citation precision  cited passages that contain the reference answer (or gold_text), over all
                        citations made on answerable questions
    cites               answerable questions whose answer cites at least one passage
    abstention          unanswerable questions answered with the abstention sentence
    false abstention    answerable questions answered with it
    in context          answerable questions whose passages hold the answer (reference answer
                        or gold_text); abstained_in_context counts the false abstentions among
                        them, the ones that are the answerer's fault rather than retrieval's

Answers are generated as one batch (Engine.generate_batch), greedy, so a run is repeatable and the
whole set takes one pass of the continuous-batching engine instead of a model call per question.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from llmlab.assistant.config import AssistantConfig
from llmlab.assistant.prompt import ABSTAIN, cited_numbers, is_abstention
from llmlab.core.errors import LLMLabError
from llmlab.core.io import read_jsonl_lines
from llmlab.core.progress import progress
from llmlab.rag.evaluate import is_hit, normalise_ws

# The ablation: each row adds one stage to the one before (the adapted encoder is measured with
# everything else on, on a store that `llmlab assistant tune` re-embedded).
STAGES: dict[str, dict] = {
    "dense": dict(mode="dense", expansion="none", rerank=False),
    "bm25": dict(mode="bm25", expansion="none", rerank=False),
    "hybrid": dict(mode="hybrid", expansion="none", rerank=False),
    "+ expansion": dict(mode="hybrid", expansion="both", rerank=False),
    "+ rerank": dict(mode="hybrid", expansion="both", rerank=True),
    "hybrid + rerank": dict(mode="hybrid", expansion="none", rerank=True),
}


def contains(haystack: str, needle: str) -> bool:
    return bool(needle) and normalise_ws(needle) in normalise_ws(haystack)


def passage_hit(hit: dict, item: dict) -> bool:
    return contains(hit["text"], item["gold_text"]) if item.get("gold_text") else is_hit(hit, item)


def load_questions(path: str | Path) -> list[dict]:
    path = Path(path)
    items = []
    for n, item in read_jsonl_lines(path, '{"question", "answer", "gold_text" or "gold_doc", "answerable"} lines'):
        if not isinstance(item, dict) or not str(item.get("question", "")).strip():
            raise LLMLabError(f"{path}:{n} has no \"question\"")
        answerable = item.get("answerable", bool(item.get("gold_doc") or item.get("gold_text")))
        if answerable and not (item.get("gold_doc") or item.get("gold_text")):
            raise LLMLabError(f"{path}:{n} is answerable but names no \"gold_text\" or \"gold_doc\" to score retrieval")
        items.append(dict(item, answerable=bool(answerable)))
    if not items:
        raise LLMLabError(f"{path} holds no questions")
    return items


def retrieval_stage(assistant, items: list[dict], config: AssistantConfig, ks=(1, 5, 10),
                    show_progress: bool = True, desc: str = "retrieve") -> dict:
    """hit@k and mean ms/query of one configuration over the answerable items."""
    answerable = [it for it in items if it["answerable"]]
    depth = max(ks)
    cfg = dataclasses.replace(config, k=min(depth, config.candidates), candidates=max(config.candidates, depth))
    found, ms = [], []
    bar = progress(total=len(answerable), desc=desc, unit="q", disable=None if show_progress else True)
    for it in answerable:
        assistant.embedder.clear_cache()   # time the question's embedding, not a cache lookup
        timings: dict[str, float] = {}
        hits = assistant.retrieve(it["question"], cfg, timings)
        ms.append(sum(timings.values()))
        found.append([passage_hit(h, it) for h in hits])
        bar.update(1)
    bar.close()
    n = max(len(found), 1)
    out = {f"hit@{k}": sum(any(r[:k]) for r in found) / n for k in ks}
    out["ms_per_query"] = sum(ms) / n
    out["n"] = len(found)
    return out


def ablation(assistant, items: list[dict], stages: list[str], base: AssistantConfig | None = None,
             show_progress: bool = True) -> dict[str, dict]:
    base = base or assistant.config
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise LLMLabError(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
    return {s: retrieval_stage(assistant, items, dataclasses.replace(base, **STAGES[s]), show_progress=show_progress,
                               desc=s) for s in stages}




def prepare_all(assistant, items: list[dict], show_progress: bool = True) -> list:
    prepared = []
    bar = progress(total=len(items), desc="prepare", unit="q", disable=None if show_progress else True)
    for it in items:
        prepared.append(assistant.prepare(it["question"]))
        bar.update(1)
    bar.close()
    return prepared


def answer_eval(assistant, items: list[dict], engine=None, show_progress: bool = True, prepared=None) -> dict:
    """Generate every answer (one batch) with `engine` (default: the assistant's answerer) and score.
    `prepared` (from prepare_all) lets several answerers be scored on the very same passages."""
    engine = engine or assistant.engine
    prepared = prepared or prepare_all(assistant, items, show_progress)
    t0 = time.perf_counter()
    asked = [p for p in prepared if not p.gated]  # the relevance gate abstains without the model
    outs = iter(engine.generate_batch([p.messages for p in asked], assistant.sampling()) if asked else [])
    seconds = time.perf_counter() - t0
    rows = []
    for it, p in zip(items, prepared):
        answer = ABSTAIN if p.gated else next(outs).text.strip()
        numbers = cited_numbers(answer, len(p.sources))
        row = {"question": it["question"], "answerable": it["answerable"], "answer": answer, "cited": numbers,
               "abstained": is_abstention(answer), "gated": p.gated, "support": round(p.support, 3)}
        if it["answerable"]:
            ref = it.get("answer", "")
            row["correct"] = contains(answer, ref) if ref else None
            holds = [contains(src.text, ref) or contains(src.text, it.get("gold_text", "")) for src in p.sources]
            row["good_citations"] = [n for n in numbers if holds[n - 1]]
            row["in_context"] = any(holds)   # could the answerer have answered at all?
        rows.append(row)
    summary = summarize(rows)
    summary["generate_s"] = seconds
    return {"summary": summary, "rows": rows}


def summarize(rows: list[dict]) -> dict:
    """The answer measures of answer_eval's rows."""
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    scored = [r for r in ans if r.get("correct") is not None]
    cited_total = sum(len(r["cited"]) for r in ans)
    return {
        "answerable": len(ans), "unanswerable": len(una),
        "correct": sum(r["correct"] for r in scored) / max(len(scored), 1),
        "citation_precision": sum(len(r["good_citations"]) for r in ans) / cited_total if cited_total else None,
        "citations": cited_total,
        "cites": sum(bool(r["cited"]) for r in ans) / max(len(ans), 1),
        "abstention": sum(r["abstained"] for r in una) / max(len(una), 1) if una else None,
        "false_abstention": sum(r["abstained"] for r in ans) / max(len(ans), 1),
        # false abstentions split by whether the passages held the answer: only those that did
        # are the answerer's fault; the others are retrieval's (and abstaining was right)
        "in_context": sum(bool(r.get("in_context")) for r in ans) / max(len(ans), 1),
        "abstained_in_context": sum(r["abstained"] and bool(r.get("in_context")) for r in ans),
        "gated": sum(r["gated"] for r in rows),
    }


def regate(rows: list[dict], min_similarity: float) -> dict:
    """The summary had the relevance gate been `min_similarity` (at least the one the rows were
    answered with): a row whose support is below it becomes an abstention without a model call.
    Exact, not an estimate: answers are greedy, so every row the stricter gate lets through is
    answered as it was."""
    regated = []
    for r in rows:
        if not r["gated"] and r["support"] < min_similarity:
            r = dict(r, answer=ABSTAIN, abstained=True, gated=True, cited=[])
            if r["answerable"]:
                r.update(correct=None if r.get("correct") is None else False, good_citations=[])
        regated.append(r)
    return summarize(regated)
