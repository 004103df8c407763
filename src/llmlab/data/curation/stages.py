"""The per-document stages applied to one batch, with their bookkeeping.

Each stage is a small function elsewhere (normalize.py, quality.py, ...); this module runs them
in the recipe's order over a batch and records, per stage, documents in/out, removals by
reason, modified documents, a few removed examples, and histograms of the quality metrics
(kept vs removed) that `llmlab data report` plots. Stats objects merge by addition, so shards
processed by different workers combine into the same totals in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmlab.data.curation.decontam import Decontaminator
from llmlab.data.curation.langid import langid_reason
from llmlab.data.curation.normalize import normalize_text
from llmlab.data.curation.pii import scrub_pii
from llmlab.data.curation.quality import c4_line_filter, quality_metrics, quality_reason
from llmlab.data.curation.repetition import repetition_reason

EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 400
# Fixed histogram bins, so histograms from different shards add up.
HIST_EDGES: dict[str, list[float]] = {
    "words": [0.0] + [float(2 ** k) for k in range(0, 21)],
    "mean_word_length": [x / 2 for x in range(0, 31)],
    "terminal_punct_line_fraction": [x / 20 for x in range(0, 21)],
    "alpha_word_fraction": [x / 20 for x in range(0, 21)],
}
# Document order of the stages; dedup stages run globally after these.
DOC_STAGES = ("normalize", "c4_lines", "langid", "quality", "repetition", "decontam", "pii")


@dataclass
class StageStats:
    docs_in: int = 0
    docs_out: int = 0
    modified: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    details: dict[str, int] = field(default_factory=dict)
    log: list[dict] | None = None  # when set, every removal is appended as {id, source, reason}

    def remove(self, doc: dict, reason: str) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        if self.log is not None:
            self.log.append({"id": doc["id"], "source": doc["source"], "reason": reason})
        ex = self.examples.setdefault(reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append({"id": doc["id"], "source": doc["source"], "text": doc["text"][:EXAMPLE_CHARS]})

    def merge(self, other: dict) -> None:
        self.docs_in += other["docs_in"]
        self.docs_out += other["docs_out"]
        self.modified += other["modified"]
        for name in ("removed", "details"):
            mine = getattr(self, name)
            for k, v in other[name].items():
                mine[k] = mine.get(k, 0) + v
        for reason, ex in other["examples"].items():
            mine_ex = self.examples.setdefault(reason, [])
            mine_ex += ex[:EXAMPLES_PER_REASON - len(mine_ex)]

    def to_dict(self) -> dict:
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "modified": self.modified,
                "removed": dict(sorted(self.removed.items())), "details": dict(sorted(self.details.items())),
                "examples": {k: self.examples[k] for k in sorted(self.examples)}}


def empty_histograms() -> dict[str, dict[str, list[int]]]:
    return {name: {"kept": [0] * (len(e) - 1), "removed": [0] * (len(e) - 1)} for name, e in HIST_EDGES.items()}


def _add_hist(hist: dict, metrics: dict[str, float], kept: bool) -> None:
    for name, edges in HIST_EDGES.items():
        i = int(np.clip(np.searchsorted(edges, metrics[name], side="right") - 1, 0, len(edges) - 2))
        hist[name]["kept" if kept else "removed"][i] += 1


def merge_histograms(total: dict, other: dict) -> None:
    for name, parts in other.items():
        for part, counts in parts.items():
            total[name][part] = [a + b for a, b in zip(total[name][part], counts)]


def apply_doc_stages(docs: list[dict], cfg, stats: dict[str, StageStats], hist: dict,
                     decontaminator: Decontaminator | None) -> list[dict]:
    """Run the enabled per-document stages of `cfg` (a PipelineConfig) over `docs`, in order."""
    def run(name: str, enabled: bool, fn) -> None:
        nonlocal docs
        st = stats[name]
        st.docs_in += len(docs)
        if enabled:
            docs = [d for d in docs if fn(d, st)]
        st.docs_out += len(docs)

    def normalize(d: dict, st: StageStats) -> bool:
        new = normalize_text(d["text"], cfg.normalize.fix_encoding)
        st.modified += new != d["text"]
        d["text"] = new
        return True

    def c4_lines(d: dict, st: StageStats) -> bool:
        new, removed_lines = c4_line_filter(d["text"], cfg.quality)
        if removed_lines:
            st.modified += 1
            st.details["lines_removed"] = st.details.get("lines_removed", 0) + removed_lines
            d["text"] = new
        return True

    def langid(d: dict, st: StageStats) -> bool:
        reason, lang, prob = langid_reason(d["text"], cfg.langid.languages, cfg.langid.threshold)
        d["language"], d["language_score"] = lang, round(prob, 4)
        if reason:
            st.remove(d, reason)
        return reason is None

    def quality(d: dict, st: StageStats) -> bool:
        metrics = quality_metrics(d["text"])
        reason = quality_reason(d["text"], cfg.quality, metrics)
        _add_hist(hist, metrics, reason is None)
        if reason:
            st.remove(d, reason)
        return reason is None

    def repetition(d: dict, st: StageStats) -> bool:
        reason = repetition_reason(d["text"], cfg.repetition)
        if reason:
            st.remove(d, reason)
        return reason is None

    def decontam(d: dict, st: StageStats) -> bool:
        if decontaminator is not None and decontaminator.contaminated(d["text"]):
            st.remove(d, f"decontam:{decontaminator.n}gram_overlap")
            return False
        return True

    def pii(d: dict, st: StageStats) -> bool:
        new, counts = scrub_pii(d["text"], cfg.pii)
        if new != d["text"]:
            st.modified += 1
            for k, v in counts.items():
                st.details[k] = st.details.get(k, 0) + v
            d["text"] = new
        return True

    run("normalize", cfg.normalize.enabled, normalize)
    run("c4_lines", cfg.quality.enabled, c4_lines)
    run("langid", cfg.langid.enabled, langid)
    run("quality", cfg.quality.enabled, quality)
    run("repetition", cfg.repetition.enabled, repetition)
    run("decontam", cfg.decontam.enabled and decontaminator is not None, decontam)
    run("pii", cfg.pii.enabled, pii)
    return docs
