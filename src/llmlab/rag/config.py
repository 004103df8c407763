"""The knobs of indexing and retrieval as typed configs (mapped to `--kebab-case` flags by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkConfig:
    chunking: str = field(default="recursive", metadata={
        "help": "how documents are cut: recursive (headings > paragraphs > sentences), fixed (token windows), "
                "sentence (one sentence + a window of neighbours), chars (the naive 512-character baseline)",
        "choices": ["recursive", "fixed", "sentence", "chars"]})
    chunk_size: int = field(default=200, metadata={"help": "max chunk size in embedding-model tokens (characters for chars)"})
    overlap: int = field(default=40, metadata={"help": "tokens shared by consecutive chunks (fixed only)"})


@dataclass
class RetrievalConfig:
    mode: str = field(default="hybrid", metadata={"help": "dense (MiniLM), bm25, or hybrid (both, fused)",
                                                  "choices": ["dense", "bm25", "hybrid"]})
    fusion: str = field(default="rrf", metadata={"help": "hybrid fusion: rrf (reciprocal rank, k=60) or weighted scores",
                                                 "choices": ["rrf", "weighted"]})
    alpha: float = field(default=0.5, metadata={"help": "dense weight for weighted fusion"})
    candidates: int = field(default=100, metadata={"help": "top-N of each retriever fused in hybrid mode"})
    ann: bool = field(default=False, metadata={"help": "dense search through the HNSW graph instead of exact"})
    ef: int = field(default=128, metadata={"help": "HNSW search beam width (recall/speed knob)"})
    where: str | None = field(default=None, metadata={"help": "metadata filter: only sources whose path matches this glob"})
