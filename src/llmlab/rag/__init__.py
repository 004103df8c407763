"""Retrieval-augmented generation from scratch: ingest -> chunk -> embed -> index -> retrieve -> answer.

    ingest.py       read .txt/.md/.html/.pdf files and the built-in Python docs
    chunking.py     fixed-size-by-tokens, recursive-by-structure, sentence-window, naive 512-char
    embed.py        our MiniLM encoder (llmlab.model.encoder) batched and cached by content hash
    index_exact.py  exact top-k: one matrix product + argpartition
    hnsw.py         HNSW graph index (Malkov & Yashunin 2016) in NumPy, with tombstone deletes
    bm25.py         Okapi BM25 over an inverted index, with a small stemmer and stopwords
    hybrid.py       reciprocal-rank fusion and weighted score fusion
    store.py        one --store directory: SQLite (documents, chunks, vectors) + index files
    context.py      token-budget packing, dedupe, numbered citations, the grounded prompt
    evaluate.py     recall@k, MRR@10, nDCG@10 over a QA file
"""
