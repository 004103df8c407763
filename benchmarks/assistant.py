"""The assistant's retrieval ablation and answer scores, on Python's docs (paraphrased questions)
and on SQuAD dev (questions written from the passage).

    python benchmarks/assistant.py --corpus pydocs                       # base store: every stage
    python benchmarks/assistant.py --corpus pydocs --tuned runs/kb-tuned-store --answers
    python benchmarks/assistant.py --corpus squad --limit 200

Each row adds one stage to the previous (dense, BM25, hybrid, + query expansion, + LM rerank);
"+ adapted encoder" is the full stack on a store that `llmlab assistant tune` re-embedded with its
fine-tuned MiniLM. ms/query is the wall time of retrieval alone (no answer), one question at a
time, as a user meets it. The stores are built here the first time (benchmarks/.cache/), with
`llmlab assistant index`'s chunking; SQuAD's 2,067 dev paragraphs are one document each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"


def squad_documents_and_questions(limit: int):
    from llmlab.rag.ingest import Document

    if not SQUAD.is_file():
        sys.exit(f"{SQUAD} not found (the shared SQuAD dev set lives beside the checkout)")
    docs, items = [], []
    for article in json.loads(SQUAD.read_text())["data"]:
        for p in article["paragraphs"]:
            path = f"squad:{len(docs)}"
            docs.append(Document(path, article["title"].replace("_", " "), p["context"]))
            for qa in p["qas"][:1]:   # one question per paragraph: the set spreads over the corpus
                items.append({"question": qa["question"], "answer": qa["answers"][0]["text"], "gold_doc": path,
                              "answerable": True})
    step = max(len(items) // limit, 1)
    return docs, items[::step][:limit]


def build_store(directory: Path, docs) -> None:
    from llmlab.rag.store import Store, store_embedder

    store = Store(directory, create=True)
    stats = store.index(docs, store_embedder(store), [], "structure", 200, 0, show_progress=True)
    store.close()
    print(f"{directory}: {stats['documents']} documents, {stats['chunks']} chunks", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["pydocs", "squad"], default="pydocs")
    ap.add_argument("--store", type=Path, help="base store (default: benchmarks/.cache/assistant-<corpus>)")
    ap.add_argument("--tuned", type=Path, help="a store tuned by `llmlab assistant tune`: adds the adapted-encoder row")
    ap.add_argument("--questions", type=Path, default=ROOT / "examples" / "assistant" / "pydocs_questions.jsonl")
    ap.add_argument("--limit", type=int, default=200, help="SQuAD: questions (one per paragraph, spread out)")
    ap.add_argument("--stages", default="dense,bm25,hybrid,+ expansion,+ rerank,hybrid + rerank")
    ap.add_argument("--answers", action="store_true", help="also score answers: base model vs the tuned answerer")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    from llmlab.assistant.config import AssistantConfig
    from llmlab.assistant.evaluate import STAGES, ablation, answer_eval, load_questions, prepare_all, retrieval_stage
    from llmlab.assistant.pipeline import Assistant
    from llmlab.rag.ingest import builtin_documents

    store = args.store or CACHE / f"assistant-{args.corpus}"
    if args.corpus == "squad":
        docs, items = squad_documents_and_questions(args.limit)
    else:
        docs, items = builtin_documents("pydocs"), load_questions(args.questions)
    if not (store / "store.sqlite").is_file():
        build_store(store, docs)
    t0 = time.time()
    base = Assistant(store, AssistantConfig(adapter=None))
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    rows = ablation(base, items, stages)
    result = {"corpus": args.corpus, "questions": len(items), "answerable": sum(i["answerable"] for i in items),
              "machine": describe(), "retrieval": rows}
    tuned = None
    if args.tuned:
        tuned = Assistant(args.tuned)
        tuned._helper, tuned._expansions = base.helper, base._expansions  # one base model, one expansion each
        full = dataclasses.replace(tuned.config, **STAGES["+ rerank"])
        rows["+ adapted encoder"] = retrieval_stage(tuned, items, full, desc="+ adapted")
        for stage in ("dense", "hybrid", "hybrid + rerank"):   # the adapted encoder without the LM stages
            rows[f"{stage}, adapted encoder"] = retrieval_stage(tuned, items, dataclasses.replace(full, **STAGES[stage]),
                                                                desc=f"{stage} adapted")
    print(f"\n{args.corpus}: {result['answerable']} answerable questions of {len(items)}; {describe()}")
    print("| retrieval | hit@1 | hit@5 | hit@10 | ms/query |\n|---|---:|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['hit@10']:.3f} | {m['ms_per_query']:.0f} |")
    if args.answers:
        # Both answerers read the same passages (the tuned store's retrieval, when there is one),
        # so the rows differ in the answerer alone.
        a = tuned or base
        who = {"base SmolLM2": (a, a.helper)}
        if tuned is not None:
            who["tuned answerer"] = (tuned, tuned.engine)
        prepared = prepare_all(a, items)
        result["answers"] = {name: answer_eval(a, items, engine=e, prepared=prepared) for name, (a, e) in who.items()}
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print("\n| answerer | correct | citation precision | cites | abstention | false abstention |\n"
              "|---|---:|---:|---:|---:|---:|")
        for name, a in result["answers"].items():
            s = a["summary"]
            print(f"| {name} | {fmt(s['correct'])} | {fmt(s['citation_precision'])} | {fmt(s['cites'])} | "
                  f"{fmt(s['abstention'])} | {fmt(s['false_abstention'])} |")
    print(f"\n({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
