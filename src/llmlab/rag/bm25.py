"""Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework") from scratch.

    score(q, d) = sum_{t in q} idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))        (the Lucene variant, never negative)

k1 (default 1.5) controls how fast repeated terms saturate; b (default 0.75) how much long
documents are penalised. Like bm25s (Lù 2024) we precompute each posting's full weight at
index time, so a query is only a few sparse additions: one NumPy scatter-add per query term.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

# A small English stopword list (the most frequent function words); stopwords only help BM25
# when queries are natural-language questions, so it is optional.
STOPWORDS = frozenset("""a an and are as at be but by for from has have he her his how i if in into is it its
of on or she that the their them then there these they this to was we were what when where which who
why will with would you your do does did can could should not no so than too very""".split())

_TOKEN = re.compile(r"\w+", re.UNICODE)


def stem(word: str) -> str:
    """A light suffix stripper (plural/verb/adverb endings), far simpler than Porter (1980) but
    enough to conflate 'managers'/'manager', 'defined'/'define', 'running'/'run'."""
    if len(word) <= 3:
        return word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ness", ""), ("ments", "ment"), ("ingly", ""),
                         ("edly", ""), ("ing", ""), ("ed", ""), ("ly", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                break
            word = word[: len(word) - len(suffix)] + repl
            if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # running -> runn -> run
            break
    # a final silent e goes too, so define / defined / defines all meet at "defin"
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


def tokenize(text: str, stemming: bool = False, stopwords: bool = False) -> list[str]:
    """Lowercased word tokens, optionally without stopwords and stemmed."""
    words = _TOKEN.findall(text.lower())
    if stopwords:
        words = [w for w in words if w not in STOPWORDS]
    if stemming:
        words = [stem(w) for w in words]
    return words


class BM25:
    def __init__(self, k1: float = 1.5, b: float = 0.75, stemming: bool = False, stopwords: bool = False):
        self.k1, self.b, self.stemming, self.stopwords = k1, b, stemming, stopwords
        self.vocab: dict[str, int] = {}
        self.n_docs = 0

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.stemming, self.stopwords)

    def fit_tokens(self, docs: list[list[str]]) -> "BM25":
        """Build the inverted index: for each term, the docs it occurs in and their weights."""
        self.n_docs = len(docs)
        lengths = np.array([len(d) for d in docs], dtype=np.float64)
        avgdl = max(lengths.mean(), 1e-9) if len(docs) else 1.0
        postings: dict[str, list[tuple[int, int]]] = {}
        for doc_id, words in enumerate(docs):
            for term, tf in Counter(words).items():
                postings.setdefault(term, []).append((doc_id, tf))
        self.vocab = {t: i for i, t in enumerate(postings)}
        self.doc_ids, self.weights = [], []
        for term, plist in postings.items():
            ids = np.array([p[0] for p in plist], dtype=np.int64)
            tf = np.array([p[1] for p in plist], dtype=np.float64)
            df = len(plist)
            idf = np.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))
            norm = self.k1 * (1.0 - self.b + self.b * lengths[ids] / avgdl)
            self.doc_ids.append(ids)
            self.weights.append((idf * tf * (self.k1 + 1.0) / (tf + norm)).astype(np.float32))
        return self

    def fit(self, texts: list[str]) -> "BM25":
        return self.fit_tokens([self.tokenize(t) for t in texts])

    def scores_tokens(self, query: list[str]) -> np.ndarray:
        """BM25 score of every document for a tokenized query (repeated query terms count again)."""
        scores = np.zeros(self.n_docs, dtype=np.float32)
        for term in query:
            t = self.vocab.get(term)
            if t is not None:
                scores[self.doc_ids[t]] += self.weights[t]  # doc ids are unique within a posting list
        return scores

    def scores(self, query: str) -> np.ndarray:
        return self.scores_tokens(self.tokenize(query))

    def search(self, query: str, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (doc indices, scores), best first; documents with score 0 are left out."""
        s = self.scores(query)
        idx = top_k(s, k)
        idx = idx[s[idx] > 0]
        return idx, s[idx]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first: argpartition is O(n), then sort only k."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-scores, k - 1)[:k]
    return idx[np.argsort(-scores[idx], kind="stable")]
