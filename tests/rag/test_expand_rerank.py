"""The LM stages of retrieval: query expansion (rewrite, HyDE) and the LM reranker, on SmolLM2."""

import numpy as np
import pytest

from llmlab.core.errors import LLMLabError
from llmlab.rag.expand import Expansion, expand, expand_many, expanded_search, query_vector
from llmlab.rag.rerank import LMReranker

CASES = [  # (question, the passage that answers it, passages that do not)
    ("What does the with statement call when its block ends?",
     "When the block of a with statement finishes, the context manager's __exit__ method is called, even if an exception was raised.",
     ["Cats sleep for up to sixteen hours a day, usually in short naps.",
      "The Pacific is the largest and deepest of the Earth's oceans."]),
    ("How long do cats sleep each day?",
     "Cats sleep for up to sixteen hours a day, usually in short naps.",
     ["The break statement ends the nearest enclosing for or while loop.",
      "The Pacific is the largest and deepest of the Earth's oceans."]),
    ("Which is the largest ocean on Earth?",
     "The Pacific is the largest and deepest of the Earth's oceans.",
     ["The break statement ends the nearest enclosing for or while loop.",
      "Cats sleep for up to sixteen hours a day, usually in short naps."]),
]


@pytest.fixture(scope="module")
def engine():
    from llmlab.infer.engine import Engine

    return Engine.load("smollm2")


@pytest.fixture(scope="module")
def reranker(engine):
    return LMReranker(engine, passage_tokens=48, batch_size=8)


def test_padding_does_not_change_a_score(engine):
    question, answer, others = CASES[0]
    texts = [answer, others[0], "A short one.", others[1] + " " + answer]   # four different lengths
    batched = LMReranker(engine, passage_tokens=48, batch_size=4).scores(question, texts)
    single = LMReranker(engine, passage_tokens=48, batch_size=1).scores(question, texts)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert batched.shape == (4,) and np.ptp(batched) > 0.05       # real scores, not a constant
    assert np.all(batched < 0)                                   # mean log-probabilities


def test_the_answering_passage_scores_highest(reranker):
    for question, answer, others in CASES:
        scores = reranker.scores(question, [others[0], answer, others[1]])
        assert int(np.argmax(scores)) == 1, (question, scores)


def test_rerank_keeps_k_and_orders_by_blended_score(reranker, monkeypatch):
    hits = [{"id": i, "text": f"passage {i}", "score": s} for i, s in enumerate([0.9, 0.8, 0.7, 0.6])]
    lm = np.array([-3.0, -1.0, -2.0, -0.5])                      # the LM prefers 3, then 1
    monkeypatch.setattr(reranker, "scores", lambda question, texts: lm[:len(texts)])
    by_lm = reranker.rerank("q", hits, top=4, keep=2, blend="lm")
    assert [h["id"] for h in by_lm] == [3, 1] and by_lm[0]["rerank_score"] == -0.5
    assert by_lm[0]["score"] == 0.6 and "lm_score" in by_lm[0]   # first-stage fields are kept
    # weight 0 is the first stage's order, weight 1 the LM's
    assert [h["id"] for h in reranker.rerank("q", hits, 4, 4, blend=0.0)] == [0, 1, 2, 3]
    assert [h["id"] for h in reranker.rerank("q", hits, 4, 4, blend=1.0)] == [3, 1, 2, 0]
    mixed = reranker.rerank("q", hits, 4, 3, blend=0.5)
    assert [h["rerank_score"] for h in mixed] == sorted([h["rerank_score"] for h in mixed], reverse=True)
    # RRF of first-stage ranks (1,2,3,4) and LM ranks (4,2,3,1): 1 is 2nd in both, so it wins
    assert reranker.rerank("q", hits, 4, 1, blend="rrf")[0]["id"] == 1
    # top limits what is re-scored: only the first two candidates compete
    assert [h["id"] for h in reranker.rerank("q", hits, top=2, keep=5, blend="lm")] == [1, 0]
    with pytest.raises(LLMLabError, match="blend"):
        reranker.rerank("q", hits, blend="best")


@pytest.fixture(scope="module")
def expansions(engine):
    question = "how do I make my class usable in a with statement?"
    return question, expand(engine, question, how="both", rewrite_tokens=8, passage_tokens=16), \
        expand_many(engine, [question, "why does my default list argument keep growing?"], how="both",
                    rewrite_tokens=8, passage_tokens=16)


def test_expansion_is_deterministic_and_keeps_the_question(expansions):
    question, one, many = expansions
    assert one.rewrite and one.passage and one.ms > 0
    assert question in one.bm25_query and one.bm25_query != question
    assert one.dense_texts == [question, one.passage]
    # greedy: the batched expansion of the same question is the same text
    assert (many[0].rewrite, many[0].passage) == (one.rewrite, one.passage)
    assert many[1].question.startswith("why") and many[1].passage != one.passage


def test_expansion_refuses_bad_input(engine):
    with pytest.raises(LLMLabError, match="expansion"):
        expand(engine, "a question", how="query2doc")
    with pytest.raises(LLMLabError, match="empty"):
        expand(engine, "   ")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from llmlab.rag.embed import Embedder
    from llmlab.rag.ingest import iter_files, read_document
    from llmlab.rag.store import Retriever, Store

    root = tmp_path_factory.mktemp("docs")
    (root / "ctx.txt").write_text("Context managers: the with statement calls __enter__ on entry and __exit__ on exit.")
    (root / "cats.txt").write_text("Cats sleep for up to sixteen hours a day, usually in short naps.")
    (root / "loops.txt").write_text("The break statement terminates the nearest enclosing for or while loop.")
    (root / "ocean.txt").write_text("The Pacific is the largest and deepest of the Earth's oceans.")
    embedder = Embedder()
    store = Store(root / "kb", create=True)
    store.index([read_document(f.resolve()) for f in iter_files([root]) if f.suffix == ".txt"], embedder)
    return Retriever(store, embedder), embedder


def test_expanded_search_uses_both_queries(tiny_store, expansions):
    retriever, embedder = tiny_store
    question = "what do I need so my object works there?"          # matches no document's words
    keywords = Expansion(question, f"{question} __enter__ __exit__", [question])
    assert not retriever.search(question, 2, mode="bm25")
    assert expanded_search(retriever, embedder, question, keywords, 1, mode="bm25")[0]["source"].endswith("ctx.txt")
    passage = "Cats nap for most of the day."
    hyde = Expansion(question, question, [question, passage])
    vec = query_vector(embedder, hyde.dense_texts)
    q_vec, p_vec = embedder.embed([question, passage])
    assert abs(float(np.linalg.norm(vec)) - 1) < 1e-5 and vec @ p_vec > q_vec @ p_vec
    hits = expanded_search(retriever, embedder, question, hyde, 2, mode="dense")
    assert [h["id"] for h in hits] == [h["id"] for h in retriever.search(question, 2, mode="dense", query_vec=vec)]
    assert hits[0]["source"].endswith("cats.txt")
    # the generated expansion goes through the default hybrid search; None searches the question alone
    _, real, _ = expansions
    assert len(expanded_search(retriever, embedder, real.question, real, 3)) == 3
    assert expanded_search(retriever, embedder, question, None, 1)[0]["id"] == retriever.search(question, 1)[0]["id"]
