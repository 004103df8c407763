"""Where the paraphrase ceiling of first-stage retrieval is, on the pydocs question set (or yours).

    python benchmarks/assistant_ceiling.py --store kb/                               # depth + variants
    python benchmarks/assistant_ceiling.py --store kb/ --questions-from runs/kb-tune/questions.jsonl

Two questions behind the assistant's ablation (benchmarks/assistant.py):

1. How deep is the answering chunk? For each paraphrased question, the rank of the first chunk
   holding its gold sentence under dense (MiniLM), BM25, and the better of the two. hit@50 of the
   union bounds what any reranker over 50 candidates could reach; hit@10 bounds the assistant's
   reranker, which reads 10. A looser row counts a chunk whose parent section (what the answerer
   is handed) holds the gold sentence.
2. Do other representations of the same chunks move hit@5? Each costs nothing at query time
   beyond one more matrix product:
   - paragraph / sentence vectors: every paragraph (sentence) of a chunk embedded on its own, with
     its heading line, and a chunk scored by a mix of its own cosine and its best piece's;
   - parent vectors: the chunk's parent section embedded too;
   - doc2query (Nogueira et al. 2019; "hypothetical questions"): the synthetic questions that
     `llmlab assistant tune` wrote for each chunk, embedded, and a chunk scored by the best of its
     own cosine and its questions' (and the questions appended to its BM25 text).

3. Could the relevance gate alone abstain? The gate compares the best cosine between the question
   and its top-k hybrid chunks with a threshold. For thresholds from 0.2 up: the share of the
   unanswerable questions it stops (abstention) and of the answerable ones (false abstention).

Everything is computed exactly over the whole store (numpy, no ANN), with the store's encoder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = (1, 5, 10, 20, 50, 100)


def rank_of_gold(scores: np.ndarray, gold: set[int]) -> int:
    """0-based rank of the best-ranked gold chunk (a huge number when there is none)."""
    if not gold:
        return 10**9
    order = np.argsort(-scores, kind="stable")
    return int(np.flatnonzero(np.isin(order, list(gold)))[0])


def pieces(text: str, how: str) -> list[str]:
    """A chunk's paragraphs or sentences, each with the chunk's heading line in front."""
    head, _, body = text.partition("\n")
    if not body or head.startswith(" "):
        head, body = "", text
    if how == "paragraph":
        parts = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
    else:
        parts = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(body.split())) if len(s.split()) >= 4]
    return [f"{head}\n{p}" if head else p for p in parts] or [text]


def best_of(rows: np.ndarray, sims: np.ndarray, n: int) -> np.ndarray:
    """Per chunk, the highest similarity among its pieces (-1 where it has none)."""
    out = np.full(n, -1.0)
    np.maximum.at(out, rows, sims)
    return out


def minmax(s: np.ndarray) -> np.ndarray:
    return (s - s.min()) / (s.max() - s.min() + 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="the store the questions are about (e.g. `llmlab assistant index --builtin pydocs`)")
    ap.add_argument("--questions", type=Path, default=ROOT / "examples" / "assistant" / "pydocs_questions.jsonl",
                    help="question JSONL, as `llmlab assistant eval --qa` reads it (default: the pydocs set)")
    ap.add_argument("--questions-from", type=Path, help="questions.jsonl of an `llmlab assistant tune` run: adds the doc2query rows")
    ap.add_argument("--alpha", type=float, default=0.7, help="dense weight of the hybrid rows (the assistant's default)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    from llmlab.assistant.evaluate import load_questions, passage_hit
    from llmlab.rag.bm25 import BM25
    from llmlab.rag.store import Retriever, Store, store_embedder
    from llmlab.rag.synth import read_jsonl

    store = Store(args.store)
    embedder = store_embedder(store)
    retriever = Retriever(store, embedder)
    chunks, n = retriever.chunks, len(retriever.chunks)
    items = [it for it in load_questions(args.questions) if it["answerable"]]
    gold = [{i for i, c in enumerate(chunks) if passage_hit(c, it)} for it in items]
    queries = embedder.embed([it["question"] for it in items])
    chunk_vecs = retriever.exact.vectors

    def bm25_scores(index: BM25, question: str) -> np.ndarray:
        idx, sc = index.search(question, n)
        out = np.zeros(n)
        out[idx] = sc
        return out

    dense = [chunk_vecs @ q for q in queries]
    sparse = [bm25_scores(retriever.bm25, it["question"]) for it in items]
    rows: dict[str, list[int]] = {}
    rows["dense"] = [rank_of_gold(s, g) for s, g in zip(dense, gold)]
    rows["BM25"] = [rank_of_gold(s, g) for s, g in zip(sparse, gold)]
    rows["better of dense and BM25 (oracle)"] = [min(a, b) for a, b in zip(rows["dense"], rows["BM25"])]
    hybrid = lambda d, s: args.alpha * minmax(d) + (1 - args.alpha) * minmax(s)  # noqa: E731
    rows[f"hybrid (alpha {args.alpha})"] = [rank_of_gold(hybrid(d, s), g) for d, s, g in zip(dense, sparse, gold)]
    # What the answerer reads is the chunk's parent section: count a hit when that holds the answer.
    in_parent = [{i for i, c in enumerate(chunks) if passage_hit(dict(c, text=c["window"] or c["text"]), it)} for it in items]
    rows["hybrid, answer in the parent section"] = [rank_of_gold(hybrid(d, s), g) for d, s, g in zip(dense, sparse, in_parent)]

    for how in ("paragraph", "sentence"):
        owner, texts = [], []
        for i, c in enumerate(chunks):
            for p in pieces(c["text"], how):
                owner.append(i)
                texts.append(p)
        vecs, owner = embedder.embed(texts), np.array(owner)
        for w in (0.5,):
            mixed = [w * d + (1 - w) * best_of(owner, vecs @ q, n) for d, q in zip(dense, queries)]
            rows[f"dense: chunk + best {how} ({len(texts)} vectors)"] = [rank_of_gold(m, g) for m, g in zip(mixed, gold)]
            rows[f"hybrid: chunk + best {how}"] = [rank_of_gold(hybrid(m, s), g) for m, s, g in zip(mixed, sparse, gold)]
    parents = embedder.embed([c["window"] or c["text"] for c in chunks])
    mixed = [0.5 * d + 0.5 * (parents @ q) for d, q in zip(dense, queries)]
    rows["dense: chunk + parent section"] = [rank_of_gold(m, g) for m, g in zip(mixed, gold)]

    if args.questions_from:
        synthetic = [r for r in read_jsonl(args.questions_from) if r.get("question") and r["chunk_id"] in retriever.row_of]
        owner = np.array([retriever.row_of[r["chunk_id"]] for r in synthetic])
        vecs = embedder.embed([r["question"] for r in synthetic])
        extra: dict[int, list[str]] = {}
        for r in synthetic:
            extra.setdefault(retriever.row_of[r["chunk_id"]], []).append(r["question"])
        bm25_aug = BM25(stemming=True).fit([c["text"] + "\n" + " ".join(extra.get(i, [])) for i, c in enumerate(chunks)])
        best = [np.maximum(d, best_of(owner, vecs @ q, n)) for d, q in zip(dense, queries)]
        rows[f"dense: doc2query ({len(synthetic)} questions)"] = [rank_of_gold(b, g) for b, g in zip(best, gold)]
        rows["hybrid: doc2query (dense and BM25)"] = [
            rank_of_gold(hybrid(b, bm25_scores(bm25_aug, it["question"])), g) for b, it, g in zip(best, items, gold)]

    print(f"\n{args.questions.name}: {len(items)} answerable questions, {n} chunks; {describe()}")
    print("| ranking | " + " | ".join(f"hit@{k}" for k in DEPTHS) + " |\n|---|" + "---:|" * len(DEPTHS))
    result = {"machine": describe(), "questions": len(items), "chunks": n, "rows": {}}
    for name, ranks in rows.items():
        r = np.array(ranks)
        hits = {f"hit@{k}": float((r < k).mean()) for k in DEPTHS}
        result["rows"][name] = hits
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in hits.values()) + " |")
    worst = sorted(range(len(items)), key=lambda i: -rows["dense"][i])[:5]
    # 3. the gate: best cosine among the top-k hybrid chunks, answerable vs unanswerable questions
    every = load_questions(args.questions)
    every_vecs = embedder.embed([it["question"] for it in every])
    support = []
    for it, q in zip(every, every_vecs):
        d = chunk_vecs @ q
        top = np.argsort(-hybrid(d, bm25_scores(retriever.bm25, it["question"])))[:4]
        support.append(float(d[top].max()))
    support, answerable = np.array(support), np.array([it["answerable"] for it in every])
    print("\n| gate threshold | abstention (unanswerable) | false abstention (answerable) |\n|---:|---:|---:|")
    result["gate"] = {}
    for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        stop = support < t
        result["gate"][t] = {"abstention": float(stop[~answerable].mean()), "false_abstention": float(stop[answerable].mean())}
        print(f"| {t:.1f} | {stop[~answerable].mean():.3f} | {stop[answerable].mean():.3f} |")
    print("\nDeepest answers under dense (question -> rank; what ranked first):")
    for i in worst:
        top = chunks[int(np.argmax(dense[i]))]
        print(f"  {items[i]['question']}\n     dense rank {rows['dense'][i] + 1}, BM25 rank {rows['BM25'][i] + 1}; "
              f"first: {top['source']} § {top['section'] or '-'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from llmlab.core.errors import LLMLabError

    try:
        main()
    except LLMLabError as e:   # bad input: the message says what to fix, no traceback
        sys.exit(f"error: {e}")
