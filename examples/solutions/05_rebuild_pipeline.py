"""Chapter 5, exercise "rebuild the pipeline, then add a filter": the web-basic recipe written out as
a loop over the stage functions of llmlab.data.curation, checked against `run_pipeline` on
examples/raw/, then extended with a filter of our own.

    python examples/solutions/05_rebuild_pipeline.py

Checks: (1) the loop keeps exactly the documents `run_pipeline` keeps, with the same texts;
(2) a "shouting" filter (more than half of the letters upper-case) removes the upper-cased copy
c02 under its own reason, and every other decision stays the same.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from llmlab.data.curation.dedup_exact import dedup_key
from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.langid import langid_reason
from llmlab.data.curation.minhash import MinHashConfig, near_duplicates, shingle_hashes, signatures_from_hashes
from llmlab.data.curation.normalize import normalize_text
from llmlab.data.curation.pii import scrub_pii
from llmlab.data.curation.pipeline import recipe_config
from llmlab.data.curation.quality import QualityConfig, c4_line_filter, quality_reason
from llmlab.data.curation.readers import InputErrors, list_inputs, read_file
from llmlab.data.curation.repetition import RepetitionConfig, repetition_reason

RAW = Path(__file__).resolve().parents[1] / "raw"


def shouting_reason(text: str) -> str | None:
    """Our own filter: a page that is mostly capital letters is shouting (or a re-typed copy)."""
    letters = [c for c in text if c.isalpha()]
    upper = sum(c.isupper() for c in letters) / max(1, len(letters))
    return "mine:shouting" if upper > 0.5 else None


def curate(paths: list[Path], extra_filters=()) -> tuple[dict[str, str], dict[str, str]]:
    """(kept id -> text, removed id -> reason): web-basic's stages, in its order."""
    quality, repetition, minhash = QualityConfig(), RepetitionConfig(), MinHashConfig()
    docs, removed = [], {}
    for path in list_inputs(paths):
        docs += read_file(path, InputErrors())
    survivors = []
    for d in docs:
        text = normalize_text(d["text"])
        text, _ = c4_line_filter(text, quality)             # cut javascript / cookie-policy lines
        reason, _, _ = langid_reason(text, ["en"], 0.5)
        reason = reason or quality_reason(text, quality)
        for f in extra_filters:
            reason = reason or f(text)
        reason = reason or repetition_reason(text, repetition)
        if reason:
            removed[d["id"]] = reason
            continue
        text, _ = scrub_pii(text)                             # PII goes before dedup: see b10/b11
        survivors.append({"id": d["id"], "text": text})
    first_with_key: dict[bytes, str] = {}                    # exact dedup: first in corpus order wins
    unique = []
    for d in survivors:
        key = dedup_key(d["text"])
        if key in first_with_key:
            removed[d["id"]] = "exact_duplicate"
        else:
            first_with_key[key] = d["id"]
            unique.append(d)
    hashes = [shingle_hashes(d["text"], minhash.shingle_size) for d in unique]
    keep, _, _ = near_duplicates(signatures_from_hashes(hashes, minhash), minhash,
                                 lambda idx: {int(i): hashes[i] for i in idx})
    for d, k in zip(unique, keep):
        if not k:
            removed[d["id"]] = "near_duplicate"
    return {d["id"]: d["text"] for d, k in zip(unique, keep) if k}, removed


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        cfg = recipe_config("web-basic", [str(RAW)], out)
        cfg.output.compression = "none"
        run_pipeline(cfg)
        reference = {d["id"]: d["text"] for p in sorted(Path(out).glob("part-*.jsonl"))
                     for d in map(json.loads, p.read_text(encoding="utf-8").splitlines())}
    kept, removed = curate([RAW])
    print(f"run_pipeline keeps {len(reference)} documents; the loop keeps {len(kept)}, removes {len(removed)}")
    same = kept == reference
    print(f"(1) same documents and texts as run_pipeline: {same}")
    kept2, removed2 = curate([RAW], extra_filters=[shouting_reason])
    changed = {i: (removed.get(i, "kept"), removed2.get(i, "kept")) for i in set(removed) | set(removed2)
               if removed.get(i) != removed2.get(i)}
    print(f"(2) with the shouting filter, changed decisions: {changed}")
    ok = same and changed == {"c02": ("exact_duplicate", "mine:shouting")} and kept2 == kept
    print("ok" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
