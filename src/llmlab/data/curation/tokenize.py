"""Curated parts -> the trainer's token dataset (llmlab.data.tokens: meta.json + *.bin shards).

Documents are read from `llmlab data run`'s part files (part-NNNNN.jsonl.gz, .jsonl or .parquet)
in output order (part-00000, part-00001, ...), encoded in parallel by a
process pool (`imap` keeps the order), and each document's ids are followed by the tokenizer's
EOS id so the model learns where documents end. A tokenizer without an EOS id (e.g. the
character tokenizer) gets the encoding of "\\n\\n" between documents instead, recorded in
meta.json under source.separator.

Train/val split: a document goes to "val" when the BLAKE2b hash of its id falls below
`val_fraction`, so the split is deterministic, independent of worker count and document order,
and a document never straddles the two splits.

Resume: every shard is written atomically and meta.json last (also atomically), so a directory
with a meta.json is complete and one without is not. meta.json records the input part files
(name, size, mtime) and the tokenizer; a re-run into a directory whose meta.json matches the same
input, tokenizer and val_fraction, with every shard present at its recorded size, returns at once
(summary["already_done"] is true; a note goes to stderr). A directory with shards but no meta.json
(an interrupted run) is cleaned of them and tokenized again, saying so on stderr. A meta.json for
other input or another tokenizer is an error: use a new --out directory, or delete the old one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.core.progress import progress
from llmlab.data.curation.parts import import_pyarrow
from llmlab.data.tokens import META_FILE, ShardWriter, token_dtype, write_meta
from llmlab.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_dict

_TOKENIZER: Tokenizer | None = None


PART_PATTERNS = ("part-*.jsonl.gz", "part-*.jsonl", "part-*.parquet")


def curated_files(directory: Path) -> list[Path]:
    kinds = {pattern: sorted(directory.glob(pattern)) for pattern in PART_PATTERNS}
    found = [pattern for pattern, files in kinds.items() if files]
    if not found:
        raise LLMLabError(f"{directory} holds no part-*.jsonl[.gz] or part-*.parquet files; "
                          "make them with `llmlab data run`")
    if len(found) > 1:
        raise LLMLabError(f"{directory} mixes part files of several formats ({', '.join(found)}); "
                          "keep the output of one `llmlab data run` per directory")
    return kinds[found[0]]


def _iter_parquet(path: Path):
    _, pq = import_pyarrow(f"{path}: Parquet parts")
    try:
        batches = pq.ParquetFile(path).iter_batches(columns=["id", "text"])
        for batch in batches:
            data = batch.to_pydict()
            for doc_id, text in zip(data["id"], data["text"]):
                if doc_id is None or not isinstance(text, str):
                    raise LLMLabError(f"{path} holds a row without id or text; re-create it with `llmlab data run`")
                yield str(doc_id), text
    except LLMLabError:
        raise
    except Exception as e:  # pyarrow raises many types for corrupt files or missing columns
        raise LLMLabError(f"{path} is not a curated Parquet part ({type(e).__name__}: {e}); "
                          "re-create it with `llmlab data run`") from None


def iter_documents(directory: Path):
    for path in curated_files(directory):
        if path.suffix == ".parquet":
            yield from _iter_parquet(path)
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    doc = json.loads(line)
                    yield str(doc["id"]), doc["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LLMLabError(f"{path}:{lineno} is not a curated document (JSON with id and text); "
                                      "re-create it with `llmlab data run`") from None


def _input_signature(directory: Path) -> list[dict]:
    """What identifies the input: part file names, sizes and modification times (parts are
    written once, atomically, so a changed part has a new mtime)."""
    return [{"file": p.name, "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for p in curated_files(directory)]


def _finished(out: Path, meta_path: Path, identity: dict) -> dict | None:
    """The meta.json of a finished, matching tokenization in `out`, else None (an unfinished or
    damaged one). A finished one for other input or another tokenizer is an error."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    source = meta.get("source", {})
    saved = {"tokenizer": meta.get("tokenizer"), "inputs": source.get("inputs"),
             "val_fraction": source.get("val_fraction")}
    if saved != identity:
        raise LLMLabError(f"{out} already holds a token dataset made from other input, another tokenizer or "
                          "another val_fraction (or by an older llmlab); use a new --out directory, "
                          "or delete it to start over")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for entries in meta["splits"].values():
        for entry in entries:
            path = out / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["tokens"] * itemsize:
                return None
    return meta


def _clean_unfinished(out: Path) -> None:
    """Remove what an interrupted run left: shards, temporary files, a damaged meta.json."""
    stale = [p for split in ("train", "val") for pattern in (f"{split}-*.bin", f".{split}-*.bin.tmp-*")
             for p in out.glob(pattern)]
    stale += list(out.glob(f".{META_FILE}.tmp-*")) + [p for p in [out / META_FILE] if p.exists()]
    if stale:
        print(f"llmlab: {out} holds an unfinished or damaged tokenization ({len(stale)} file(s), no valid "
              f"{META_FILE}); removing them and tokenizing again", file=sys.stderr)
    for p in stale:
        p.unlink()


def is_val(doc_id: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def _init_worker(tokenizer_dict: dict) -> None:
    global _TOKENIZER
    _TOKENIZER = tokenizer_from_dict(tokenizer_dict)


def _encode(item: tuple[str, str]) -> tuple[str, list[int]]:
    assert _TOKENIZER is not None
    return item[0], _TOKENIZER.encode(item[1])


def tokenize_curated(directory: str | Path, tokenizer: str | Path | Tokenizer, out: str | Path,
                     val_fraction: float = 0.05, workers: int = 1, shard_tokens: int = 2**28) -> dict:
    """Write the token dataset; returns a summary (documents and tokens per split)."""
    directory, out = Path(directory), Path(out)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    separator: list[int] = [tok.eos_id] if tok.eos_id is not None else tok.encode("\n\n")
    dtype = token_dtype(tok.vocab_size)
    identity = {"tokenizer": json.loads(json.dumps(tok.to_dict())), "inputs": _input_signature(directory),
                "val_fraction": val_fraction}
    meta_path = out / META_FILE
    if meta_path.is_file():
        meta = _finished(out, meta_path, identity)
        if meta is not None:
            print(f"llmlab: {out} already holds this tokenization (same input, tokenizer and val_fraction); "
                  "nothing to do", file=sys.stderr)
            return {"out": str(out), "documents": meta["source"]["documents"],
                    "tokens": {s: sum(e["tokens"] for e in entries) for s, entries in meta["splits"].items()},
                    "separator": meta["source"]["separator"], "already_done": True}
    if out.is_dir():
        _clean_unfinished(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = {s: ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    docs = {"train": 0, "val": 0}
    tokens = {"train": 0, "val": 0}
    bar = progress(desc="tokenize", unit="doc")
    if workers > 1:
        pool = get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(tok.to_dict(),))
        encoded = pool.imap(_encode, iter_documents(directory), chunksize=64)
    else:
        pool = None
        encoded = ((doc_id, tok.encode(text)) for doc_id, text in iter_documents(directory))
    try:
        for doc_id, ids in encoded:
            split = "val" if is_val(doc_id, val_fraction) else "train"
            writers[split].add(np.asarray(ids + separator, dtype=np.int64))
            docs[split] += 1
            tokens[split] += len(ids) + len(separator)
            bar.update(1)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        bar.close()
    splits = {s: w.close() for s, w in writers.items()}
    source = {"curated": str(directory), "inputs": identity["inputs"], "documents": docs,
              "val_fraction": val_fraction, "separator": "eos" if tok.eos_id is not None else "\n\n"}
    write_meta(out, tok, splits, source)   # last, atomically: from here on the directory is complete
    return {"out": str(out), "documents": docs, "tokens": tokens, "separator": source["separator"],
            "already_done": False}
