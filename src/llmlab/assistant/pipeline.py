"""The assistant: a question in, a grounded answer with resolved citations out.

    question ─► [expand] ─► hybrid search (top candidates) ─► [LM rerank] ─► top k chunks
             ─► parent sections cut around each chunk ─► numbered passages within the budget ─► answerer
             ─► [n] → file § section

Each stage is a layer built in an earlier chapter: the store and hybrid search (chapter 4), the
chat model and its streaming engine (chapter 3), a LoRA adapter on it (chapter 6). `assistant
tune` adds the two corpus-specific parts, an adapted encoder beside the store and the answerer's
adapter, and records them in the store's assistant.json, which this class reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmlab.assistant.config import AssistantConfig
from llmlab.assistant.prompt import (ABSTAIN, Source, answer_passage, cited_numbers, grounded_messages,
                                     is_abstention)
from llmlab.core.config import config_from_dict, config_to_dict
from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_text

CONFIG_FILE = "assistant.json"
FORMAT_VERSION = 1


def read_store_config(store_dir: str | Path) -> AssistantConfig:
    """The assistant config saved in a store (the defaults when the store has none yet)."""
    path = Path(store_dir) / CONFIG_FILE
    if not path.is_file():
        return AssistantConfig()
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format_version") != FORMAT_VERSION:
        raise LLMLabError(f"{path} is assistant config format {data.get('format_version')}; this llmlab reads "
                          f"format {FORMAT_VERSION}: delete it (the store itself is kept) and re-run `llmlab assistant tune`")
    return config_from_dict(AssistantConfig, data["config"])


def write_store_config(store_dir: str | Path, config: AssistantConfig) -> None:
    atomic_write_text(Path(store_dir) / CONFIG_FILE, json.dumps(
        {"format_version": FORMAT_VERSION, "config": config_to_dict(config)}, indent=2) + "\n")


@dataclass
class Prepared:
    """Everything the answerer gets for one question, and what it cost to find."""

    question: str
    messages: list[dict]
    sources: list[Source]
    hits: list[dict]                                  # the ranked chunks, best first
    timings_ms: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    support: float = 1.0      # the best cosine similarity of a retrieved passage to the question
    gated: bool = False       # support below min_similarity: abstain without a model call


class Assistant:
    """Retrieval + grounded answering over one store. Models load on first use."""

    def __init__(self, store_dir: str | Path, config: AssistantConfig | None = None, device: str = "cpu",
                 engine=None, helper_engine=None, on_model_load: Callable[[str], None] | None = None):
        """`on_model_load(name)` is called just before a chat model loads (a CLI says so: it takes
        seconds), which happens on first use only, and never for a question the gate stops."""
        from llmlab.rag.store import Retriever, Store, store_embedder

        self.dir = Path(store_dir)
        self.store = Store(self.dir)
        self.config = config or read_store_config(self.dir)
        self.embedder = store_embedder(self.store)
        self.retriever = Retriever(self.store, self.embedder)
        self.device = device
        self._engine, self._helper = engine, helper_engine
        self._on_model_load = on_model_load or (lambda name: None)
        self._reranker = None
        # (question, how) -> Expansion: an evaluation that runs several configurations expands
        # each question once; the time reported stays the generation's own (Expansion.ms).
        self._expansions: dict[tuple[str, str], object] = {}

    # ---- models -----------------------------------------------------------------------------
    @property
    def engine(self):
        """The answerer: the chat model with the store's adapter merged in, if tuned."""
        if self._engine is None:
            from llmlab.infer import Engine

            adapter = self.config.adapter
            if adapter and not Path(adapter).is_absolute():
                adapter = str(self.dir / adapter)
            self._on_model_load(self.config.model + (f" + {Path(adapter).name}" if adapter else ""))
            self._engine = Engine.load(self.config.model, device=self.device, adapter=adapter)
        return self._engine

    @property
    def helper(self):
        """The model that expands and reranks: the *base* chat model, so that tuning the answerer
        never changes what is retrieved (and the ablation measures one change at a time)."""
        if self._helper is None:
            if not self.config.adapter:
                self._helper = self.engine
            else:
                from llmlab.infer import Engine

                self._on_model_load(self.config.model)
                self._helper = Engine.load(self.config.model, device=self.device)
        return self._helper

    @property
    def reranker(self):
        if self._reranker is None:
            from llmlab.rag.rerank import LMReranker

            self._reranker = LMReranker(self.helper, passage_tokens=self.config.rerank_tokens)
        return self._reranker

    # ---- retrieval --------------------------------------------------------------------------
    def retrieve(self, question: str, config: AssistantConfig | None = None,
                 timings: dict[str, float] | None = None) -> list[dict]:
        """The top config.k chunks for `question`, best first, through the configured stages."""
        cfg = config or self.config
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        if cfg.expansion != "none":
            from llmlab.rag.expand import expand, expanded_search

            expansion = self._expansions.get((question, cfg.expansion))
            if expansion is None:
                expansion = self._expansions[(question, cfg.expansion)] = expand(self.helper, question, cfg.expansion)
            t1 = time.perf_counter()
            timings["expand_ms"] = expansion.ms
            hits = expanded_search(self.retriever, self.embedder, question, expansion, cfg.candidates,
                                   mode=cfg.mode, alpha=cfg.alpha)
        else:
            t1 = t0
            hits = self.retriever.search(question, cfg.candidates, cfg.mode, alpha=cfg.alpha)
        t2 = time.perf_counter()
        timings["search_ms"] = (t2 - t1) * 1e3
        if cfg.rerank and len(hits) > 1:
            hits = self.reranker.rerank(question, hits, top=cfg.candidates, keep=cfg.k)
            timings["rerank_ms"] = (time.perf_counter() - t2) * 1e3
        return hits[:cfg.k]

    def prepare(self, question: str, config: AssistantConfig | None = None) -> Prepared:
        """Retrieve, expand each hit to its parent section, and pack the passages that fit."""
        from llmlab.rag.context import pack_context

        cfg = config or self.config
        question = question.strip()
        if not question:
            raise LLMLabError("the question is empty: ask something about the indexed documents")
        timings: dict[str, float] = {}
        hits = self.retrieve(question, cfg, timings)
        support = self.support(question, hits)
        if support < cfg.min_similarity:
            timings["retrieve_ms"] = sum(timings.values())
            return Prepared(question, grounded_messages(question, []), [], hits, timings,
                            f"no passage is similar enough to the question (best {support:.2f} < "
                            f"--min-similarity {cfg.min_similarity})", support, gated=True)
        engine = self.engine
        count = lambda text: len(engine.tokenizer.encode(text))  # noqa: E731 - budget in the answerer's tokens
        passages, seen = [], set()
        for h in hits:  # two chunks of one section share their parent: hand it over once
            text = answer_passage(h, cfg.parent, cfg.passage_words)
            if text not in seen:
                seen.add(text)
                passages.append(dict(h, text=text))
        room = engine.max_context - cfg.max_new_tokens - len(engine.encode_prompt(grounded_messages(question, [])))
        packed = pack_context(passages, min(cfg.context_tokens, room), count)
        by_span = {(h["source"], h["start"], h["end"]): h for h in hits}
        sources = [Source(c.number, c.source, by_span.get((c.source, c.start, c.end), {}).get("section", ""),
                          c.title, c.text, c.start, c.end, c.score) for c in packed]
        note = None if len(sources) == len(hits) else f"{len(sources)} of {len(hits)} passages fit the context budget"
        timings["retrieve_ms"] = sum(timings.values())
        return Prepared(question, grounded_messages(question, sources), sources, hits, timings, note, support)

    def support(self, question: str, hits: list[dict]) -> float:
        """The highest cosine similarity between the question and a retrieved chunk: the relevance
        gate's evidence. Cosine, not the fused or reranked score, because only it is on a fixed
        scale across questions (a fused score is normalised per query, so the best is always ~1)."""
        if not hits:
            return 0.0
        vec = self.embedder.embed([question])[0]
        rows = [self.retriever.row_of[h["id"]] for h in hits]
        return float((self.retriever.exact.vectors[rows] @ vec).max())

    # ---- answering --------------------------------------------------------------------------
    def sampling(self):
        from llmlab.infer.sampling import SamplingConfig

        return SamplingConfig(max_new_tokens=self.config.max_new_tokens, temperature=0.0,
                              presence_penalty=self.config.presence_penalty)

    def answer_stream(self, question: str, sampling=None, prepared: Prepared | None = None) -> Iterator[dict]:
        """Events: {"type": "sources", "sources": [...]}, then {"type": "delta", "text"} per piece,
        then {"type": "done", "answer", "citations": [Source dicts cited], "abstained", "timings_ms"}.
        `prepared` (from prepare(question)) skips retrieving again."""
        prepared = prepared or self.prepare(question)
        yield {"type": "sources", "sources": [asdict(s) for s in prepared.sources], "note": prepared.note}
        if prepared.gated:
            yield {"type": "delta", "text": ABSTAIN}
            yield self.finish(ABSTAIN, prepared)
            return
        parts: list[str] = []
        t0 = time.perf_counter()
        for delta in self.engine.chat_stream(prepared.messages, sampling or self.sampling()):
            parts.append(delta)
            yield {"type": "delta", "text": delta}
        prepared.timings_ms["answer_ms"] = (time.perf_counter() - t0) * 1e3
        yield self.finish("".join(parts), prepared)

    def finish(self, answer: str, prepared: Prepared) -> dict:
        """The closing event of an answer: its citations resolved to file § section."""
        numbers = cited_numbers(answer, len(prepared.sources))
        cited = [asdict(prepared.sources[n - 1]) | {"label": prepared.sources[n - 1].label()} for n in numbers]
        return {"type": "done", "answer": answer.strip(), "citations": cited, "abstained": is_abstention(answer),
                "timings_ms": {k: round(v, 1) for k, v in prepared.timings_ms.items()}}

    def answer(self, question: str, sampling=None) -> dict:
        """The whole answer at once: the done event plus the sources."""
        sources = []
        for event in self.answer_stream(question, sampling):
            if event["type"] == "sources":
                sources = event["sources"]
            elif event["type"] == "done":
                return event | {"sources": sources}
        raise AssertionError("answer_stream ended without a done event")

    def close(self) -> None:
        self.store.close()
