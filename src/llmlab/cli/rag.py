"""`llmlab rag`: index documents into a store, search it, answer with citations, evaluate retrieval.

    llmlab rag index docs/ --store kb/                 # .txt .md .html .pdf; re-runs index only changes
    llmlab rag index --builtin pydocs --store kb/ --chunking structure  # chunks follow the headings
    llmlab rag search kb/ "how does a with statement work" -k 5 --mode hybrid [--json]
    llmlab rag ask kb/ "How do I define a context manager?" [--temperature 0.7 --seed 0] [--json]
    llmlab rag eval kb/ --qa examples/questions.jsonl --modes dense,bm25,hybrid --k 1,5,10 [--alpha 0.3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from llmlab.core.config import add_config_flags, apply_flags
from llmlab.core.errors import LLMLabError
from llmlab.rag.config import ChunkConfig, RetrievalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="add or update documents in a store")
    p.add_argument("paths", nargs="*", help="files or directories (.txt .md .html .pdf)")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
    p.add_argument("--builtin", choices=["pydocs"], help="index a built-in offline corpus")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_config_flags(p, ChunkConfig, "chunking (ChunkConfig)")

    def retrieval_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", help="machine-readable output")
        add_config_flags(q, RetrievalConfig, "retrieval (RetrievalConfig)")

    p = sub.add_parser("search", help="retrieve the top-k chunks for a query")
    p.add_argument("store", help="the --store directory made by `llmlab rag index`")
    p.add_argument("query", help="the search query")
    p.add_argument("-k", type=int, default=5, help="number of hits to return")
    retrieval_flags(p)

    p = sub.add_parser("ask", help="answer a question from the store, with [n] citations")
    p.add_argument("store", help="the --store directory made by `llmlab rag index`")
    p.add_argument("question", help="the question to answer from the store")
    p.add_argument("-k", type=int, default=8, help="chunks retrieved before packing")
    p.add_argument("--model", default="smollm2", help="generator: smollm2, a .gguf path or a model dir")
    p.add_argument("--context-tokens", type=int, default=1024, help="token budget for retrieved context")
    p.add_argument("--order", default="relevance", choices=["relevance", "source"], help="order of context chunks in the prompt")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    retrieval_flags(p)
    from llmlab.cli.generate import add_sampling_arguments

    add_sampling_arguments(p, ask_sampling(), skip=("logprobs", "top_logprobs"))

    p = sub.add_parser("eval", help="recall@k / MRR@10 / nDCG@10 over a QA file")
    p.add_argument("store", help="the --store directory made by `llmlab rag index`")
    p.add_argument("--qa", required=True, help='JSONL of {"question", "gold_doc" or "gold_text"}')
    p.add_argument("--modes", default="dense,bm25,hybrid", help="comma list of dense,bm25,hybrid,naive")
    p.add_argument("--k", default="1,5,10", help="comma list of k for recall@k")
    p.add_argument("--limit", type=int, help="evaluate only the first N questions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_config_flags(p, RetrievalConfig, "retrieval (RetrievalConfig; hybrid's fusion and alpha, dense's --ann and --ef)",
                     skip=("mode",))


def ask_sampling():
    """`rag ask`'s starting point: greedy (an answer from the passages, the same every time) with a
    presence penalty. Plain greedy SmolLM2-135M falls into loops on a long retrieved context (it
    repeated "The answer is:" ten times on the Python-docs store). The presence penalty counts only
    the answer's own tokens; CTRL's repetition penalty also counts the prompt, i.e. the passages
    the answer should quote, and at 1.1-1.2 it changed answers from their first word (docs/04-rag.md)."""
    from llmlab.infer.sampling import SamplingConfig

    return SamplingConfig(max_new_tokens=256, temperature=0.0, presence_penalty=ASK_PRESENCE_PENALTY)


ASK_PRESENCE_PENALTY = 0.5


def _check_chunking(chunk: ChunkConfig) -> None:
    if chunk.chunk_size < 1:
        raise LLMLabError(f"--chunk-size {chunk.chunk_size}: a chunk must hold at least one token; use e.g. 200")
    if chunk.parent_tokens < 1:
        raise LLMLabError(f"--parent-tokens {chunk.parent_tokens}: the parent text is a number of tokens, at least 1; "
                          f"use e.g. 400")
    if chunk.overlap < 0:
        raise LLMLabError(f"--overlap {chunk.overlap}: the overlap is a number of tokens, 0 or more")
    if chunk.chunking == "fixed" and chunk.overlap >= chunk.chunk_size:
        raise LLMLabError(f"--overlap {chunk.overlap} must be smaller than --chunk-size {chunk.chunk_size} "
                          f"(each window must move forward): use e.g. --overlap {chunk.chunk_size // 5}")


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise LLMLabError(f"--k {text!r}: give a comma list of positive integers, e.g. --k 1,5,10")
    return ks


def _index(args: argparse.Namespace) -> int:
    from llmlab.rag.ingest import collect_documents
    from llmlab.rag.store import Store, store_embedder

    chunk = apply_flags(ChunkConfig(), args)
    _check_chunking(chunk)  # before reading anything or creating the store
    docs, prune = collect_documents(args.paths, args.builtin)
    store = Store(args.store, create=True)
    stats = store.index(docs, store_embedder(store), prune, chunk.chunking, chunk.chunk_size, chunk.overlap,
                        chunk.parent_tokens, show_progress=not args.json)
    store.close()
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"{args.store}: {stats['documents']} documents, {stats['chunks']} chunks "
              f"(added {stats['added']}, updated {stats['updated']}, unchanged {stats['unchanged']}, "
              f"deleted {stats['deleted']}, newly embedded chunks {stats['embedded']})")
    return 0


def _search_hits(args: argparse.Namespace, query: str) -> list[dict]:
    cfg = apply_flags(RetrievalConfig(), args)
    r = _retriever(args, cfg.mode != "bm25")
    return r.search(query, args.k, cfg.mode, cfg.ann, cfg.ef, cfg.fusion, cfg.alpha, cfg.candidates, cfg.where)


def _retriever(args: argparse.Namespace, need_dense: bool):
    from llmlab.rag.store import Retriever, Store, store_embedder

    store = Store(args.store)
    return Retriever(store, store_embedder(store) if need_dense else None)


def _search(args: argparse.Namespace) -> int:
    hits = _search_hits(args, args.query)
    if args.json:
        print(json.dumps([{k: h[k] for k in ("source", "title", "section", "text", "score", "start", "end")} for h in hits],
                         indent=2))
        return 0
    for i, h in enumerate(hits, start=1):
        text = " ".join(h["text"].split())
        where = h["title"] + (f" / {h['section']}" if h.get("section") else "")
        print(f"[{i}] {h['score']:.4f}  {h['source']}  ({where})\n    {text[:300]}{'...' if len(text) > 300 else ''}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    from llmlab.cli.generate import sampling_from
    from llmlab.infer import Engine
    from llmlab.rag.context import fit_context, format_sources

    config = sampling_from(args, ask_sampling())  # a bad flag value fails here, before any model loads
    hits = _search_hits(args, args.question)
    for h in hits:  # sentence-window and structure chunks hand their wider window to the generator
        if h.get("window"):
            h["text"] = h["window"]
    print(f"loading {args.model} ...", file=sys.stderr)
    engine = Engine.load(args.model, device=args.device)
    count = lambda text: len(engine.tokenizer.encode(text))  # noqa: E731 - budget in the generator's tokens
    chunks, messages, note = fit_context(args.question, hits, count, lambda m: len(engine.encode_prompt(m)),
                                         engine.max_context, config.max_new_tokens, args.context_tokens, args.order,
                                         engine.name or args.model)
    if note:
        print(f"note: {note}", file=sys.stderr)
    answer = []
    for delta in engine.chat_stream(messages, config):
        answer.append(delta)
        if not args.json:
            print(delta, end="", flush=True)
    if args.json:
        print(json.dumps({"answer": "".join(answer), "sources": [
            {"number": c.number, "source": c.source, "title": c.title, "start": c.start, "end": c.end,
             "score": c.score} for c in chunks]}, indent=2))
    else:
        print("\n\nSources:\n" + format_sources(chunks))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from llmlab.core.progress import progress
    from llmlab.rag.chunking import char_chunks
    from llmlab.rag.evaluate import load_qa, metrics, relevance
    from llmlab.rag.index_exact import ExactIndex

    items, skipped = load_qa(args.qa)
    items = items[: args.limit] if args.limit else items
    ks = _parse_ks(args.k)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("dense", "bm25", "hybrid", "naive")]
    if bad:
        raise LLMLabError(f"unknown mode(s) {bad}: use dense, bm25, hybrid, naive")
    depth = max(ks + [10])
    cfg = apply_flags(RetrievalConfig(), args)
    r = _retriever(args, any(m != "bm25" for m in modes))
    qvecs = r.embedder.embed([it["question"] for it in items], show_progress=not args.json) if r.embedder else None
    results = {}
    for mode in modes:
        if mode == "naive":  # fixed 512-character chunks + exact dense search, the baseline
            docs = r.store.db.execute("SELECT path, title, text FROM documents ORDER BY id").fetchall()
            naive = [dict(source=p, title=t, text=c.text, start=c.start, end=c.end) for p, t, text in docs
                     for c in char_chunks(text, 512)]
            index = ExactIndex(r.embedder.embed([c["text"] for c in naive], show_progress=not args.json))
            idx, _ = index.search_batch(qvecs, depth)
            ranked = [[naive[i] for i in row] for row in idx]
        else:
            ranked = []
            bar = progress(total=len(items), desc=mode, unit="q", disable=True if args.json else None)
            for i, it in enumerate(items):
                ranked.append(r.search(it["question"], depth, mode, cfg.ann, cfg.ef, cfg.fusion, cfg.alpha, cfg.candidates,
                                       cfg.where, query_vec=None if qvecs is None else qvecs[i]))
                bar.update(1)
            bar.close()
        results[mode] = metrics(relevance(ranked, items), ks)
    if args.json:
        print(json.dumps({"modes": results, "n": len(items), "skipped": skipped}, indent=2))
        return 0
    cols = [f"recall@{k}" for k in ks] + ["mrr@10", "ndcg@10"]
    print(f"{len(items)} questions ({skipped} lines skipped)\n")
    print("| mode | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for mode, m in results.items():
        print(f"| {mode} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"index": _index, "search": _search, "ask": _ask, "eval": _eval}[args.command](args)
