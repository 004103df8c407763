"""Our MiniLM encoder vs sentence-transformers on the same weights: cosine >= 0.9999."""

import os
import re

import numpy as np
import pytest

from llmlab.core.assets import minilm_dir, pydocs_topics


def varied_sentences(n: int = 100) -> list[str]:
    """Short and long, prose and code, accents and CJK: real sentences from Python's docs + edge cases."""
    topics = pydocs_topics()
    text = " ".join(topics[name] for name in sorted(topics)[:40])
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 < len(s.strip()) < 600]
    extra = ["Hi!", "Zürich café crème brûlée", "中文测试 mixed text", "x = [i ** 2 for i in range(10)]",
             "word " * 400]  # the last one exercises truncation at 256 tokens
    step = max(1, len(sents) // (n - len(extra)))
    return (sents[::step][: n - len(extra)] + extra)[:n]


@pytest.mark.slow
def test_parity_with_sentence_transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"
    st = pytest.importorskip("sentence_transformers")
    from llmlab.rag.embed import Embedder

    sentences = varied_sentences()
    assert len(sentences) == 100
    ours = Embedder().embed(sentences)
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(sentences, normalize_embeddings=True,
                                                                          batch_size=32)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_and_cache_do_not_change_vectors():
    from llmlab.rag.embed import Embedder

    e = Embedder(batch_size=3)
    texts = ["short", "a much longer sentence about context managers and with statements", "mid length text"]
    together = e.embed(texts)
    e._cache.clear()
    alone = np.stack([e.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len(e._cache) == 3  # cached by content hash
