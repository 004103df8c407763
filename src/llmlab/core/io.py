"""Atomic writes: a file that matters is either the old version or the new one, never half.

The recipe: write to a temporary file in the *same directory* (so the rename stays on
one filesystem), flush and fsync it, then `os.replace` it over the target. A crash at
any point leaves the previous file untouched; at worst a stray `*.tmp-*` file remains.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on clean exit it replaces `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path` (for writers that open files themselves, e.g. gguf's
    GGUFWriter, and for `atomic_open`); on clean exit it is fsynced and replaces `path`; on any
    error, Ctrl-C included, it is removed and the old file is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less
        # the umask), so exports and checkpoints are as readable as any other file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json_object(path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """A JSON object from `path`, or an LLMLabError naming the file and ending with `fix`."""
    from llmlab.core.errors import LLMLabError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMLabError(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise LLMLabError(f"{path} must hold a JSON object, not {type(data).__name__}; {fix}")
    return data


def read_jsonl_lines(path: str | os.PathLike, expected: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSONL file. A missing file or a
    line that is not JSON is an LLMLabError naming the file (and line) and `expected`, e.g.
    '{"question", "gold_text"} lines'."""
    from llmlab.core.errors import LLMLabError

    path = Path(path)
    if not path.is_file():
        raise LLMLabError(f"{path} not found: pass a JSONL file of {expected}")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise LLMLabError(f"{path}:{n} is not valid JSON ({e.msg}); each line must be one JSON object") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[IO], None]) -> None:
    """Atomically write whatever `writer(file)` writes (e.g. `lambda f: torch.save(obj, f)`)."""
    with atomic_open(path, "wb") as f:
        writer(f)
