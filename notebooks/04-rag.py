# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Retrieval-augmented generation — notebook
#
# The runnable companion of [docs/04-rag.md](../docs/04-rag.md). We index ten short documents
# two ways, as MiniLM vectors (dense) and as bags of words (BM25), look at the scores each gives a
# query, fuse the two rankings (weighted score fusion, the default, and reciprocal-rank fusion),
# and finally check that a real store on disk plus `Retriever.search` gives the ranking we built
# by hand.

# %%
import shutil
from pathlib import Path


import matplotlib.pyplot as plt
import numpy as np

from llmlab.rag.bm25 import BM25
from llmlab.rag.embed import Embedder
from llmlab.rag.hybrid import reciprocal_rank_fusion, weighted_fusion
from llmlab.rag.index_exact import ExactIndex

DOCS = [
    ("Context managers", "The with statement calls __enter__ before its block runs and __exit__ afterwards, even "
                         "when the block raises an exception, so resources such as open files are always released."),
    ("Generators", "A function that contains yield returns a generator. Each call to next() resumes the function "
                   "where it stopped and runs it to the following yield."),
    ("Decorators", "The @ syntax wraps a function in another one: writing @functools.cache above def f is the same "
                   "as f = functools.cache(f)."),
    ("Sourdough", "A sourdough starter is flour and water fermented by wild yeast and lactic acid bacteria. Feed it "
                  "every day and bake when it doubles."),
    ("Espresso", "Espresso forces hot water through finely ground coffee at about nine bars of pressure, in "
                 "twenty-five to thirty seconds."),
    ("Jupiter", "Jupiter is the largest planet of the solar system. Its Great Red Spot is a storm wider than the "
                "Earth that has raged for centuries."),
    ("Tides", "The Moon's gravity pulls on the oceans, so the water level on most coasts rises and falls twice a day."),
    ("Photosynthesis", "In their chloroplasts, plants turn sunlight, water and carbon dioxide into sugar, and "
                       "release oxygen."),
    ("Bicycle gears", "A derailleur moves the chain between sprockets so that a rider can keep a steady cadence on "
                      "a steep hill."),
    ("Hamlet", "Prince Hamlet of Denmark feigns madness to expose his uncle Claudius, who murdered the king and "
               "married the queen."),
]
titles = [title for title, _ in DOCS]
texts = [f"{title}. {text}" for title, text in DOCS]

# %% [markdown]
# ## Two indexes over the same ten texts
#
# Dense: each text becomes a 384-dimensional unit vector from our MiniLM encoder; for unit vectors
# cosine similarity is a dot product, so exact search is one matrix product. Sparse: BM25 over
# lowercased, lightly stemmed words.

# %%
embedder = Embedder()                                  # the built-in all-MiniLM-L6-v2, offline
vectors = embedder.embed(texts)
dense_index = ExactIndex(vectors)
bm25 = BM25(stemming=True).fit(texts)
print(f"vectors {vectors.shape}, norms {np.linalg.norm(vectors, axis=1).round(4)[:3]} ...; "
      f"BM25 vocabulary {len(bm25.vocab)} terms")
print("stemming:", bm25.tokenize("Feeds fermented starters daily"))

# %% [markdown]
# ## BM25 vs dense on one query
#
# The question shares almost no words with the right document ("sea", "go up and down" vs
# "oceans", "rises and falls"), but it does share "every day" with another one.

# %%
def scores_table(query):
    query_vec = embedder.embed([query])[0]
    cosines = vectors @ query_vec
    bm = bm25.scores(query)
    print(f"query: {query!r}")
    print(f"  {'document':18} {'BM25':>6} {'rank':>4}   {'cosine':>6} {'rank':>4}")
    bm_rank = {int(i): r for r, i in enumerate(np.argsort(-bm, kind="stable"), 1)}
    cos_rank = {int(i): r for r, i in enumerate(np.argsort(-cosines, kind="stable"), 1)}
    for i in np.argsort(-cosines):
        print(f"  {titles[i]:18} {bm[i]:6.2f} {bm_rank[i]:4d}   {cosines[i]:6.3f} {cos_rank[i]:4d}")
    return query_vec, cosines, bm


query = "why does the sea go up and down every day"
query_vec, cosines, bm = scores_table(query)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
axes[0].barh(titles, bm, color="tab:orange"); axes[0].set_title("BM25 score")
axes[1].barh(titles, cosines, color="tab:blue"); axes[1].set_title("cosine similarity (dense)")
axes[0].invert_yaxis()
fig.suptitle(repr(query)); fig.tight_layout()
plt.show()

# %% [markdown]
# BM25 ranks *Sourdough* first on the words "every" and "day"; the dense side ranks *Tides* first
# by meaning. Neither scale means anything to the other: BM25 scores are unbounded sums of idf
# weights, cosines live in [−1, 1].

# %% [markdown]
# ## Fusion
#
# Weighted fusion normalises each list to [0, 1] against its *floor*, the best score that did not
# make the list. Both lists here are complete, so the floor is 0 (BM25's score for a document
# sharing no query term), or a complete list's lowest score when that is negative (two cosines
# here are). Then it mixes them with `alpha` on the dense side. With `alpha=1` or `0` the fused score is just one side, normalised,
# which lets us plot what is being mixed. Reciprocal-rank fusion uses ranks only: Σ 1/(60 + rank).

# %%
dense_ids, dense_sims = dense_index.search(query_vec, k=len(texts))
dense = list(zip(dense_ids.tolist(), dense_sims.tolist()))
sparse_ids, sparse_scores = bm25.search(query, k=len(texts))            # only documents with a score > 0
sparse = list(zip(sparse_ids.tolist(), sparse_scores.tolist()))

def as_array(pairs):
    out = np.zeros(len(texts))
    for i, s in pairs:
        out[i] = s
    return out

norm_dense, norm_bm25 = as_array(weighted_fusion(dense, sparse, alpha=1.0)), as_array(weighted_fusion(dense, sparse, alpha=0.0))
fused = weighted_fusion(dense, sparse, alpha=0.5)
rrf = reciprocal_rank_fusion([dense_ids.tolist(), sparse_ids.tolist()])
print("weighted (alpha 0.5):", [(titles[i], round(s, 3)) for i, s in fused[:4]])
print("RRF (k = 60):        ", [(titles[i], round(s, 4)) for i, s in rrf[:4]])

y = np.arange(len(texts))
plt.figure(figsize=(7, 3.6))
plt.barh(y - 0.27, norm_dense, height=0.27, label="dense, normalised")
plt.barh(y, norm_bm25, height=0.27, label="BM25, normalised")
plt.barh(y + 0.27, as_array(fused), height=0.27, label="weighted fusion, alpha 0.5")
plt.yticks(y, titles); plt.gca().invert_yaxis(); plt.legend(loc="lower right"); plt.title(repr(query))
plt.show()

# %% [markdown]
# A rare term is where BM25 earns its place: `functools` occurs in one document only. Anchored at
# the floor, that lone hit gets its full weight (1.0) instead of vanishing, as plain min-max over
# a one-item list would make it.

# %%
rare = "functools"
rare_sparse = list(zip(*[a.tolist() for a in bm25.search(rare, k=len(texts))]))
rare_ids, rare_sims = dense_index.search(embedder.embed([rare])[0], k=len(texts))
rare_dense = list(zip(rare_ids.tolist(), rare_sims.tolist()))
print("BM25 hits:", [(titles[i], round(s, 2)) for i, s in rare_sparse])
print("normalised BM25 side:", [(titles[i], s) for i, s in weighted_fusion([], rare_sparse, alpha=0.0)])
print("hybrid top 3:", [(titles[i], round(s, 3)) for i, s in weighted_fusion(rare_dense, rare_sparse)[:3]])

# %% [markdown]
# ## The same thing through a store on disk
#
# `Store.index` chunks each document (in MiniLM tokens), embeds the chunks (cached by content
# hash) and writes SQLite plus an HNSW graph; `Retriever.search(mode="hybrid")` runs both
# retrievers and weighted fusion, as `llmlab rag search` does. Each short document is one chunk.

# %%
from llmlab.rag.ingest import Document
from llmlab.rag.store import Retriever, Store

kb = Path("out") / "kb"
shutil.rmtree(kb, ignore_errors=True)                  # a fresh store each run
store = Store(kb, create=True)
stats = store.index([Document(f"mem:{title}", title, text) for title, text in zip(titles, texts)], embedder)
print({k: stats[k] for k in ("documents", "chunks", "embedded")})
retriever = Retriever(store, embedder)
hits = retriever.search(query, k=4, mode="hybrid")
for hit in hits:
    print(f"  {hit['score']:.3f}  {hit['title']}")
print("same order as our fusion:", [h["title"] for h in hits] == [titles[i] for i, _ in fused[:4]])
store.close()

# %% [markdown]
# ## Try this
#
# 1. Sweep `alpha` from 0 to 1 for the query above. At what value does *Tides* overtake
#    *Sourdough*? Predict first from the normalised bars.
# 2. Turn stopwords on (`BM25(stemming=True, stopwords=True)`) and re-run the table. Which
#    documents drop to a BM25 score of 0, and does *Sourdough* stay first? Why?
# 3. Write a query with no word in common with any document ("a drink that keeps you awake") and
#    compare `mode="dense"`, `"bm25"` and `"hybrid"` in `retriever.search`.
