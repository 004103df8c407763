"""Output part files of `llmlab data run`: JSON lines (gzip or plain) or Parquet.

Both writers take an already-open binary file (the executor's atomic_open), so a part file appears
under its final name only when complete: it is the shard's "done" marker for resume.
"""

from __future__ import annotations

import gzip
import io
import json

from llmlab.core.errors import LLMLabError


def open_jsonl_out(f, compression: str):
    """A text stream over the binary file `f`; gzip without time or file name in its header."""
    raw = gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) if compression == "gzip" else f
    return raw, io.TextIOWrapper(raw, encoding="utf-8", newline="\n")


PARQUET_BATCH = 4096  # documents per Parquet row group


class JsonlPart:
    """Documents as JSON lines (gzip or plain) into the binary file `f`."""

    def __init__(self, f, compression: str):
        self.f = f
        self.raw, self.text = open_jsonl_out(f, compression)

    def write(self, d: dict) -> None:
        self.text.write(json.dumps(d, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.text.flush()
        self.text.detach()
        if self.raw is not self.f:
            self.raw.close()


def import_pyarrow(what: str = "Parquet files"):
    """(pyarrow, pyarrow.parquet), or a clear error saying how to install it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LLMLabError(f"{what} need pyarrow: pip install 'llmlab[curation]' (or pip install pyarrow)") from None
    return pa, pq


def parquet_schema(docs):
    """Columns id, text, source, then every other field in first-seen order: strings as string,
    integers as int64, numbers as float64, booleans as bool, anything else as its JSON text
    (null where a document lacks the field). Returns (schema, names of the JSON-text columns)."""
    pa, _ = import_pyarrow('output.format = "parquet" parts')
    base = ("id", "text", "source")
    kinds: dict[str, set] = {}
    for d in docs:
        for k, v in d.items():
            if k in base:
                continue
            seen = kinds.setdefault(k, set())
            if v is not None:
                seen.add(type(v) if type(v) in (str, bool, int, float) else object)
    fields = [pa.field(k, pa.string()) for k in base]
    as_json = set()
    for k, seen in kinds.items():
        if seen <= {str}:
            fields.append(pa.field(k, pa.string()))
        elif seen == {bool}:
            fields.append(pa.field(k, pa.bool_()))
        elif seen == {int}:
            fields.append(pa.field(k, pa.int64()))
        elif seen <= {int, float}:
            fields.append(pa.field(k, pa.float64()))
        else:
            fields.append(pa.field(k, pa.string()))
            as_json.add(k)
    return pa.schema(fields), as_json


class ParquetPart:
    """Documents as a zstd Parquet file (row groups of PARQUET_BATCH documents) into `f`."""

    def __init__(self, f, schema, as_json: set[str]):
        self.pa, pq = import_pyarrow('output.format = "parquet" parts')
        self.schema, self.as_json = schema, as_json
        self.writer = pq.ParquetWriter(f, schema, compression="zstd")
        self.rows: list[dict] = []

    def write(self, d: dict) -> None:
        self.rows.append(d)
        if len(self.rows) >= PARQUET_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        cols = {}
        for name in self.schema.names:
            values = [d.get(name) for d in self.rows]
            if name in self.as_json:
                values = [None if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                          for v in values]
            cols[name] = values
        self.writer.write_batch(self.pa.RecordBatch.from_pydict(cols, schema=self.schema))
        self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()   # finishes the Parquet footer; leaves `f` open for atomic_open
