"""Readers: every supported input format -> a stream of {"id", "text", "source"} documents.

Bad input never crashes a run and is never dropped silently: a reader records each unreadable
file, undecodable byte sequence, malformed JSON line or truncated archive in an `InputErrors`
log, which the pipeline writes into stats.json and the report shows.

Formats: .txt/.md (one document per file), .jsonl/.jsonl.gz/.json.gz (one per line, `text_field`),
.parquet (needs pyarrow), .html/.htm (trafilatura when installed, else the small own extractor
below), .warc/.warc.gz (needs warcio; HTML responses go through the same extractor).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.data.curation.parts import import_pyarrow

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
HTML_SUFFIXES = (".html", ".htm")
WARC_SUFFIXES = (".warc", ".warc.gz")
PARQUET_SUFFIXES = (".parquet",)
ALL_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + HTML_SUFFIXES + WARC_SUFFIXES + PARQUET_SUFFIXES


@dataclass
class InputErrors:
    """Counted and sampled input problems: {kind: count} plus the first few examples."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    max_examples: int = 20

    def add(self, kind: str, where: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append({"kind": kind, "where": where, "detail": detail[:300]})

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(ALL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """All readable input files under `paths`, sorted so every run sees the same order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file() and _suffix(f) in ALL_SUFFIXES]
        elif p.is_file():
            files.append(p)
        else:
            raise LLMLabError(f"input {p} does not exist; give files or directories of "
                              f"{', '.join(ALL_SUFFIXES)}")
    if not files:
        raise LLMLabError(f"no input files ({', '.join(ALL_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return sorted(set(files))


def _decode(data: bytes, where: str, errors: InputErrors) -> str:
    """UTF-8, falling back to replacement characters (counted) rather than losing the document."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.add("bad_encoding", where, str(e))
        return data.decode("utf-8", errors="replace")


class _MainTextExtractor(HTMLParser):
    """A small main-content extractor: text of block elements outside script/style/nav/header/
    footer/aside/form, one paragraph per block. Much simpler than trafilatura (no boilerplate
    scoring), used only when trafilatura is not installed."""

    SKIP = {"script", "style", "nav", "header", "footer", "aside", "form", "noscript", "svg", "head"}
    BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "td", "br", "tr", "article",
             "section", "main"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_depth = 0
        self.blocks: list[str] = []
        self.current: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag in self.BLOCK:
            self._end_block()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.current.append(data)

    def _end_block(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.current)).strip()
        if text:
            self.blocks.append(text)
        self.current = []

    def text(self) -> str:
        self._end_block()
        return "\n\n".join(self.blocks)


def html_to_text(html: str) -> str:
    """Main text of an HTML page: trafilatura when installed, else `_MainTextExtractor`."""
    try:
        import trafilatura
    except ImportError:
        parser = _MainTextExtractor()
        parser.feed(html)
        parser.close()
        return parser.text()
    return trafilatura.extract(html) or ""


def _read_jsonl(path: Path, text_field: str, errors: InputErrors) -> Iterator[dict]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(_decode(raw, where, errors))
                except json.JSONDecodeError as e:
                    errors.add("malformed_json", where, str(e))
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    errors.add("missing_text_field", where, f"no string field {text_field!r}")
                    continue
                yield {"id": str(obj.get("id", f"{path.name}:{lineno}")), "text": obj[text_field],
                       "source": str(obj.get("source", path))}
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # truncated or corrupt gzip
        errors.add("truncated_file", f"{path}:{lineno}", str(e))


def _read_parquet(path: Path, text_field: str, errors: InputErrors) -> Iterator[dict]:
    _, pq = import_pyarrow(f"{path}: Parquet inputs")
    try:
        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(columns=None):
            data = batch.to_pydict()
            if text_field not in data:
                errors.add("missing_text_field", str(path), f"no column {text_field!r}")
                return
            ids = data.get("id")
            for i, text in enumerate(data[text_field]):
                if isinstance(text, str):
                    yield {"id": str(ids[i]) if ids else f"{path.name}:{row}", "text": text, "source": str(path)}
                else:
                    errors.add("missing_text_field", f"{path}:{row}", "null text")
                row += 1
    except Exception as e:  # pyarrow raises many types for corrupt files
        errors.add("unreadable_file", str(path), f"{type(e).__name__}: {e}")


def _read_warc(path: Path, errors: InputErrors) -> Iterator[dict]:
    try:
        from warcio.archiveiterator import ArchiveIterator
    except ImportError:
        raise LLMLabError(f"{path}: reading WARC needs warcio: pip install 'llmlab[curation]' "
                          "(or pip install warcio)") from None
    n = 0
    try:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type != "response":
                    continue
                n += 1
                uri = record.rec_headers.get_header("WARC-Target-URI") or f"{path.name}:{n}"
                ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
                body = record.content_stream().read()
                text = _decode(body, f"{path}:{uri}", errors)
                text = html_to_text(text) if "html" in ctype or "<html" in text[:500].lower() else text
                yield {"id": record.rec_headers.get_header("WARC-Record-ID") or uri, "text": text, "source": uri}
    except Exception as e:  # warcio raises ArchiveLoadFailed / EOFError / zlib errors on truncation
        errors.add("truncated_file", f"{path} after record {n}", f"{type(e).__name__}: {e}")
        return
    # warcio ends quietly when the last gzip member is cut short; check the stream's end marker.
    if path.name.lower().endswith(".gz") and not _gzip_complete(path):
        errors.add("truncated_file", f"{path} after record {n}", "gzip stream ends before its end marker")


def _gzip_complete(path: Path) -> bool:
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
        return True
    except (OSError, EOFError):
        return False


def read_file(path: Path, errors: InputErrors, text_field: str = "text") -> Iterator[dict]:
    """Documents of one input file; every problem goes into `errors`."""
    suffix = _suffix(path)
    if suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(path, text_field, errors)
    elif suffix in PARQUET_SUFFIXES:
        yield from _read_parquet(path, text_field, errors)
    elif suffix in WARC_SUFFIXES:
        yield from _read_warc(path, errors)
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            errors.add("unreadable_file", str(path), str(e))
            return
        text = _decode(data, str(path), errors)
        if suffix in HTML_SUFFIXES:
            text = html_to_text(text)
        yield {"id": str(path), "text": text, "source": str(path)}
