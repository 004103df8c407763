"""The knobs of indexing and retrieval as typed configs (mapped to `--kebab-case` flags by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkConfig:
    chunking: str = field(default="recursive", metadata={
        "help": "how documents are cut: structure (within one section of the document's headings, code blocks "
                "whole, each chunk headed by its section path, its parent section kept for answering), "
                "recursive (headings > paragraphs > sentences), fixed (token windows), "
                "sentence (one sentence + a window of neighbours), chars (the naive 512-character baseline)",
        "choices": ["structure", "recursive", "fixed", "sentence", "chars"]})
    chunk_size: int = field(default=200, metadata={"help": "max chunk size in embedding-model tokens (characters for chars)"})
    overlap: int = field(default=40, metadata={"help": "tokens shared by consecutive chunks (fixed only)"})
    parent_tokens: int = field(default=400, metadata={
        "help": "structure only: max tokens of the parent-section text a chunk hands the generator (its "
                "section if that fits, else the chunk grown by neighbouring paragraphs)"})


@dataclass
class RetrievalConfig:
    mode: str = field(default="hybrid", metadata={"help": "dense (MiniLM), bm25, or hybrid (both, fused)",
                                                  "choices": ["dense", "bm25", "hybrid"]})
    fusion: str = field(default="weighted", metadata={"help": "hybrid fusion: weighted (scores normalised to [0, 1] "
                                                      "per list, alpha on dense) or rrf (reciprocal rank, k=60)",
                                                 "choices": ["rrf", "weighted"]})
    # 0.5: on SQuAD dev, alpha tuned on half the questions came out 0.45 and 0.4-0.5 were within
    # 0.001 recall@5 of each other (docs/04-rag.md); an untuned round value generalises as well.
    alpha: float = field(default=0.5, metadata={"help": "dense weight for weighted fusion (0 = BM25 only, 1 = dense only)"})
    candidates: int = field(default=100, metadata={"help": "top-N of each retriever fused in hybrid mode"})
    ann: bool = field(default=False, metadata={"help": "dense search through the HNSW graph instead of exact"})
    ef: int = field(default=128, metadata={"help": "HNSW search beam width (recall/speed knob)"})
    where: str | None = field(default=None, metadata={"help": "metadata filter: only sources whose path matches this glob"})
