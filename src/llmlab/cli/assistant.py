"""`llmlab assistant`: a documentation assistant over your own files, offline, with cited answers.

    llmlab assistant index ~/notes ~/project/docs --store kb/     # or --builtin pydocs; re-runs touch only changes
    llmlab assistant ask --store kb/ "how do I make my class usable in a with statement?"
    llmlab assistant serve --store kb/ --port 8000                # page at /, OpenAI API with model "assistant"
    llmlab assistant eval --store kb/ --qa my_questions.jsonl --json
    llmlab assistant tune --store kb/ --out runs/kb-tuned         # adapt encoder + answerer from the corpus alone
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from llmlab.core.config import add_config_flags, apply_flags, given_flags
from llmlab.core.errors import LLMLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmlab.assistant.config import PRESETS, AssistantConfig
    from llmlab.assistant.tune import TuneConfig

    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="add or update documents in a store (structure-following chunks)")
    p.add_argument("paths", nargs="*", help="files or directories (.txt .md .html .pdf)")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
    p.add_argument("--builtin", choices=["pydocs"], help="index a built-in offline corpus (Python's docs)")
    p.add_argument("--chunk-size", type=int, default=200,
                   help="max chunk size in embedding-model tokens")
    p.add_argument("--json", action="store_true", help="print the index statistics as JSON")

    def store_and_config(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", required=True, help="the store made by `llmlab assistant index`")
        q.add_argument("--preset", choices=list(PRESETS), default=None,
                       help="fast: no model in retrieval; default: + LM rerank; full: + query expansion "
                            "(default: the store's saved config)")
        q.add_argument("--device", default="cpu", help="cpu, cuda, mps, auto")
        add_config_flags(q, AssistantConfig, "assistant (AssistantConfig; the store's assistant.json fills the rest)")

    p = sub.add_parser("ask", help="answer one question from the store, with citations")
    p.add_argument("question", help="the question")
    store_and_config(p)
    p.add_argument("--json", action="store_true", help="print the answer, citations and sources as JSON")

    p = sub.add_parser("serve", help="the assistant page and an OpenAI-compatible API with retrieval inside")
    store_and_config(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")

    p = sub.add_parser("eval", help="retrieval hit@k per stage, answer correctness, citations, abstention")
    store_and_config(p)
    p.add_argument("--qa", required=True, help='JSONL of {"question", "answer", "gold_text"/"gold_doc", "answerable"}')
    p.add_argument("--stages", default="dense,bm25,hybrid,+ rerank",
                   help="retrieval rows (comma list): dense, bm25, hybrid, + expansion, + rerank, hybrid + rerank; "
                        "'' for none")
    p.add_argument("--answers", choices=["none", "store", "base", "both"], default="store",
                   help="score answers of the store's answerer, the base model, both, or none")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--json", action="store_true", help="print every figure (and each answer) as JSON")

    p = sub.add_parser("tune", help="adapt the retriever and the answerer to the store's corpus")
    p.add_argument("--store", required=True, help="the store made by `llmlab assistant index`")
    p.add_argument("--out", required=True, help="directory for questions, training data and the answerer run "
                                                "(re-run the same command to continue an interrupted tune)")
    p.add_argument("--model", default="smollm2", help="the chat model that writes questions and is tuned")
    add_config_flags(p, TuneConfig, "tuning (TuneConfig)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _open(args: argparse.Namespace):
    from llmlab.assistant.config import PRESETS, AssistantConfig
    from llmlab.assistant.pipeline import Assistant, read_store_config

    if not (Path(args.store) / "store.sqlite").is_file():
        raise LLMLabError(f"{args.store} is not an assistant store: build one with "
                          f"`llmlab assistant index <your docs> --store {args.store}`")
    saved = read_store_config(args.store)
    if args.preset:  # a preset sets the retrieval stages; what tune trained stays
        preset = PRESETS[args.preset]
        saved = dataclasses.replace(saved, **{f: getattr(preset, f) for f in ("expansion", "rerank", "candidates", "k")})
    config = dataclasses.replace(saved, **given_flags(AssistantConfig, args))
    return Assistant(args.store, config, device=args.device,
                     on_model_load=lambda name: print(f"loading {name} ...", file=sys.stderr, flush=True))


def _index(args: argparse.Namespace) -> int:
    from llmlab.rag.ingest import collect_documents
    from llmlab.rag.store import Store, store_embedder

    if args.chunk_size < 16:
        raise LLMLabError(f"--chunk-size {args.chunk_size}: use at least 16 tokens (e.g. 200)")
    docs, prune = collect_documents(args.paths, args.builtin)
    store = Store(args.store, create=True)
    stats = store.index(docs, store_embedder(store), prune, "structure", args.chunk_size, 0, show_progress=not args.json)
    store.close()
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"{args.store}: {stats['documents']} documents, {stats['chunks']} chunks (added {stats['added']}, "
              f"updated {stats['updated']}, unchanged {stats['unchanged']}, deleted {stats['deleted']}; "
              f"embedded {stats['embedded']} new chunks)")
    return 0


def _ask(args: argparse.Namespace) -> int:
    assistant = _open(args)
    prepared = assistant.prepare(args.question)  # a gated question never loads the answerer
    if not prepared.gated:
        assistant.engine  # noqa: B018 - load before timing the answer
    done, sources = None, []
    for event in assistant.answer_stream(args.question, prepared=prepared):
        if event["type"] == "sources":
            sources = event["sources"]
        elif event["type"] == "delta" and not args.json:
            print(event["text"], end="", flush=True)
        elif event["type"] == "done":
            done = event
    if args.json:
        print(json.dumps(done | {"sources": sources}, indent=2))
        return 0
    print("\n")
    cited = {c["number"] for c in done["citations"]}
    for s in sources:
        mark = "*" if s["number"] in cited else " "
        section = f" § {s['section']}" if s["section"] else ""
        print(f"{mark}[{s['number']}] {s['source']}{section}")
    t = done["timings_ms"]
    print(f"\n(retrieval {t.get('retrieve_ms', 0):.0f} ms, answer {t.get('answer_ms', 0) / 1e3:.1f} s; * = cited)",
          file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from llmlab.assistant.app import serve_assistant
    from llmlab.serve.config import ServeConfig

    assistant = _open(args)
    return serve_assistant(assistant, ServeConfig(model_name=assistant.config.model), args.host, args.port) or 0


def _eval(args: argparse.Namespace) -> int:
    from llmlab.assistant.evaluate import ablation, answer_eval, load_questions

    assistant = _open(args)
    items = load_questions(args.qa)[: args.limit] if args.limit else load_questions(args.qa)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    result: dict = {"questions": len(items), "store": args.store, "config": dataclasses.asdict(assistant.config)}
    result["retrieval"] = ablation(assistant, items, stages, show_progress=not args.json) if stages else {}
    result["retrieval"]["configured"] = ablation_row(assistant, items, args.json)
    answers = {}
    if args.answers in ("store", "both"):
        answers["store" if not assistant.config.adapter else "tuned"] = answer_eval(assistant, items, show_progress=not args.json)
    if args.answers in ("base", "both") and (args.answers == "base" or assistant.config.adapter):
        answers["base"] = answer_eval(assistant, items, engine=assistant.helper, show_progress=not args.json)
    result["answers"] = answers
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"{len(items)} questions ({sum(it['answerable'] for it in items)} answerable)\n")
    print("| retrieval | hit@1 | hit@5 | hit@10 | ms/query |\n|---|---:|---:|---:|---:|")
    for name, m in result["retrieval"].items():
        print(f"| {name} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['hit@10']:.3f} | {m['ms_per_query']:.0f} |")
    if answers:
        print("\n| answerer | correct | citation precision | cites | abstention | false abstention |\n|---|---:|---:|---:|---:|---:|")
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for name, a in answers.items():
            s = a["summary"]
            print(f"| {name} | {fmt(s['correct'])} | {fmt(s['citation_precision'])} | {fmt(s['cites'])} | "
                  f"{fmt(s['abstention'])} | {fmt(s['false_abstention'])} |")
    return 0


def ablation_row(assistant, items, quiet: bool) -> dict:
    """The store's own configuration, as one more row."""
    from llmlab.assistant.evaluate import retrieval_stage

    return retrieval_stage(assistant, items, assistant.config, show_progress=not quiet, desc="configured")


def _tune(args: argparse.Namespace) -> int:
    from llmlab.assistant.tune import TuneConfig, tune

    cfg = apply_flags(TuneConfig(), args)
    report = tune(args.store, args.out, cfg, model=args.model, show_progress=not args.json)
    print(json.dumps(report, indent=2, default=str) if args.json else
          f"tuned {args.store}: {report.get('kept_after_round_trip')} question/passage pairs, encoder in "
          f"{report['encoder_dir']}, answerer {report.get('answerer', '(skipped)')}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"index": _index, "ask": _ask, "serve": _serve, "eval": _eval, "tune": _tune}[args.command](args)
