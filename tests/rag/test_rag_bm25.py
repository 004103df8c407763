import numpy as np
import pytest

from llmlab.core.assets import pydocs_topics
from llmlab.rag.bm25 import BM25, stem, tokenize


def corpus():
    topics = pydocs_topics()
    return [topics[k] for k in sorted(topics)][:150]


@pytest.mark.parametrize("stemming", [False, True])
def test_scores_match_bm25s(stemming):
    bm25s = pytest.importorskip("bm25s")
    docs = [tokenize(d, stemming=stemming, stopwords=True) for d in corpus()]
    ours = BM25(k1=1.5, b=0.75).fit_tokens(docs)
    vocab = {t: i for i, t in enumerate(sorted({w for d in docs for w in d}))}
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(bm25s.tokenization.Tokenized(ids=[[vocab[w] for w in d] for d in docs], vocab=vocab), show_progress=False)
    for q in ["how does the with statement work", "exception handling try except finally", "lambda functions"]:
        qt = [w for w in tokenize(q, stemming=stemming, stopwords=True) if w in vocab]
        # bm25s implements Lucene's form, which drops Robertson's constant (k1 + 1) factor
        np.testing.assert_allclose(ours.scores_tokens(qt) / (1.5 + 1), ref.get_scores(qt), rtol=1e-4, atol=1e-6)


def test_ranking_matches_rank_bm25_on_nonnegative_idf():
    rank_bm25 = pytest.importorskip("rank_bm25")
    docs = [tokenize(d) for d in corpus()]
    ours = BM25().fit_tokens(docs)
    ref = rank_bm25.BM25Okapi(docs, k1=1.5, b=0.75)
    q = tokenize("context manager enter exit")
    assert np.argsort(-ours.scores_tokens(q))[:5].tolist() == np.argsort(-ref.get_scores(q))[:5].tolist()


def test_search_finds_the_topic_and_stemmer():
    texts = corpus()
    bm = BM25(stemming=True).fit(texts)
    idx, scores = bm.search("assert statement AssertionError", 3)
    assert "assert" in texts[idx[0]][:200].lower() and scores[0] >= scores[-1]
    assert stem("managers") == stem("manager") and stem("running") == "run" and stem("defined") == stem("define")
