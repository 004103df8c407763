"""Chapter 4, exercise "BM25 by hand": score a query against four tiny documents with the formula
written out (Lucene's idf, k1 = 1.5, b = 0.75), and check every score against llmlab.rag.bm25.BM25.

    python examples/solutions/04_bm25_by_hand.py
"""

import math
from collections import Counter

from llmlab.rag.bm25 import BM25, tokenize

docs = ["The with statement calls the context manager's enter and exit methods.",
        "A context manager is an object that defines a runtime context.",
        "Lists are mutable sequences.",
        "The manager of the theatre company managed the tour."]
query = "context manager"
k1, b = 1.5, 0.75

tokens = [tokenize(d) for d in docs]           # lowercased \w+ runs, no stemming, no stopwords
N, avgdl = len(tokens), sum(map(len, tokens)) / len(tokens)


def idf(term: str) -> float:
    df = sum(term in t for t in tokens)
    return math.log(1 + (N - df + 0.5) / (df + 0.5))  # Lucene's variant: never negative


def score(q: str, doc: list[str]) -> float:
    tf = Counter(doc)
    return sum(idf(t) * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(doc) / avgdl)) for t in tokenize(q))


by_hand = [score(query, t) for t in tokens]
library = BM25(k1=k1, b=b).fit(docs).scores(query).tolist()
for d, h, lib in zip(docs, by_hand, library):
    print(f"{h:7.4f}  {lib:7.4f}  {d}")
assert all(abs(h - lib) < 1e-5 for h, lib in zip(by_hand, library)), "the formula and the library disagree"
# What the numbers say: "manager's" is one token ("manager", "s"), so doc 0 matches both terms;
# doc 3 has "manager" but not "context"; "managed" only matches with stemming.
assert by_hand[2] == 0 and by_hand[1] > by_hand[3] > 0
stemmed = BM25(k1=k1, b=b, stemming=True).fit(docs).scores("managing").tolist()
print(f"with stemming, 'managing' matches doc 3 ('managed'): {stemmed[3]:.4f}")
assert stemmed[3] > 0
print("BM25 by hand == llmlab's BM25: OK")
