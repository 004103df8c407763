from llmlab.core.assets import pydocs_topics
from llmlab.rag.chunking import (char_chunks, chunk_document, fixed_token_chunks, recursive_chunks,
                                 sentence_window_chunks, split_sentences)
from llmlab.tokenizer.wordpiece import WordPieceTokenizer
from llmlab.core.assets import minilm_dir

TOK = WordPieceTokenizer.from_vocab_file(minilm_dir())
count = lambda s: len(TOK.encode(s))  # noqa: E731
DOC = pydocs_topics()["with"]


def test_fixed_chunks_respect_budget_and_overlap():
    chunks = fixed_token_chunks(DOC, count, size=64, overlap=16)
    assert len(chunks) > 3
    for c in chunks:
        assert count(c.text) <= 64
        assert DOC[c.start:c.end] == c.text
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # consecutive chunks overlap
        assert b.start > a.start  # and always move forward
    # together they cover every word of the document
    assert chunks[0].start == DOC.index(DOC.split()[0]) and chunks[-1].end == len(DOC.rstrip())


def test_recursive_chunks_follow_structure():
    text = "# A\n\nPara one is here. It has two sentences.\n\nPara two.\n\n# B\n\n" + "Long sentence words. " * 40
    chunks = recursive_chunks(text, count, max_tokens=30)
    assert all(count(c.text) <= 30 for c in chunks)
    assert chunks[0].text.startswith("# A")
    assert any(c.text.startswith("# B") for c in chunks)  # a heading starts a chunk
    assert "".join(text[c.start:c.end] for c in chunks).split() == text.split()  # nothing lost


def test_sentence_window_carries_neighbours():
    text = "One is first. Two is second. Three is third. Four is fourth."
    chunks = sentence_window_chunks(text, window=1)
    assert [c.text for c in chunks] == ["One is first.", "Two is second.", "Three is third.", "Four is fourth."]
    assert chunks[1].window == "One is first. Two is second. Three is third."
    assert split_sentences("Hi! Is it? Yes.") == [(0, 3), (4, 10), (11, 15)]


def test_char_chunks_and_dispatch():
    assert [c.text for c in char_chunks("abcdefgh", 3)] == ["abc", "def", "gh"]
    assert chunk_document(DOC, count, "fixed", 50, 10) == fixed_token_chunks(DOC, count, 50, 10)
