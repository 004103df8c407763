"""Data curation: raw text -> clean, deduplicated, tokenized training shards.

    readers.py      .txt/.md, JSONL(.gz), Parquet, HTML, WARC -> {"id", "text", "source"} documents
    normalize.py    Unicode NFC, control characters, whitespace (ftfy optional for broken encodings)
    langid.py       language identification (py3langid, offline) with a probability threshold
    quality.py      Gopher and C4 quality heuristics, each removal with its reason
    repetition.py   Gopher repetition filters (duplicate lines/paragraphs, top/duplicate n-grams)
    pii.py          e-mail, IP and phone numbers -> placeholders
    dedup_exact.py  exact dedup on normalised-text hashes
    minhash.py      MinHash signatures (vectorised in NumPy) + LSH banding, one document per cluster
    decontam.py     drop documents sharing a long n-gram with evaluation files
    stages.py       runs the per-document stages over a batch and keeps their statistics
    pipeline.py     TOML config dataclasses and named recipes
    executor.py     streaming, parallel, resumable, deterministic execution (local processes or Dask)
    report.py       per-stage counts, removal reasons, histograms -> markdown + PNG
    tokenize.py     curated JSONL -> the trainer's token shards (llmlab.data.tokens)

A document is a plain dict with at least "id", "text" and "source"; stages take and return lists
of them so each one is a small function that a test can call directly.
"""
