"""Retrieval on SQuAD v1.1 dev: dense (our MiniLM) vs BM25 (ours) vs hybrid, against the standard tools.

    .venv/bin/python benchmarks/rag_retrieval.py              # all 10,570 questions
    .venv/bin/python benchmarks/rag_retrieval.py --quick      # first 1,000 questions
    .venv/bin/python benchmarks/rag_retrieval.py --chunking   # + chunk size/overlap/method study (plot)

Corpus: the 2,067 paragraphs; queries: the questions; gold: the question's own paragraph. Peers in
the same run: sentence-transformers (same model, same 256-token truncation) for dense recall and
embedding throughput; bm25s for BM25 on the same tokenization. Embeddings are cached under
benchmarks/.cache/; throughput is always re-measured, on the same paragraphs for both encoders.

Rank lists are built as `Retriever.search` builds them: BM25 lists hold only documents with a
positive score (a document sharing no query term is not a hit), and hybrid fuses the top 100 of
each list, with the 101st score as weighted fusion's floor (`rag/hybrid.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _machine import describe

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"
IMG = ROOT / "docs" / "img"


def load_squad():
    if not SQUAD.is_file():
        sys.exit(f"{SQUAD} not found (the shared SQuAD dev set lives beside the checkout)")
    data = json.loads(SQUAD.read_text())["data"]
    paras, questions, gold, answers, article_of = [], [], [], [], []
    for a, article in enumerate(data):
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                questions.append(qa["question"])
                gold.append(len(paras))
                answers.append(qa["answers"][0]["text"])
            paras.append(p["context"])
            article_of.append(a)
    return data, paras, questions, np.array(gold), answers, np.array(article_of)


def cached(name: str, fn):
    path = CACHE / name
    if path.is_file():
        return np.load(path)
    v = fn()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, v)
    return v


def metrics_from_ranks(found: np.ndarray, gold: np.ndarray) -> dict:
    from llmlab.rag.evaluate import metrics

    rel = (found[:, :10] == gold[:, None]).tolist()
    return metrics(rel, [1, 5, 10])


def rank_lists(score_fn, n_queries: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores), each (n_queries, depth), best first; -1 / -inf pad a short list. Documents
    scoring 0 are left out, as `BM25.search` leaves them out."""
    from llmlab.rag.bm25 import top_k

    out = np.full((n_queries, depth), -1, dtype=np.int64)
    scores = np.full((n_queries, depth), -np.inf, dtype=np.float32)
    for i in range(n_queries):
        s = score_fn(i)
        idx = top_k(s, depth)
        idx = idx[s[idx] > 0]
        out[i, : len(idx)], scores[i, : len(idx)] = idx, s[idx]
    return out, scores


CANDIDATES = 100  # top-N of each list that hybrid fuses (RetrievalConfig.candidates)


def rrf(a: np.ndarray, b: np.ndarray, depth: int = 10, k: int = 60) -> np.ndarray:
    from llmlab.rag.hybrid import reciprocal_rank_fusion

    out = np.full((len(a), depth), -1, dtype=np.int64)
    for i in range(len(a)):
        fused = reciprocal_rank_fusion([[x for x in a[i, :CANDIDATES] if x >= 0], [x for x in b[i, :CANDIDATES] if x >= 0]],
                                       k=k, top=depth)
        out[i, : len(fused)] = [j for j, _ in fused]
    return out


def weighted(dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray], alpha: float,
             depth: int = 10, fusion=None) -> np.ndarray:
    """Weighted score fusion (alpha on dense) of two (ids, scores) rank lists of CANDIDATES + 1 entries."""
    from llmlab.rag.hybrid import weighted_fusion

    out = np.full((len(dense[0]), depth), -1, dtype=np.int64)
    for i in range(len(out)):
        pairs = [[(int(j), float(v)) for j, v in zip(ids[i], sc[i]) if j >= 0] for ids, sc in (dense, sparse)]
        if fusion is None:
            fused = weighted_fusion(pairs[0], pairs[1], alpha, top=depth, candidates=CANDIDATES)
        else:
            fused = fusion(pairs[0][:CANDIDATES], pairs[1][:CANDIDATES], alpha, top=depth)
        out[i, : len(fused)] = [j for j, _ in fused]
    return out


def minmax_lowest_is_absent(dense, sparse, alpha, top):
    """The weighted fusion llmlab had before: plain min-max per list, so a list's lowest hit (and
    a single-hit list's only hit) scored 0, like an absent item. Kept here to measure the fix."""
    def minmax(pairs):
        if not pairs:
            return {}
        lo, hi = min(s for _, s in pairs), max(s for _, s in pairs)
        span = hi - lo if hi > lo else 1.0
        return {i: (s - lo) / span for i, s in pairs}

    d, s = minmax(dense), minmax(sparse)
    fused = {i: alpha * d.get(i, 0.0) + (1 - alpha) * s.get(i, 0.0) for i in set(d) | set(s)}
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def rare_terms(dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray], gold: np.ndarray) -> None:
    """The questions where weighted fusion's normalisation matters: BM25 (stemmed) lists shorter
    than the 100 candidates, i.e. queries whose terms occur in few paragraphs."""
    hits = (sparse[0][:, :CANDIDATES] >= 0).sum(1)
    groups = [(f"BM25 list < {CANDIDATES} hits", hits < CANDIDATES), ("BM25 list <= 5 hits", hits <= 5),
              ("BM25 list = 1 hit", hits == 1)]
    print("\nQuestions with few BM25 hits (all questions, dense + bm25 stemmed), recall@1 / recall@5:\n")
    print("| retriever | " + " | ".join(f"{name} ({mask.sum():,} q.)" for name, mask in groups) + " |")
    print("|---|" + "---:|" * len(groups))
    runs = (("dense alone", dense[0][:, :10]), ("bm25 alone", sparse[0][:, :10]), ("RRF k=60", rrf(dense[0], sparse[0])),
            ("weighted, alpha=0.5, floor-anchored (now)", weighted(dense, sparse, 0.5)),
            ("weighted, alpha=0.5, plain min-max (before)", weighted(dense, sparse, 0.5, fusion=minmax_lowest_is_absent)))
    for name, found in runs:
        cells = []
        for _, mask in groups:
            m = metrics_from_ranks(found[mask], gold[mask])
            cells.append(f"{m['recall@1']:.3f} / {m['recall@5']:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def fusion_study(dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray], gold: np.ndarray) -> None:
    """RRF vs weighted score fusion with alpha chosen on the even-numbered questions (by recall@5)
    and both reported on the odd-numbered ones, so the tuned weight is not scored on its own data."""
    tune, test = np.arange(0, len(gold), 2), np.arange(1, len(gold), 2)
    half = lambda pair, rows: (pair[0][rows], pair[1][rows])  # noqa: E731
    grid = [round(a, 2) for a in np.arange(0.1, 0.95, 0.05)]
    tuned = {a: metrics_from_ranks(weighted(half(dense, tune), half(sparse, tune), a), gold[tune])["recall@5"]
             for a in grid}
    best = max(grid, key=lambda a: (tuned[a], -abs(a - 0.5)))
    print(f"\nFusion on the held-out odd half ({len(test):,} questions); alpha tuned on the even half "
          f"(recall@5 there: " + ", ".join(f"{a}: {tuned[a]:.3f}" for a in grid[::2]) + ")\n")
    cols = ["recall@1", "recall@5", "recall@10", "mrr@10"]
    print("| fusion (dense + bm25 stemmed) | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for name, found in (("RRF k=60", rrf(dense[0][test], sparse[0][test])),
                        (f"weighted, alpha={best} (tuned)", weighted(half(dense, test), half(sparse, test), best)),
                        ("weighted, alpha=0.5 (default)", weighted(half(dense, test), half(sparse, test), 0.5)),
                        ("weighted, alpha=0.5, plain min-max (lowest hit = absent; before the fix)",
                         weighted(half(dense, test), half(sparse, test), 0.5, fusion=minmax_lowest_is_absent)),
                        ("dense alone", dense[0][test][:, :10]), ("bm25 alone", sparse[0][test][:, :10])):
        m = metrics_from_ranks(found, gold[test])
        print(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first 1,000 questions, 128-paragraph throughput sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunking", action="store_true", help="also run the chunking study (see chunk_study)")
    ap.add_argument("--chunk-articles", type=int, default=8, help="articles used by the chunking study")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)
    print(describe(threads=args.threads))

    from sentence_transformers import SentenceTransformer

    from llmlab.core.assets import minilm_dir
    from llmlab.rag.bm25 import BM25, tokenize
    from llmlab.rag.embed import Embedder
    from llmlab.rag.index_exact import ExactIndex

    data, paras, questions, gold, answers, article_of = load_squad()
    nq = 1000 if args.quick else len(questions)
    questions, gold = questions[:nq], gold[:nq]
    ours = Embedder(batch_size=32)
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.max_seq_length = 256

    # throughput: same paragraphs, same batch size, same threads, in this run (ours first, then theirs)
    sample = paras[: 128 if args.quick else 512]
    ours._cache.clear()
    t = time.perf_counter()
    ours.embed(sample)
    ours_rate = len(sample) / (time.perf_counter() - t)
    ours._cache.clear()
    t = time.perf_counter()
    st.encode(sample, batch_size=32, normalize_embeddings=True)
    st_rate = len(sample) / (time.perf_counter() - t)

    p_ours = cached("squad-paras-ours.npy", lambda: ours.embed(paras, show_progress=True))
    q_ours = cached(f"squad-questions-ours-{nq}.npy", lambda: ours.embed(questions, show_progress=True))
    p_st = cached("squad-paras-st.npy", lambda: st.encode(paras, batch_size=32, normalize_embeddings=True))
    q_st = cached(f"squad-questions-st-{nq}.npy", lambda: st.encode(questions, batch_size=32, normalize_embeddings=True))
    cos = float(np.min((p_ours * p_st).sum(1)))

    depth = CANDIDATES + 1  # the 101st score is weighted fusion's floor
    dense_ours, dense_scores = ExactIndex(p_ours).search_batch(q_ours, depth)
    dense_st, _ = ExactIndex(p_st).search_batch(q_st, depth)
    rows = {"dense: llmlab MiniLM": metrics_from_ranks(dense_ours, gold),
            "dense: sentence-transformers": metrics_from_ranks(dense_st, gold)}

    import bm25s

    sparse, sparse_scores = {}, {}
    for stem in (False, True):
        label = "stemmed" if stem else "plain"
        docs = [tokenize(p, stemming=stem, stopwords=True) for p in paras]
        qtok = [tokenize(q, stemming=stem, stopwords=True) for q in questions]
        bm = BM25(k1=1.5, b=0.75).fit_tokens(docs)
        t = time.perf_counter()
        sparse[label], sparse_scores[label] = rank_lists(lambda i: bm.scores_tokens(qtok[i]), nq, depth)
        our_qps = nq / (time.perf_counter() - t)
        vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
        ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
        ref.index(bm25s.tokenization.Tokenized(ids=[[vocab[w] for w in d] for d in docs], vocab=vocab), show_progress=False)
        t = time.perf_counter()
        def ref_scores(i):  # bm25s cannot score an empty query (all stopwords / unseen words)
            known = [w for w in qtok[i] if w in vocab]
            return ref.get_scores(known) if known else np.zeros(len(docs), dtype=np.float32)

        ref_found, _ = rank_lists(ref_scores, nq, depth)
        ref_qps = nq / (time.perf_counter() - t)
        rows[f"bm25 {label}: llmlab"] = {**metrics_from_ranks(sparse[label], gold), "q/s": our_qps}
        rows[f"bm25 {label}: bm25s"] = {**metrics_from_ranks(ref_found, gold), "q/s": ref_qps}
    for label in ("plain", "stemmed"):
        rows[f"hybrid RRF (dense + bm25 {label})"] = metrics_from_ranks(rrf(dense_ours, sparse[label]), gold)
    for label in ("plain", "stemmed"):
        rows[f"hybrid weighted, alpha=0.5, the default (dense + bm25 {label})"] = metrics_from_ranks(
            weighted((dense_ours, dense_scores), (sparse[label], sparse_scores[label]), 0.5), gold)
    rows["hybrid weighted, alpha=0.5, plain min-max: lowest hit = absent, before the fix (dense + bm25 stemmed)"] = \
        metrics_from_ranks(weighted((dense_ours, dense_scores), (sparse["stemmed"], sparse_scores["stemmed"]), 0.5,
                                    fusion=minmax_lowest_is_absent), gold)

    short = (sparse["stemmed"][:, :CANDIDATES] >= 0).sum(1)
    print(f"\nSQuAD v1.1 dev: {len(paras):,} paragraphs, {nq:,} questions; dense = exact search; "
          f"hybrid = RRF k=60 or weighted score fusion over top-100 of each. Questions whose stemmed BM25 "
          f"list is shorter than 100 (rare terms): {(short < CANDIDATES).sum():,}; of at most 5: {(short <= 5).sum():,}; "
          f"a single hit: {(short == 1).sum():,}\n")
    cols = ["recall@1", "recall@5", "recall@10", "mrr@10"]
    print("| retriever | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    print(f"\n| embedding throughput (passages/s, {len(sample)} SQuAD paragraphs, batch 32, {args.threads} threads) | value |")
    print("|---|---:|")
    print(f"| llmlab MiniLM | {ours_rate:.1f} |\n| sentence-transformers | {st_rate:.1f} |\n"
          f"| ratio llmlab / sentence-transformers | {ours_rate / st_rate:.2f}x |")
    print(f"| min cosine(llmlab, sentence-transformers) over all paragraphs | {cos:.6f} |")
    for label in ("plain", "stemmed"):
        a, b = rows[f"bm25 {label}: llmlab"]["q/s"], rows[f"bm25 {label}: bm25s"]["q/s"]
        print(f"| BM25 {label} queries/s llmlab / bm25s (full score vector per query) | {a:,.0f} / {b:,.0f} = {a / b:.2f}x |")

    rare_terms((dense_ours, dense_scores), (sparse["stemmed"], sparse_scores["stemmed"]), gold)
    fusion_study((dense_ours, dense_scores), (sparse["stemmed"], sparse_scores["stemmed"]), gold)
    stemmed = (sparse["stemmed"], sparse_scores["stemmed"])
    recall_curve({"dense (MiniLM)": dense_ours, "BM25 (stemmed)": sparse["stemmed"],
                  "hybrid, RRF": rrf(dense_ours, sparse["stemmed"], depth=20),
                  "hybrid, weighted alpha=0.5 (default)": weighted((dense_ours, dense_scores), stemmed, 0.5, depth=20)},
                 gold)
    if args.chunking:
        chunk_study(data, ours, args.chunk_articles)
    return 0


def recall_curve(curves: dict[str, np.ndarray], gold: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(range(1, 21))
    plt.figure(figsize=(6, 4))
    for name, found in curves.items():
        hits = found[:, :20] == gold[:, None]
        plt.plot(ks, [hits[:, :k].any(1).mean() for k in ks], marker="o", ms=3, label=name)
    plt.xlabel("k (paragraphs retrieved)")
    plt.ylabel("recall@k")
    plt.title(f"SQuAD v1.1 dev, {len(gold):,} questions")
    plt.grid(alpha=0.3)
    plt.legend()
    IMG.mkdir(parents=True, exist_ok=True)
    plt.tight_layout()
    plt.savefig(IMG / "rag-recall-at-k.png", dpi=110)
    plt.close()


def chunk_study(data, ours, n_articles: int) -> None:
    """Articles as documents, chunked several ways; a hit = a chunk that contains the question's answer
    text and overlaps its source paragraph. Same questions, same encoder, only the chunking changes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmlab.rag.bm25 import BM25
    from llmlab.rag.chunking import chunk_document
    from llmlab.rag.index_exact import ExactIndex

    docs, qs = [], []  # qs: (question, doc index, para start, para end, answer)
    for article in data[:n_articles]:
        text = ""
        for p in article["paragraphs"]:
            start = len(text)
            text += p["context"] + "\n\n"
            for qa in p["qas"]:
                qs.append((qa["question"], len(docs), start, start + len(p["context"]), qa["answers"][0]["text"]))
        docs.append(text)
    qvec = ours.embed([q[0] for q in qs])
    configs = [("chars", 512, 0), ("fixed", 64, 0), ("fixed", 64, 16), ("fixed", 128, 0), ("fixed", 128, 32),
               ("fixed", 256, 0), ("fixed", 256, 64), ("recursive", 128, 0), ("recursive", 256, 0), ("sentence", 128, 0)]
    results = []
    for method, size, overlap in configs:
        chunks = [(d, c) for d, text in enumerate(docs)
                  for c in chunk_document(text, ours.count_tokens, method, size, overlap, window=2)]
        t = time.perf_counter()
        vecs = ours.embed([c.text for _, c in chunks])
        embed_s = time.perf_counter() - t
        bm = BM25(stemming=True, stopwords=True).fit([c.text for _, c in chunks])
        dense, _ = ExactIndex(vecs).search_batch(qvec, 100)
        from llmlab.rag.bm25 import top_k

        sparse = np.stack([np.pad(top_k(bm.scores(q[0]), 100), (0, max(0, 100 - len(chunks))), constant_values=-1)
                           for q in qs])
        hybrid = rrf(dense, sparse)

        def recall5(found):
            ok = 0
            for (question, d, ps, pe, ans), row in zip(qs, found):
                for j in row[:5]:
                    if j < 0:
                        continue
                    cd, c = chunks[j]
                    text = c.window or c.text if method == "sentence" else c.text
                    if cd == d and c.start < pe and ps < c.end and ans in text:
                        ok += 1
                        break
            return ok / len(qs)

        results.append(dict(method=method, size=size, overlap=overlap, chunks=len(chunks), embed_s=embed_s,
                            dense=recall5(dense), bm25=recall5(sparse), hybrid=recall5(hybrid)))
        print(f"  chunking {method}/{size}/{overlap}: {results[-1]}", file=sys.stderr)
    print(f"\nChunking study: {n_articles} SQuAD articles as documents, {len(qs):,} questions; hit@5 = a top-5 chunk "
          "contains the answer and overlaps its paragraph (sentence-window: the window contains it)\n")
    print("| chunking | size | overlap | chunks | embed s | dense R@5 | BM25 R@5 | hybrid R@5 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        unit = "chars" if r["method"] == "chars" else "tokens"
        print(f"| {r['method']} | {r['size']} {unit} | {r['overlap']} | {r['chunks']} | {r['embed_s']:.0f} | "
              f"{r['dense']:.3f} | {r['bm25']:.3f} | {r['hybrid']:.3f} |")
    plt.figure(figsize=(6.5, 4))
    for mode in ("dense", "bm25", "hybrid"):
        for overlap_frac, style in ((0, "-"), (0.25, "--")):
            pts = [(r["size"], r[mode]) for r in results if r["method"] == "fixed" and r["overlap"] == int(r["size"] * overlap_frac)]
            plt.plot(*zip(*pts), style, marker="o", label=f"{mode}, overlap {int(overlap_frac * 100)}%")
    plt.xscale("log", base=2)
    plt.xlabel("fixed chunk size (MiniLM tokens)")
    plt.ylabel("recall@5 (answer in a top-5 chunk)")
    plt.title(f"Chunk size and overlap ({len(qs):,} SQuAD questions)")
    plt.grid(alpha=0.3)
    plt.legend(fontsize=7)
    plt.tight_layout()
    plt.savefig(IMG / "rag-chunking.png", dpi=110)
    plt.close()


if __name__ == "__main__":
    sys.exit(main())
