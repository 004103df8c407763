"""Reading sources into (path, title, text): plain text, markdown, HTML main text, PDF, Python docs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from llmlab.core.errors import LLMLabError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


@dataclass
class Document:
    path: str  # file path, or "pydocs:<topic>" for built-in sources
    title: str
    text: str
    mtime: float = 0.0

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


class _MainText(HTMLParser):
    """Keeps visible body text; drops scripts, styles and page chrome (nav, header, footer, aside)."""

    SKIP = {"script", "style", "nav", "header", "footer", "aside", "noscript", "template", "svg", "form"}
    BLOCK = {"p", "div", "br", "li", "tr", "section", "article", "pre", "table", "ul", "ol", "blockquote",
             "h1", "h2", "h3", "h4", "h5", "h6", "dd", "dt"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.in_title = False
        self.title = ""

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "title":
            self.in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")
            if tag[0] == "h" and tag[1:].isdigit():
                self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "title":
            self.in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    parser = _MainText()
    parser.feed(html)
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n\s*", "\n\n", text).strip()
    return parser.title.strip(), text


def read_document(path: str | Path) -> Document:
    """One file as a Document; the title is the first heading / <title> / PDF title / file stem."""
    path = Path(path)
    if not path.is_file():
        raise LLMLabError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    title = ""
    if suffix == ".pdf":
        try:
            from pypdf import PdfReader
        except ImportError as e:
            raise LLMLabError(f"{path}: reading PDF needs pypdf: `pip install pypdf`") from e
        try:
            reader = PdfReader(str(path))
            text = "\n\n".join((page.extract_text() or "") for page in reader.pages)
            title = str((reader.metadata or {}).get("/Title") or "")
        except Exception as e:
            raise LLMLabError(f"{path} is not a readable PDF ({e}); re-export it or remove it") from e
    else:
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raw = path.read_text(encoding="latin-1")
        if suffix in (".html", ".htm"):
            title, text = html_to_text(raw)
        else:
            text = raw
            m = re.search(r"^#{1,6}\s+(.+)$", raw, re.M) if suffix in (".md", ".markdown") else None
            title = m.group(1).strip() if m else ""
    return Document(str(path), title or path.stem, text, path.stat().st_mtime)


def iter_files(paths: list[str | Path]) -> Iterator[Path]:
    """Supported files under the given files/directories, in a stable order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                              and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            yield p
        else:
            raise LLMLabError(f"{p} does not exist: pass files or directories of {', '.join(SUFFIXES)}")


def builtin_documents(name: str) -> list[Document]:
    """Built-in offline corpora: `pydocs` = Python's documentation topics (pydoc_data.topics)."""
    if name != "pydocs":
        raise LLMLabError(f"unknown built-in corpus {name!r}: the built-in corpus is 'pydocs'")
    from llmlab.core.assets import pydocs_topics

    return [Document(f"pydocs:{topic}", topic, text) for topic, text in sorted(pydocs_topics().items()) if text.strip()]


def collect_documents(paths: list[str | Path], builtin: str | None = None) -> tuple[list[Document], list[str]]:
    """(documents, prune prefixes) for an index run: the built-in corpus and every supported file
    under `paths`. A prefix (an indexed directory, or "pydocs:") tells the store which stored
    documents this run covers, so one that is gone from there is deleted."""
    if not paths and not builtin:
        raise LLMLabError("nothing to index: pass files/directories or --builtin pydocs")
    docs, prune = [], []
    if builtin:
        docs += builtin_documents(builtin)
        prune.append(f"{builtin}:")
    prune += [str(Path(p).resolve()) + "/" for p in paths if Path(p).resolve().is_dir()]
    docs += [read_document(f.resolve()) for f in iter_files(paths)]
    return docs, prune
