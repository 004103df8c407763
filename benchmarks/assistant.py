"""The assistant's retrieval ablation and answer scores, on Python's docs (paraphrased questions)
and on SQuAD dev (questions written from the passage).

    python benchmarks/assistant.py --corpus pydocs                       # base store: every stage
    python benchmarks/assistant.py --corpus pydocs --tuned runs/kb-tuned-store --answers
    python benchmarks/assistant.py --corpus squad --limit 200

Each row adds one stage to the previous (dense, BM25, hybrid, + query expansion, + LM rerank);
"<stage>, adapted encoder" is that stage on a store that `llmlab assistant tune` re-embedded with
its fine-tuned MiniLM ("+ rerank, adapted encoder" is the whole stack). ms/query is the wall
time of retrieval alone (no answer), one question at a time, as a user meets it. The stores are
built here the first time (benchmarks/.cache/), with `llmlab assistant index`'s chunking; SQuAD's
2,067 dev paragraphs are one document each. --answers --gates 0.3,0.4 rescores the same answers
behind stricter relevance gates (exact: answers are greedy).
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--tuned-stages", help="the stages measured again on --tuned (default: --stages); "
                    "'+ rerank' there is the whole stack with the adapted encoder")
    ap.add_argument("--answers", action="store_true", help="also score answers: base model vs the tuned answerer")
    ap.add_argument("--gates", default="", help="with --answers: also score the same answers behind these stricter "
                    "relevance gates (comma-separated min_similarity values, e.g. 0.3,0.4)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    from llmlab.assistant.config import AssistantConfig
    from llmlab.assistant.evaluate import ablation, answer_eval, load_questions, prepare_all, regate
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
        tuned_stages = [s.strip() for s in (args.tuned_stages or args.stages).split(",") if s.strip()]
        for stage, m in ablation(tuned, items, tuned_stages).items():
            rows[f"{stage}, adapted encoder"] = m
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
        summaries = {f"{name}, gate {a.config.min_similarity}": r["summary"] for name, r in result["answers"].items()}
        for gate in [float(g) for g in args.gates.split(",") if g.strip()]:
            for name, r in result["answers"].items():   # the same answers behind a stricter gate
                summaries[f"{name}, gate {gate}"] = r[f"gate {gate}"] = regate(r["rows"], gate)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print("\n| answerer | correct | citation precision | cites | abstention | false abstention | "
              "answer in context | abstained on it |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, s in summaries.items():
            print(f"| {name} | {fmt(s['correct'])} | {fmt(s['citation_precision'])} | {fmt(s['cites'])} | "
                  f"{fmt(s['abstention'])} | {fmt(s['false_abstention'])} | {fmt(s['in_context'])} | "
                  f"{s['abstained_in_context']} |")
    print(f"\n({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    from llmlab.core.errors import LLMLabError

    try:
        main()
    except LLMLabError as e:   # bad input: the message says what to fix, no traceback
        sys.exit(f"error: {e}")
