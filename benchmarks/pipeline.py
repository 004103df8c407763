"""Curation pipeline throughput: llmlab's recipe vs the same filters through `datatrove`, one run.

    python benchmarks/pipeline.py            # ~6,000 documents (Shakespeare, Python docs, planted junk)
    python benchmarks/pipeline.py --quick    # ~1,500

Rows (all one worker process, documents/s = documents read / wall time, one core):
  - llmlab web-basic: the full default recipe (normalise, C4 lines, langid, Gopher quality and
    repetition, PII, exact dedup, MinHash near-dedup), JSONL in -> JSONL out;
  - llmlab filters only: the stages datatrove also has (Gopher quality + repetition, C4, PII),
    langid and dedup off;
  - datatrove 0.10.1: JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter ->
    C4QualityFilter -> PIIFormatter -> JsonlWriter, LocalPipelineExecutor(tasks=1).
    datatrove's language filter needs a fastText model download (no network here) and its
    MinHash dedup is four separate pipeline runs, so they are not in its row;
  - datatrove again with its Gopher alphabetic-words rule off (max_non_alpha_words_ratio=None):
    that rule counts spaCy tokens, punctuation included, and is where most of the kept documents
    differ (printed below the table).
Every pipeline first runs once on 100 warm-up documents, outside the timed region, so one-time
costs (imports, loading spaCy's English tokenizer for datatrove, printed separately) are not in
the rows. The filters are not the same rules, so the kept counts differ: the script prints the
overlap of the kept sets and each side's removal reasons.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

from llmlab.core.assets import pydocs_topics
from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.pipeline import config_from_mapping, recipe_config
from llmlab.data.shakespeare import shakespeare_text

JUNK = ["Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 8,
        "\n".join(f"• Cheap item {i}, buy now, free shipping" for i in range(40)),
        "Click here to subscribe to our newsletter!",
        "Buy cheap watches now and save the money. " * 30]


def build_input(directory: Path, n_docs: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    words = shakespeare_text().split()
    prose = [" ".join(words[i:i + 200]) + "." for i in range(0, len(words) - 200, 200)]
    prose += [t for t in pydocs_topics().values()]
    docs = []
    for i in range(n_docs):
        r = rng.random()
        if r < 0.1:
            text = rng.choice(JUNK)
        elif r < 0.2 and docs:
            text = rng.choice(docs)["text"]  # exact copy
        elif r < 0.25:
            text = rng.choice(prose) + f" Contact me at user{i}@example.com or 555-123-{i % 10000:04d}."
        else:
            text = rng.choice(prose)
        docs.append({"id": f"doc-{i:06d}", "text": text, "source": "bench"})
    directory.mkdir(parents=True, exist_ok=True)
    per_file = (n_docs + 3) // 4
    for f in range(4):
        with gzip.open(directory / f"in-{f}.jsonl.gz", "wt", encoding="utf-8") as out:
            for d in docs[f * per_file:(f + 1) * per_file]:
                out.write(json.dumps(d) + "\n")
    return len(docs)


def _kept_ids(out: Path) -> set[str]:
    return {json.loads(line)["id"] for p in out.glob("*.jsonl.gz") for line in gzip.open(p, "rt")}


def run_llmlab(inp: Path, out: Path, filters_only: bool) -> tuple[float, set[str], dict[str, int]]:
    """(seconds, kept ids, {removal reason: count})."""
    if filters_only:
        cfg = config_from_mapping({"input": {"paths": [str(inp)]}, "output": {"dir": str(out)},
                                   "langid": {"enabled": False}, "exact_dedup": {"enabled": False},
                                   "minhash": {"enabled": False}, "decontam": {"enabled": False}})
    else:
        cfg = recipe_config("web-basic", [str(inp)], str(out))
    t0 = time.perf_counter()
    stats = run_pipeline(cfg)
    seconds = time.perf_counter() - t0
    reasons: dict[str, int] = {}
    for stage in stats["stages"].values():
        for reason, count in stage["removed"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    kept = _kept_ids(out)
    assert len(kept) == stats["docs_out"]
    return seconds, kept, reasons


def load_datatrove_tokenizer() -> float:
    """Seconds to load the spaCy English word tokenizer datatrove's Gopher filters use (cached per
    process by datatrove, so the timed runs after this do not pay it)."""
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    t0 = time.perf_counter()
    load_word_tokenizer("en").word_tokenize("Warm up the tokenizer.")
    return time.perf_counter() - t0


def run_datatrove(inp: Path, out: Path, alpha_rule: bool = True) -> tuple[float, set[str], dict[str, int]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    quality = GopherQualityFilter() if alpha_rule else GopherQualityFilter(max_non_alpha_words_ratio=None)
    executor = LocalPipelineExecutor(
        pipeline=[JsonlReader(str(inp), glob_pattern="*.jsonl.gz"), GopherRepetitionFilter(), quality,
                  C4QualityFilter(filter_no_terminal_punct=False), PIIFormatter(), JsonlWriter(str(out))],
        tasks=1, workers=1, logging_dir=str(out / "logs"))
    t0 = time.perf_counter()
    executor.run()
    seconds = time.perf_counter() - t0
    reasons: dict[str, int] = {}
    for step in json.loads((out / "logs" / "stats.json").read_text()):
        for key, value in step.get("stats", {}).items():
            if key.startswith("dropped_"):
                count = value["total"] if isinstance(value, dict) else value
                reasons[key[len("dropped_"):]] = reasons.get(key[len("dropped_"):], 0) + int(count)
    return seconds, _kept_ids(out), reasons


def eval_runs(runs: list[Path], datasets: list[Path], windows: int = 200, seed: int = 0) -> None:
    """Loss of each trained run on the same val windows of each token dataset (docs/05's table)."""
    import torch

    from llmlab.data.tokens import TokenDataset
    from llmlab.infer.engine import load_model

    torch.set_num_threads(2)
    print("| run \\ val split of | " + " | ".join(d.name for d in datasets) + " |")
    print("|---|" + "---:|" * len(datasets))
    models = [(r, load_model(r)[0].eval()) for r in runs]
    for run, model in models:
        cells = []
        for d in datasets:
            ds = TokenDataset.open(d)
            g = torch.Generator().manual_seed(seed)
            batch = ds.get_batch("val", windows, model.config.block_size, g)
            x, y = batch["input_ids"], batch["labels"]
            with torch.no_grad():
                loss = sum(float(model(x[i:i + 50], y[i:i + 50])["loss"]) for i in range(0, windows, 50)) / (windows // 50)
            cells.append(f"{loss:.4f}")
        print(f"| {run.name} | " + " | ".join(cells) + " |")


def write_heldout(curated: Path, out: Path, val_fraction: float = 0.05) -> tuple[int, int]:
    """The curated validation documents that have no exact or near copy in the *raw* training
    split (copies carry other ids, so the id-hash split puts many of them in raw train), as one
    JSONL part in `out`. Returns (curated val documents, documents written)."""
    import gzip
    import json

    from llmlab.data.curation.tokenize import is_val

    kept = {}
    for part in sorted(curated.glob("part-*.jsonl*")):
        with (gzip.open(part, "rt") if part.suffix == ".gz" else open(part)) as f:
            kept.update((d["id"], d) for d in map(json.loads, f))
    val = {i for i in kept if is_val(i, val_fraction)}
    copied = set()
    for log in (curated / "removed").glob("part-*.jsonl"):
        for r in map(json.loads, log.read_text().splitlines()):
            if r.get("duplicate_of") in val and not is_val(r["id"], val_fraction):
                copied.add(r["duplicate_of"])
    out.mkdir(parents=True, exist_ok=True)
    clean = [kept[i] for i in sorted(val - copied)]
    (out / "part-00000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in clean))
    return len(val), len(clean)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write-input", type=Path, help="only write the benchmark input here (for docs/05 training runs)")
    ap.add_argument("--eval-runs", type=Path, nargs="+", help="with --eval-data: cross-evaluate trained runs")
    ap.add_argument("--eval-data", type=Path, nargs="+", help="token datasets whose val splits to evaluate on")
    ap.add_argument("--write-heldout", type=Path, nargs=2, metavar=("CURATED", "OUT"),
                    help="write the curated val documents with no copy in raw train to OUT (JSONL), then stop")
    args = ap.parse_args()
    n = 1500 if args.quick else 6000
    if args.eval_runs:
        eval_runs(args.eval_runs, args.eval_data)
        return 0
    if args.write_heldout:
        n_val, n_clean = write_heldout(*args.write_heldout)
        print(f"{n_clean} of {n_val} curated val documents have no copy in raw train -> {args.write_heldout[1]}")
        return 0
    if args.write_input:
        print(f"{build_input(args.write_input, n)} documents -> {args.write_input}")
        return 0
    print(describe())
    # the peer; its Gopher/C4 filters also need spacy (word and sentence splits) and orjson (reader)
    missing = [m for m in ("datatrove", "spacy", "orjson") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"the peer needs {', '.join(missing)}: .venv/bin/pip install datatrove==0.10.1 spacy orjson")
    tmp = Path(tempfile.mkdtemp(prefix="llmlab-pipeline-bench-"))
    try:
        n = build_input(tmp / "in", n)
        build_input(tmp / "warm", 100, seed=1)
        spacy_s = load_datatrove_tokenizer()
        for name, fn in (("ours-full", lambda i, o: run_llmlab(i, o, False)), ("ours-filters", lambda i, o: run_llmlab(i, o, True)),
                         ("datatrove", run_datatrove)):  # warm-up runs, not timed
            fn(tmp / "warm", tmp / f"warm-{name}")
        rows = [("llmlab web-basic (all stages incl. langid + dedup)", *run_llmlab(tmp / "in", tmp / "ours-full", False)),
                ("llmlab filters only (Gopher, C4, PII)", *run_llmlab(tmp / "in", tmp / "ours-filters", True)),
                ("datatrove 0.10.1 (Gopher, C4, PII)", *run_datatrove(tmp / "in", tmp / "datatrove")),
                ("datatrove 0.10.1, Gopher alphabetic-words rule off",
                 *run_datatrove(tmp / "in", tmp / "datatrove-noalpha", alpha_rule=False))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref = n / rows[2][1]
    print(f"{n} documents, 1 worker process; loading datatrove's spaCy tokenizer took {spacy_s:.2f} s, "
          "outside the timed runs\n")
    print("| pipeline | documents kept | seconds | documents/s per core | vs datatrove |")
    print("|---|---:|---:|---:|---:|")
    for name, t, kept, _ in rows:
        print(f"| {name} | {len(kept)} | {t:.2f} | {n / t:,.0f} | {n / t / ref:.2f}x |")
    ours = rows[1][2]
    print("\n| kept documents: llmlab filters only vs | kept by both | only llmlab | only datatrove |")
    print("|---|---:|---:|---:|")
    for name, _, kept, _ in rows[2:]:
        print(f"| {name} | {len(ours & kept)} | {len(ours - kept)} | {len(kept - ours)} |")
    print()
    for name, _, _, reasons in rows[1:]:
        print(f"removed by {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
