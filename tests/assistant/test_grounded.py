"""The answerer's synthetic training examples (assistant/grounded.py) on the Quillmate notes: each is
in the answer-time prompt format, its passages are cut as at answer time, an answer quotes a
sentence that the cited passage shows and the question was written from, and an abstention's
passages come from other documents only."""

import random
import re
import shutil
from pathlib import Path

import pytest

from llmlab.assistant.grounded import grounded_examples
from llmlab.assistant.prompt import ABSTAIN, SYSTEM_PROMPT, answer_passage
from llmlab.cli import main
from llmlab.rag.evaluate import normalise_ws
from llmlab.rag.synth import passage_window

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "assistant" / "notes"
WORDS = 30   # small enough that the notes' sections are cut


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    from llmlab.rag.store import Retriever, Store, store_embedder

    root = tmp_path_factory.mktemp("grounded")
    shutil.copytree(CORPUS, root / "docs")
    # the same note under a second name, as Python's docs repeat sections under several topics:
    # its chunks are "another document" that holds the answer, and must never be a negative
    shutil.copy(root / "docs" / "sync.md", root / "docs" / "sync-copy.md")
    assert main(["assistant", "index", str(root / "docs"), "--store", str(root / "kb"), "--json"]) == 0
    store = Store(root / "kb")
    yield Retriever(store, store_embedder(store))
    store.close()


def passages_of(user: str) -> dict[int, str]:
    """The numbered passages of a grounded user message, by number."""
    body = user.split("Passages:\n", 1)[1].rsplit("\n\nQuestion: ", 1)[0]
    parts = re.split(r"(?:^|\n\n)\[(\d+)\] ", body)
    return {int(n): text for n, text in zip(parts[1::2], parts[2::2])}


def test_examples_quote_the_cited_passage_or_abstain_on_other_documents(retriever):
    rng = random.Random(0)
    rows = []
    for chunk in retriever.chunks:   # a question "written from" a window of each chunk
        span = passage_window(chunk["text"], 25, rng)
        rows.append({"chunk_id": chunk["id"], "question": f"What does the note say about {span.split()[-3]}?",
                     "passage": span})
    examples = grounded_examples(retriever, retriever.embedder, rows, k=3, abstain_fraction=0.4,
                                 passage_words=WORDS, show_progress=False)
    kinds = {e["kind"] for e in examples}
    assert kinds == {"answer", "abstain"} and len(examples) >= len(rows) // 2
    by_id = {c["id"]: c for c in retriever.chunks}
    cut_somewhere = False
    for e in examples:
        system, user, reply = (m["content"] for m in e["messages"])
        assert system == SYSTEM_PROMPT and [m["role"] for m in e["messages"]] == ["system", "user", "assistant"]
        shown = passages_of(user)
        assert 2 <= len(shown) <= 3 and sorted(shown) == list(range(1, len(shown) + 1))
        for text in shown.values():   # the heading line, then at most WORDS words (and the "..." marks)
            body = text.partition("\n")[2] or text
            assert len([w for w in body.split() if w != "..."]) <= WORDS
            cut_somewhere |= "..." in body
        own = by_id[e["chunk_id"]]
        cited = int(reply.rsplit("[", 1)[1].rstrip("]")) if e["kind"] == "answer" else None
        if own["source"].endswith(("sync.md", "sync-copy.md")):   # its twin's text is in no other passage
            sync = [c["text"].partition("\n")[2] for c in retriever.chunks if c["source"].endswith(
                ("sync.md", "sync-copy.md")) and len(c["text"].split()) > 12]
            assert not any(body in text for n, text in shown.items() if n != cited for body in sync)
        if e["kind"] == "abstain":
            assert reply == ABSTAIN
            assert not any(normalise_ws(answer_passage(own, True, WORDS)) in normalise_ws(t) for t in shown.values())
            continue
        quote, number = re.fullmatch(r"(.+) \[(\d)\]", reply).groups()
        row = next(r for r in rows if r["chunk_id"] == e["chunk_id"])
        assert normalise_ws(quote) in normalise_ws(shown[int(number)])    # the cited passage shows it
        assert normalise_ws(quote) in normalise_ws(row["passage"])       # and the question came from it
    assert cut_somewhere
