import json

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.rag.context import SYSTEM_PROMPT, build_messages, focus_passage, format_sources, pack_context
from llmlab.rag.evaluate import is_hit, load_qa, metrics
from llmlab.rag.hybrid import reciprocal_rank_fusion, weighted_fusion

words = lambda s: len(s.split())  # noqa: E731


def hit(source, start, end, text, score):
    return dict(source=source, title=source, start=start, end=end, text=text, score=score)


def test_pack_dedupes_overlaps_and_respects_budget():
    hits = [hit("a", 0, 100, "one two three", 0.9), hit("a", 50, 150, "overlapping chunk", 0.8),
            hit("b", 0, 10, "w " * 50, 0.7), hit("c", 0, 10, "small fits", 0.6)]
    packed = pack_context(hits, budget_tokens=30, count_tokens=words)
    assert [c.source for c in packed] == ["a", "c"]  # overlap dropped, too-big chunk skipped
    assert [c.number for c in packed] == [1, 2]
    by_source = pack_context([hit("b", 5, 9, "x", 0.9), hit("a", 0, 3, "y", 0.5)], 100, words, order="source")
    assert [c.source for c in by_source] == ["a", "b"] and by_source[0].number == 1


def test_prompt_is_grounded_and_numbered():
    packed = pack_context([hit("doc.md", 0, 5, "Paris is the capital of France.", 1.0)], 100, words)
    messages = build_messages("What is the capital of France?", packed)
    assert messages[0]["content"] == SYSTEM_PROMPT and "don't know" in SYSTEM_PROMPT
    assert "[1] (doc.md)\nParis is the capital" in messages[1]["content"]
    assert messages[1]["content"].rstrip().endswith("Answer (cite passages by number):")
    assert format_sources(packed).startswith("[1] doc.md")


def test_fusions():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    assert [i for i, _ in fused][:2] == [1, 3]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    w = weighted_fusion([(1, 0.9), (2, 0.8), (4, 0.1)], [(2, 10.0), (3, 5.0)], alpha=0.5)
    assert w[0][0] == 2


def test_metrics_and_hits(tmp_path):
    rel = [[False, True, False], [True, False, True], [False, False, False]]
    m = metrics(rel, [1, 2])
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@2"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx((0.5 + 1) / 3)
    assert 0 < m["ndcg@10"] < m["recall@2"]
    assert is_hit({"source": "/x/docs/a.md", "text": ""}, {"gold_doc": "a.md"})
    assert is_hit({"source": "s", "text": "The  quick\nbrown fox"}, {"gold_text": "quick brown"})
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "gold_doc": "a"}) + "\n" + json.dumps({"question": "no gold"}) + "\n")
    items, skipped = load_qa(qa)
    assert len(items) == 1 and skipped == 1
    qa.write_text("{broken\n")
    with pytest.raises(LLMLabError, match="qa.jsonl:1"):
        load_qa(qa)


def test_weighted_fusion_single_or_lowest_hit_is_not_absent():
    # A rare term: BM25 matched one chunk only. That hit must carry the full sparse weight,
    # not 0 (which is what an absent item gets), so it beats dense-only items.
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    fused = dict(weighted_fusion(dense, [(3, 12.0)], alpha=0.5))
    assert fused[3] == pytest.approx(0.5 * 0.7 / 0.9 + 0.5)
    assert max(fused, key=fused.get) == 3
    # a list's lowest hit still scores above an item absent from that list
    fused = dict(weighted_fusion([(1, 0.9), (2, 0.5)], [(7, 2.0)], alpha=0.5))
    assert fused[2] == pytest.approx(0.5 * 0.5 / 0.9) and fused[7] == pytest.approx(0.5)
    # with the item just past the cut known (candidates=N), it is the floor: the N-th hit stays > 0
    fused = dict(weighted_fusion([(1, 0.9), (2, 0.5), (3, 0.4)], [], alpha=1.0, candidates=2))
    assert set(fused) == {1, 2} and fused[1] == pytest.approx(1.0) and fused[2] == pytest.approx(0.2)
    # ties with the cut are indistinguishable from absent items: 0
    fused = dict(weighted_fusion([(1, 0.9), (2, 0.4), (3, 0.4)], [], alpha=1.0, candidates=2))
    assert fused[2] == 0.0


def test_focus_passage_cuts_the_parent_around_the_chunk_and_keeps_the_heading():
    body = " ".join(f"w{i}" for i in range(300))
    window = "Guide > Cache\n" + body
    chunk = "Guide > Cache\n" + " ".join(f"w{i}" for i in range(150, 170))
    cut = focus_passage(window, chunk, 40)
    head, _, text = cut.partition("\n")
    words = text.split()
    assert head == "Guide > Cache" and words[0] == "..." and words[-1] == "..."
    assert len(words) == 42 and {"w150", "w169"} <= set(words)          # 40 words, the chunk centred
    assert words.index("w150") - 1 == 10 and 40 - words.index("w169") == 10
    # an anchor (a synthetic question's span) moves the cut; one opening with the heading words
    # still lands on its body, and an unknown one falls back to the window's start
    assert "w5 " in focus_passage(window, chunk, 40, anchor="Guide > Cache w0 w1 w2 w3 w4 w5 w6 w7")
    assert focus_passage(window, chunk, 40, anchor="nothing like it").split("\n")[1].startswith("w0 ")
    assert focus_passage(window, chunk, 300) == window                 # short enough: untouched
    code = "Title\nintro words here\n\n    def f():\n        return 1\n\nafter"
    assert "    def f():\n        return 1" in focus_passage(code, "Title\ndef f():", 5)   # indentation kept
    with pytest.raises(LLMLabError, match="max_words"):
        focus_passage(window, chunk, 0)
