"""The assistant's knobs as one typed config, with named presets (mapped to `--kebab-case` flags).

A store directory made by `llmlab assistant index` keeps the resolved config in `assistant.json`
(with a format version), so `ask`, `serve` and `eval` answer the way the store was set up, and
`llmlab assistant tune` records there what it trained (the adapted encoder, the answerer adapter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.core.config import check, check_fields


@dataclass
class AssistantConfig:
    # ---- retrieval ----
    mode: str = field(default="hybrid", metadata={"help": "first-stage retrieval: dense, bm25 or hybrid",
                                                  "choices": ["dense", "bm25", "hybrid"]})
    # 0.7, not chapter 4's 0.5: on paraphrased questions BM25 has few shared words to match, and on
    # the pydocs set hit@5 was 0.38 at 0.5 and 0.45 from 0.7 to 0.9 (docs/13-capstone.md).
    alpha: float = field(default=0.7, metadata={"help": "hybrid: weight of the dense scores (weighted fusion)"})
    candidates: int = field(default=10, metadata={"help": "first-stage hits handed to the reranker (its cost "
                                                          "grows with this: one passage each in its forward pass)"})
    k: int = field(default=4, metadata={"help": "passages kept for the answer (after reranking)"})
    expansion: str = field(default="none", metadata={
        "help": "query expansion with the chat model before retrieval: none, rewrite (search keywords for BM25), "
                "hyde (a hypothetical answer passage for the dense side) or both",
        "choices": ["none", "rewrite", "hyde", "both"]})
    rerank: bool = field(default=True, metadata={"help": "rerank the candidates with the language model "
                                                         "(query likelihood, llmlab.rag.rerank)"})
    rerank_tokens: int = field(default=96, metadata={"help": "reranker: tokens of each candidate it reads"})
    parent: bool = field(default=True, metadata={"help": "hand the generator each passage's parent section "
                                                         "(structure chunks) instead of the chunk alone"})
    # 100 words, not the whole (up to 400-token) parent: SmolLM2-135M finds the answering sentence
    # in four short passages better than in two or three long ones, and four 100-word passages of
    # Python's docs (~190 tokens each) fit the 900-token budget (docs/13-capstone.md).
    passage_words: int = field(default=100, metadata={
        "help": "with --parent: the words of the parent section the generator reads, centred on the retrieved "
                "chunk (0: the whole parent section). `assistant tune` trains the answerer on passages cut the same way"})
    min_similarity: float = field(default=0.2, metadata={
        "help": "abstain without asking the model when no retrieved passage has at least this cosine similarity "
                "to the question (MiniLM; unrelated text scores about 0-0.15). 0 turns the gate off"})
    # ---- answering ----
    model: str = field(default="smollm2", metadata={"help": "answerer: smollm2, a .gguf path or a model dir"})
    adapter: str | None = field(default=None, metadata={
        "help": "LoRA adapter of the answerer (set by `llmlab assistant tune`; a path relative to the store)"})
    context_tokens: int = field(default=900, metadata={"help": "token budget for the passages in the prompt"})
    max_new_tokens: int = field(default=160, metadata={"help": "longest answer, in tokens"})
    presence_penalty: float = field(default=0.5, metadata={"help": "answer sampling: presence penalty (greedy "
                                                                 "otherwise; see llmlab rag ask)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "candidates", self.candidates >= 1, "must be at least 1")
        check(self, "k", 1 <= self.k <= self.candidates, f"must be between 1 and --candidates ({self.candidates})")
        check(self, "alpha", 0.0 <= self.alpha <= 1.0, "must be in [0, 1]")
        check(self, "passage_words", self.passage_words >= 0, "must be 0 (the whole parent) or more")
        check(self, "context_tokens", self.context_tokens >= 64, "must be at least 64")
        check(self, "max_new_tokens", self.max_new_tokens >= 1, "must be at least 1")


PRESETS: dict[str, AssistantConfig] = {
    # No language model in the retrieval loop: the cheapest setup, retrieval in milliseconds.
    "fast": AssistantConfig(rerank=False),
    # The default: the reranker on top of hybrid retrieval.
    "default": AssistantConfig(),
    # Everything on: query expansion costs one short generation per question.
    "full": AssistantConfig(expansion="both"),
}
