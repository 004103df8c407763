"""The pydocs evaluation question set (examples/assistant/pydocs_questions.jsonl) is well formed and honest.

Well formed: every answerable line points at a real pydoc_data topic, its gold_text is really in that
topic (whitespace-normalised, the way rag.evaluate.is_hit compares chunks) and its short reference
answer is in the topic near the gold text. Honest: the questions paraphrase instead of quoting, which
the leakage guard measures as the share of a question's content words that also occur in its gold
text; a set written by copying the docs' wording scores close to 1, a paraphrased one close to 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from llmlab.core.assets import pydocs_topics
from llmlab.rag.evaluate import load_qa, normalise_ws

QUESTIONS = Path(__file__).resolve().parents[2] / "examples" / "assistant" / "pydocs_questions.jsonl"

N_ANSWERABLE, N_UNANSWERABLE = 60, 20
MIN_TOPICS, MAX_PER_TOPIC = 35, 3
GOLD_CHARS = (30, 120)
ANSWER_NEAR_CHARS = 1000  # the reference answer must sit in the same passage as the gold text
MAX_MEAN_LEAKAGE = 0.35

# Function words of 5+ letters that say nothing about a question's topic.
STOPWORDS = frozenset(
    "about above after again against because before being below between could doing during every "
    "further having other there their these those through under until which while would should "
    "where whose thing things".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 5 and w not in STOPWORDS}


def leakage(question: str, gold_text: str) -> float:
    """Share of the question's content words that also appear in the gold text (0 if it has none)."""
    words = content_words(question)
    gold = set(re.findall(r"[a-z]+", gold_text.lower()))
    return len(words & gold) / len(words) if words else 0.0


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = [line for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for n, line in enumerate(lines, start=1):
        obj = json.loads(line)  # a broken line fails here with its JSON error
        assert isinstance(obj, dict), f"line {n} is not a JSON object"
        out.append(obj)
    return out


@pytest.fixture(scope="module")
def answerable(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("answerable") is True]


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    return {name: normalise_ws(text) for name, text in pydocs_topics().items()}


def test_counts_ids_and_fields(rows: list[dict]) -> None:
    ids = [r.get("id") for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate ids: {[i for i, c in Counter(ids).items() if c > 1]}"
    yes = [r for r in rows if r.get("answerable") is True]
    no = [r for r in rows if r.get("answerable") is False]
    assert (len(yes), len(no)) == (N_ANSWERABLE, N_UNANSWERABLE)
    assert len(yes) + len(no) == len(rows), "every line needs answerable: true or false"
    for r in yes:
        assert set(r) == {"id", "question", "answer", "gold_doc", "gold_text", "answerable"}, r["id"]
        assert all(isinstance(r[k], str) and r[k].strip() for k in ("question", "answer", "gold_doc", "gold_text"))
        assert re.fullmatch(r"p\d\d", r["id"]), r["id"]
        assert 1 <= len(r["answer"].split()) <= 6, f"{r['id']}: answer should be 1-6 words"
    for r in no:
        assert set(r) == {"id", "question", "answerable"}, f"{r['id']}: unanswerable lines carry no gold"
        assert re.fullmatch(r"u\d\d", r["id"]) and r["question"].strip(), r["id"]


def test_loads_with_the_rag_evaluator() -> None:
    # rag.evaluate.load_qa keeps the lines that have gold and counts the others as skipped.
    items, skipped = load_qa(QUESTIONS)
    assert (len(items), skipped) == (N_ANSWERABLE, N_UNANSWERABLE)


def test_gold_text_and_answer_are_in_the_topic(answerable: list[dict], topics: dict[str, str]) -> None:
    problems = []
    for r in answerable:
        topic = r["gold_doc"].removeprefix("pydocs:")
        if not r["gold_doc"].startswith("pydocs:") or topic not in topics:
            problems.append(f"{r['id']}: {r['gold_doc']!r} is not a pydocs topic")
            continue
        text, gold, answer = topics[topic], normalise_ws(r["gold_text"]), normalise_ws(r["answer"])
        if not GOLD_CHARS[0] <= len(r["gold_text"]) <= GOLD_CHARS[1]:
            problems.append(f"{r['id']}: gold_text is {len(r['gold_text'])} chars, want {GOLD_CHARS}")
        at = text.find(gold)
        if at < 0:
            problems.append(f"{r['id']}: gold_text not found in topic {topic!r}")
            continue
        spots = [m.start() for m in re.finditer(re.escape(answer), text)]
        if not spots:
            problems.append(f"{r['id']}: answer {r['answer']!r} not found in topic {topic!r}")
        elif min(abs(s - at) for s in spots) > ANSWER_NEAR_CHARS:
            problems.append(f"{r['id']}: answer {r['answer']!r} is not within {ANSWER_NEAR_CHARS} chars of gold_text")
    assert not problems, "\n".join(problems)


def test_topic_spread(answerable: list[dict]) -> None:
    per_topic = Counter(r["gold_doc"] for r in answerable)
    assert len(per_topic) >= MIN_TOPICS, f"only {len(per_topic)} topics"
    crowded = {t: n for t, n in per_topic.items() if n > MAX_PER_TOPIC}
    assert not crowded, f"more than {MAX_PER_TOPIC} questions on {crowded}"


def test_questions_paraphrase_rather_than_quote(answerable: list[dict]) -> None:
    scores = {r["id"]: leakage(r["question"], r["gold_text"]) for r in answerable}
    mean = sum(scores.values()) / len(scores)
    worst = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
    print(f"\nmean question/gold_text content-word leakage: {mean:.3f} (worst: {worst})")
    assert mean < MAX_MEAN_LEAKAGE, f"mean leakage {mean:.3f}: questions copy the docs' words (worst: {worst})"


def test_leakage_guard_catches_a_copied_question() -> None:
    # The guard is only worth something if a question lifted from the passage scores high.
    gold = "Default parameter values are evaluated from left to right when the function definition is executed"
    assert leakage("Are default parameter values evaluated when the function definition is executed?", gold) > 0.8
    assert leakage("Why does my fallback list keep growing between calls?", gold) == 0.0


def test_every_gold_text_fits_in_one_default_chunk(answerable: list[dict]) -> None:
    # A hit is a chunk containing the gold text: a gold sentence that the default chunking
    # (`llmlab assistant index`: structure, 200 encoder tokens) cuts in two can never be found,
    # and would count as a retrieval miss that no retriever could fix.
    from llmlab.rag.chunking import chunk_document
    from llmlab.rag.embed import Embedder
    from llmlab.rag.ingest import builtin_documents

    count = Embedder().count_tokens
    docs = {d.path: d for d in builtin_documents("pydocs")}
    cut = []
    for r in answerable:
        doc = docs[r["gold_doc"]]
        chunks = chunk_document(doc.text, count, "structure", 200, 0, title=doc.title)
        if not any(normalise_ws(r["gold_text"]) in normalise_ws(c.text) for c in chunks):
            cut.append(r["id"])
    assert not cut, f"gold_text split across chunks (pick a span inside one sentence): {cut}"
