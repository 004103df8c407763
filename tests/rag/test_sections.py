"""Structure-following chunks: section trees from markdown and pydoc headings, code kept whole,
chunks inside one section and within budget, contextual headers, parent-section windows."""

from llmlab.core.assets import pydocs_topics
from llmlab.rag.chunking import chunk_document, structure_chunks
from llmlab.rag.sections import Outline

words = lambda s: len(s.split())  # noqa: E731 - a cheap additive token count, like WordPiece's

MARKDOWN = """# Guide

Intro paragraph about the guide.

## Install

Run the installer:

```
pip install thing
# not a heading: a comment in a fence
```

### Linux

Use the package manager.

## Usage

Call it from Python.
"""

PYDOC = """The "spam" statement
********************

Spam is eaten with eggs. It has rules:

   spam_stmt ::= "spam" expression

Eating spam
===========

Eat it hot.

Cold spam
---------

Cold spam is also fine
====

(the line above is no heading: it follows a text line, and a 4-char rule under a 22-char line)

Selling spam
============

Sell it by the can.
"""


def body(text, c):
    return text[c.start:c.end]


def test_markdown_headings_give_paths_and_spans():
    outline = Outline(MARKDOWN)
    secs = outline.sections()
    assert [s.heading_path for s in secs] == ["", "Guide", "Guide > Install", "Guide > Install > Linux", "Guide > Usage"]
    install = secs[2]
    assert MARKDOWN[install.start:].startswith("## Install")
    assert MARKDOWN[install.body_start:install.body_end].strip().startswith("Run the installer:")
    assert MARKDOWN[install.body_end:].startswith("### Linux") and MARKDOWN[install.end:].startswith("## Usage")
    fence = [b for b in outline.blocks(install.body_start, install.body_end) if b.code]
    assert len(fence) == 1 and "# not a heading" in MARKDOWN[fence[0].start:fence[0].end]
    assert outline.section_at(MARKDOWN.index("package manager")).heading_path == "Guide > Install > Linux"


def test_underlined_headings_rank_by_first_use():
    secs = Outline(PYDOC).sections()
    assert [(s.level, s.heading_path) for s in secs] == [
        (0, ""), (1, 'The "spam" statement'), (2, 'The "spam" statement > Eating spam'),
        (3, 'The "spam" statement > Eating spam > Cold spam'), (2, 'The "spam" statement > Selling spam')]
    cold = secs[3]
    assert "Cold spam is also fine" in PYDOC[cold.body_start:cold.body_end]
    rst = "=====\nTitle\n=====\n\nText.\n\nPart\n----\n\nMore.\n"  # reST overline + underline
    assert [s.heading_path for s in Outline(rst).sections()] == ["", "Title", "Title > Part"]
    front = "---\ntitle: a markdown front matter block\n---\n\nText.\n"
    assert [s.heading_path for s in Outline(front).sections()] == [""]


def test_chunks_stay_in_sections_with_headers_and_budget():
    text = PYDOC + "\n".join(f"Sentence number {i} about selling spam in bulk." for i in range(30)) + "\n"
    outline = Outline(text)
    by_path = {s.heading_path: s for s in outline.sections()}
    chunks = structure_chunks(text, words, size=40, parent_tokens=80, title="spam")
    assert len(chunks) > 4
    for c in chunks:
        sec = by_path[c.section]
        assert sec.start <= c.start < c.end <= sec.end  # never across a section boundary
        header = " > ".join(sec.path)  # "spam" is said by the first heading: not prepended
        assert c.text == f"{header}\n{body(text, c)}" and words(c.text) <= 40
        assert body(text, c) in c.window and words(c.window) <= 80
    first = chunks[0]
    assert first.section == 'The "spam" statement' and "spam_stmt ::=" in first.text  # intro glued to its grammar
    assert [c.section for c in chunks].count('The "spam" statement > Selling spam') >= 3
    # a document title the first heading does not say goes first in the header
    assert structure_chunks(text, words, 40, 80, title="Tinned meat")[0].text.startswith('Tinned meat > The "spam"')


def test_code_block_is_never_split_unless_alone_too_big():
    code = "\n".join(f"    x{i} = compute({i})" for i in range(12))  # 36 words
    text = "# Doc\n\n" + "Some words here. " * 10 + "\n\n" + code + "\n\nAfter the code. " * 5 + "\n"
    cs = text.index("    x0")
    ce = text.index("compute(11)") + len("compute(11)")
    chunks = structure_chunks(text, words, size=45)
    assert all(words(c.text) <= 45 for c in chunks)
    for c in chunks:  # whole or not at all
        assert (c.start <= cs and ce <= c.end) or c.end <= cs or c.start >= ce
    assert any(c.start <= cs and ce <= c.end for c in chunks)
    # the same block under a 20-token budget must be cut: at line breaks, in order, every line kept
    small = [c for c in structure_chunks(text, words, size=20) if cs <= c.start < ce]
    assert len(small) >= 2 and all(words(c.text) <= 20 for c in small)
    assert " ".join(body(text, c) for c in small).split() == text[cs:ce].split()
    assert all(text[c.start - 1] == "\n" for c in small)  # each piece starts at a line


def test_windows_are_the_parent_section_or_grow_around_the_chunk():
    text = "# Doc\n\n## Short\n\nOne small fact.\n\n## Long\n\n" + "\n\n".join(
        f"Paragraph {i} has exactly seven words." for i in range(20)) + "\n"
    chunks = structure_chunks(text, words, size=20, parent_tokens=40)
    short = [c for c in chunks if c.section == "Doc > Short"]
    assert len(short) == 1 and short[0].window == "Doc > Short\nOne small fact."
    for c in (c for c in chunks if c.section == "Doc > Long"):
        assert body(text, c) in c.window and 20 <= words(c.window) <= 40
        assert c.window.startswith("Doc > Long\nParagraph")


def test_tiny_sibling_sections_merge_under_their_parent():
    text = "# Doc\n\n## API\n\n### get\n\nReads it.\n\n### put\n\nWrites it.\n\n### big\n\n" + "word " * 60 + "\n"
    chunks = structure_chunks(text, words, size=40)
    merged = [c for c in chunks if c.section == "Doc > API"]
    assert len(merged) == 1 and "### get" in merged[0].text and "Writes it." in merged[0].text
    assert merged[0].text.startswith("Doc > API\n### get")
    assert sum(c.section == "Doc > API > big" for c in chunks) == 2  # 60 words: not merged, cut in two


def test_pydoc_with_topic_chunks_sensibly():
    doc = pydocs_topics()["with"]
    chunks = chunk_document(doc, words, "structure", 150, title="with", parent_tokens=300)
    assert 3 <= len(chunks) <= 8
    assert {c.section for c in chunks} == {'The "with" statement'}  # the topic has no subsections
    assert all(c.text.startswith('The "with" statement\n') for c in chunks)  # "with" is in the heading
    assert all(words(c.text) <= 150 and body(doc, c) in c.window for c in chunks)
    assert "with_stmt" in chunks[0].text and "::=" in chunks[0].text
    expansion = doc[doc.index("   manager = (EXPRESSION)"):doc.index("exit(manager, None, None, None)")]
    holder = [c for c in chunks if expansion in c.text]
    assert len(holder) == 1 and "is semantically equivalent to:\n\n   manager" in holder[0].text
    # a topic with subsections: the heading path names where a chunk is
    doc = pydocs_topics()["specialnames"]
    chunks = chunk_document(doc, words, "structure", 150, title="specialnames")
    slots = [c for c in chunks if c.section.endswith("__slots__")]
    assert slots and slots[0].section == "Special method names > Customizing attribute access > __slots__"
    assert slots[0].text.startswith("specialnames > Special method names > Customizing attribute access > __slots__\n")


def test_other_methods_have_no_section():
    doc = pydocs_topics()["with"]
    for method in ("fixed", "recursive", "sentence", "chars"):
        assert {c.section for c in chunk_document(doc, words, method, 100, 20)} == {""}
