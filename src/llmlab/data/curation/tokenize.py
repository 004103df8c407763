"""Curated JSONL -> the trainer's token dataset (llmlab.data.tokens: meta.json + *.bin shards).

Documents are read in output order (part-00000, part-00001, ...), encoded in parallel by a
process pool (`imap` keeps the order), and each document's ids are followed by the tokenizer's
EOS id so the model learns where documents end. A tokenizer without an EOS id (e.g. the
character tokenizer) gets the encoding of "\\n\\n" between documents instead, recorded in
meta.json under source.separator.

Train/val split: a document goes to "val" when the BLAKE2b hash of its id falls below
`val_fraction`, so the split is deterministic, independent of worker count and document order,
and a document never straddles the two splits.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.core.progress import progress
from llmlab.data.tokens import ShardWriter, token_dtype, write_meta
from llmlab.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_dict

_TOKENIZER: Tokenizer | None = None


def curated_files(directory: Path) -> list[Path]:
    files = sorted(list(directory.glob("part-*.jsonl.gz")) + list(directory.glob("part-*.jsonl")))
    if not files:
        raise LLMLabError(f"{directory} holds no part-*.jsonl[.gz] files; make them with `llmlab data run`")
    return files


def iter_documents(directory: Path):
    for path in curated_files(directory):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    doc = json.loads(line)
                    yield str(doc["id"]), doc["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LLMLabError(f"{path}:{lineno} is not a curated document (JSON with id and text); "
                                      "re-create it with `llmlab data run`") from None


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
    source = {"curated": str(directory), "documents": docs, "val_fraction": val_fraction,
              "separator": "eos" if tok.eos_id is not None else "\n\n"}
    write_meta(out, tok, splits, source)
    return {"out": str(out), "documents": docs, "tokens": tokens, "separator": source["separator"]}
