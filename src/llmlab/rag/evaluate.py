"""Retrieval metrics over a QA file: recall@k, MRR@10, nDCG@10.

A QA line is {"question", "gold_doc"} (a hit is a chunk whose source path or file name equals
gold_doc) or {"question", "gold_text"} (a hit is a chunk whose whitespace-normalised text contains
the whitespace-normalised gold text). Lines with neither are skipped and counted.

recall@k  fraction of questions with at least one hit in the top k
MRR@10    mean of 1/rank of the first hit (0 if none in the top 10)
nDCG@10   binary gains, DCG = sum 1/log2(rank+1) over hits in the top 10, divided by the DCG of
          the same number of hits ranked first (Jarvelin & Kekalainen 2002); the total number of
          relevant chunks in a store is unknown, so the ideal is built from the hits found.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from llmlab.core.io import read_jsonl_lines


def normalise_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def load_qa(path: str | Path) -> tuple[list[dict], int]:
    """(usable items, number of skipped lines) from a JSONL file."""
    items, skipped = [], 0
    for _, obj in read_jsonl_lines(path, '{"question", "gold_doc" or "gold_text"} lines'):
        if not isinstance(obj, dict) or not obj.get("question") or not (obj.get("gold_doc") or obj.get("gold_text")):
            skipped += 1
            continue
        items.append(obj)
    return items, skipped


def is_hit(hit: dict, item: dict) -> bool:
    gold_doc = item.get("gold_doc")
    if gold_doc:
        source = hit["source"]
        if source == gold_doc or Path(source).name == gold_doc or source.endswith("/" + gold_doc.lstrip("/")):
            return True
    gold_text = item.get("gold_text")
    return bool(gold_text) and normalise_ws(gold_text) in normalise_ws(hit["text"])


def relevance(ranked: list[list[dict]], items: list[dict]) -> list[list[bool]]:
    return [[is_hit(h, item) for h in hits] for hits, item in zip(ranked, items)]


def metrics(rel: list[list[bool]], ks: list[int]) -> dict[str, float]:
    n = max(len(rel), 1)
    out = {f"recall@{k}": sum(any(r[:k]) for r in rel) / n for k in ks}
    mrr = ndcg = 0.0
    for r in rel:
        first = next((i for i, x in enumerate(r[:10]) if x), None)
        mrr += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(r[:10]) if x)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(sum(r[:10])))
        ndcg += dcg / ideal if ideal else 0.0
    out["mrr@10"] = mrr / n
    out["ndcg@10"] = ndcg / n
    return out
