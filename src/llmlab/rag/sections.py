"""A document as a tree of sections and, inside each, a list of paragraphs and code blocks.

This is what the "structure" chunker (chunking.structure_chunks) walks: it needs to know where
a section starts and ends (chunks never cross one), what its heading path is (it becomes the
chunk's contextual header), and which spans are code (cut only when a block alone is too big).

Recognised headings:
- markdown ATX: `# Title` .. `###### Title` at the start of a line; the level is the number of #.
- underlined (markdown setext, reStructuredText): a title line, preceded by a blank line (or the
  start of the text, or an overline), followed by a line of one repeated character among
  * = - ~ ^ " that is about as long as the title. As in reST, the level of an underline style is
  the order in which it first appears in the document, so pydoc's `*****` title, `=====`
  sections and `-----` subsections become levels 1, 2, 3 (and markdown's `===` / `---` 1, 2).
Recognised code blocks (no heading is ever detected inside one):
- fences: from a line starting with ``` or ~~~ to the next line starting with the same fence.
- indented blocks: a line indented 3+ spaces right after a blank line starts one; it runs on,
  across blank lines, while the next non-blank line is still indented 3+ spaces. Pydoc writes its
  grammar rules and code examples this way (also its notes and list-item paragraphs, which are
  equally better kept whole).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

_ATX = re.compile(r"#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$")
_UNDERLINE = re.compile(r"([*=\-~^\"])\1{2,}[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_BLANK_LINES = re.compile(r"\n[ \t\r]*(?:\n[ \t\r]*)+")


@dataclass
class Section:
    title: str
    level: int               # 0 for the document root (whatever comes before the first heading)
    path: tuple[str, ...]    # heading titles from the top level down to this section
    start: int               # the whole section [start, end): heading, own body, subsections
    end: int
    body_start: int          # its own text [body_start, body_end): after the heading, up to
    body_end: int            # the first subsection
    children: list[Section] = field(default_factory=list)

    @property
    def heading_path(self) -> str:
        """'The with statement > Examples'; '' for the root."""
        return " > ".join(self.path)

    def walk(self) -> Iterator[Section]:
        """This section and all below it, in document order."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class Block:
    start: int
    end: int
    code: bool  # a fenced or indented code block


class Outline:
    """The parsed structure of one text: `root` (the section tree) and the code-block spans."""

    def __init__(self, text: str):
        self.text = text
        headings, self.code = _scan(text)
        self.root = _tree(text, headings)

    def sections(self) -> list[Section]:
        return list(self.root.walk())

    def section_at(self, pos: int) -> Section:
        """The smallest section containing character `pos`."""
        sec = self.root
        while True:
            inner = [c for c in sec.children if c.start <= pos < c.end]
            if not inner:
                return sec
            sec = inner[0]

    def blocks(self, start: int, end: int) -> list[Block]:
        """The paragraphs (split at blank lines) and code blocks of text[start:end], in order.
        Paragraph spans are stripped of surrounding whitespace; code spans keep the indentation
        of their first line (it is part of the code)."""
        out: list[Block] = []
        pos = start
        for cs, ce in self.code:
            if ce <= start or cs >= end:
                continue
            out += self._paragraphs(pos, max(pos, cs))
            out.append(Block(max(cs, start), min(ce, end), True))
            pos = min(ce, end)
        return out + self._paragraphs(pos, end)

    def _paragraphs(self, start: int, end: int) -> list[Block]:
        out, pos = [], start
        for m in [*_BLANK_LINES.finditer(self.text, start, end), None]:
            a, b = pos, (m.start() if m else end)
            piece = self.text[a:b]
            if piece.strip():
                a += len(piece) - len(piece.lstrip())
                out.append(Block(a, a + len(piece.strip()), False))
            pos = m.end() if m else end
        return out


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip(" "))


def _is_underline(line: str, title: str) -> bool:
    """A run of one punctuation character at least ~3/4 as long as the title (reST wants >=; the
    slack forgives wide characters and hand-typed markdown)."""
    return bool(_UNDERLINE.match(line)) and len(line.rstrip()) >= max(3, int(0.75 * len(title.strip())))


def _scan(text: str) -> tuple[list[tuple[str, str, int, int]], list[tuple[int, int]]]:
    """One pass over the lines: headings as (style, title, start, body_start) and code spans."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    bare = [line.rstrip("\r\n") for line in lines]
    headings: list[tuple[str, str, int, int]] = []
    code: list[tuple[int, int]] = []
    i, after_blank = 0, True
    while i < len(lines):
        line = bare[i]
        if not line.strip():
            i, after_blank = i + 1, True
            continue
        fence = _FENCE.match(line)
        if fence:  # everything up to the closing fence (or the end) is code
            mark = fence.group(1)
            j = i + 1
            while j < len(lines) and not bare[j].lstrip().startswith(mark):
                j += 1
            j = min(j, len(lines) - 1)
            code.append((offsets[i], offsets[j] + len(bare[j])))
            i, after_blank = j + 1, False
            continue
        if after_blank and _indent(line) >= 3:  # an indented block, across blank lines
            last = j = i
            while j < len(lines) and (not bare[j].strip() or _indent(bare[j]) >= 3):
                if bare[j].strip():
                    last = j
                j += 1
            code.append((offsets[i], offsets[last] + len(bare[last])))
            i, after_blank = last + 1, False
            continue
        nxt = bare[i + 1] if i + 1 < len(lines) else ""
        atx = _ATX.match(line)
        if atx and atx.group(1):
            headings.append(("#" * (len(line) - len(line.lstrip("#"))), atx.group(1), offsets[i], offsets[i + 1]))
        elif (after_blank and i + 2 < len(lines) and bare[i + 2].rstrip() == line.rstrip()
              and bare[i + 1].strip() and _is_underline(line, bare[i + 1])):  # overline, title, underline
            headings.append(("over" + line[0], bare[i + 1].strip(), offsets[i], offsets[i + 3]))
            i, after_blank = i + 3, False
            continue
        elif (after_blank and _indent(line) == 0 and not _UNDERLINE.match(line) and i + 1 < len(lines)
              and _is_underline(nxt, line)):
            headings.append((nxt[0], line.strip(), offsets[i], offsets[i + 2]))
            i, after_blank = i + 2, False
            continue
        i, after_blank = i + 1, False
    return headings, code


def _tree(text: str, headings: list[tuple[str, str, int, int]]) -> Section:
    """Nest headings by level: ATX levels are their # count, underline styles rank by first use."""
    root = Section("", 0, (), 0, len(text), 0, len(text))
    order: list[str] = []  # underline styles in order of first appearance
    stack = [root]
    for style, title, start, body_start in headings:
        if style.startswith("#"):
            level = len(style)
        else:
            if style not in order:
                order.append(style)
            level = order.index(style) + 1
        while stack[-1].level >= level:
            stack.pop().end = start
        parent = stack[-1]
        if not parent.children:
            parent.body_end = start
        sec = Section(title, level, parent.path + (title,), start, len(text), body_start, len(text))
        parent.children.append(sec)
        stack.append(sec)
    for sec in root.walk():  # a section without subsections owns its text up to its end
        if not sec.children:
            sec.body_end = sec.end
    return root
