"""llmlab.inspect.surprise: per-token losses, exact under sliding windows, and their renderings."""

import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.inspect.surprise import (TokenSurprise, plot_surprise, render_html, render_terminal, to_json,
                                     token_surprise, worst_spans)
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

TEXT = ("the cat sat on the mat & the dog <barked> at the café.\n"
        "a second line, with 'quotes' and \"more\" of them; then the end.\n")


class BosCharTokenizer(CharTokenizer):
    """A character tokenizer whose model expects a BOS (id = the last one), as Llama's does."""

    add_bos = True

    def __init__(self, chars):
        super().__init__(chars)
        self.bos_id = len(self.chars)

    def encode(self, text, add_special=False):
        ids = super().encode(text)
        return [self.bos_id] + ids if add_special else ids

    def decode(self, ids):
        return "".join("<s>" if i == self.bos_id else self.chars[i] for i in ids)

    @property
    def vocab_size(self):
        return len(self.chars) + 1


def make(tokenizer, block_size=32, seed=0, position="rope"):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                         n_embd=32, position=position)
    model = Transformer(config)
    with torch.no_grad():   # larger weights than the init, so losses vary from token to token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.train(TEXT)


def direct_loss(model, context: list[int], target: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([context]))["logits"][0, -1].float()
    return float(F.cross_entropy(logits[None], torch.tensor([target])))


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_one_window_equals_cross_entropy_of_the_models_logits(tok, position):
    text = TEXT[:30]
    model = make(tok, block_size=32, position=position)
    model.train()   # the probe must evaluate, then put the flag back
    s = token_surprise(model, tok, text, top_k=4)
    assert model.training
    ids = tok.encode(text)
    assert s.ids == ids and "".join(s.pieces) == text
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids]))["logits"][0].float()
    want = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert s.losses[0] is None and s.expected[0] == []
    np.testing.assert_allclose(s.losses[1:], want.numpy(), rtol=1e-5, atol=1e-5)
    probs, best = logits.softmax(-1).topk(4, dim=-1)
    for t in range(1, len(ids)):
        assert [piece for piece, _ in s.expected[t]] == [tok.decode([i]) for i in best[t - 1].tolist()]
        np.testing.assert_allclose([p for _, p in s.expected[t]], probs[t - 1].numpy(), rtol=1e-4)


@pytest.mark.parametrize("window,stride,batch_size", [(16, 5, 3), (12, 1, 8), (10, 10, 2), (32, 16, 1)])
def test_sliding_windows_score_each_token_once_with_the_schemes_context(tok, window, stride, batch_size):
    model = make(tok, block_size=32)
    ids = tok.encode(TEXT)
    assert len(ids) > 3 * window
    calls = []
    s = token_surprise(model, tok, TEXT, window=window, stride=stride, batch_size=batch_size,
                       progress=lambda done, total: calls.append((done, total)))
    assert s.losses[0] is None and all(v is not None for v in s.losses[1:])
    assert calls[-1] == (len(ids) - 1, len(ids) - 1) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    step = min(stride, window - 1)   # stride == window keeps one token of overlap so every token has context
    for t in range(1, len(ids)):
        # the standard scheme: windows start at k*step; a token is scored in the first window holding it
        begin = max(0, (t - window) // step + 1) * step
        assert t - begin >= min(t, window - step)
        assert s.losses[t] == pytest.approx(direct_loss(model, ids[begin:t], ids[t]), abs=1e-5)


def test_a_bos_starts_every_window_and_is_not_scored():
    tok = BosCharTokenizer(sorted(set(TEXT)))
    model = make(tok, block_size=32)
    bos = tok.bos_id
    short = token_surprise(model, tok, TEXT[:20])
    assert short.ids[0] == bos and short.losses[0] is None
    assert short.losses[1] == pytest.approx(direct_loss(model, [bos], short.ids[1]), abs=1e-5)
    window, stride = 12, 4
    s = token_surprise(model, tok, TEXT, window=window, stride=stride)
    body = tok.encode(TEXT)
    assert s.ids == [bos] + body and all(v is not None for v in s.losses[1:])
    span = window - 1   # the BOS takes one place in each window
    for u in range(len(body)):
        begin = max(0, (u - span) // stride + 1) * stride
        assert s.losses[1 + u] == pytest.approx(direct_loss(model, [bos] + body[begin:u], body[u]), abs=1e-5)


def test_summary_mean_perplexity_and_bits_per_byte(tok):
    s = token_surprise(make(tok), tok, TEXT, window=16, stride=8)
    losses = s.losses[1:]
    m = s.summary()
    assert m["tokens"] == len(TEXT) and m["tokens_scored"] == len(TEXT) - 1
    assert m["mean_loss"] == pytest.approx(sum(losses) / len(losses))
    assert m["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)))
    # "é" is two UTF-8 bytes: bits per byte counts bytes, not characters
    assert m["bits_per_byte"] == pytest.approx(sum(losses) / math.log(2) / len(TEXT[1:].encode("utf-8")))
    assert len(TEXT[1:].encode("utf-8")) > len(TEXT) - 1


def hand_made(losses: list) -> TokenSurprise:
    pieces = [chr(ord("a") + i % 26) for i in range(len(losses))]
    return TokenSurprise(ids=list(range(len(losses))), pieces=pieces, losses=losses,
                         expected=[[] if v is None else [("x", 0.5)] for v in losses])


def test_worst_spans_find_planted_regions_in_order():
    losses = [None] + [1.0] * 79
    losses[40:48] = [9.0] * 8                 # the worst region
    losses[10:14] = [6.0] * 4                 # a milder one, half a span long
    losses[60] = 25.0                         # one very bad token: its spans average 4.0, above 3.5
    spans = worst_spans(hand_made(losses), k=3, span_tokens=8)
    assert (spans[0]["start"], spans[0]["end"]) == (40, 48) and spans[0]["mean_loss"] == pytest.approx(9.0)
    assert spans[1]["start"] <= 60 < spans[1]["end"] and spans[1]["worst_loss"] == 25.0
    assert spans[2]["start"] < 14 and spans[2]["end"] > 10
    assert spans[0]["text"] == "".join(hand_made(losses).pieces[40:48])


def test_worst_spans_are_disjoint_sorted_and_match_a_brute_force(tok):
    s = token_surprise(make(tok), tok, TEXT)
    spans = worst_spans(s, k=6, span_tokens=5)
    assert len(spans) == 6
    means = [sp["mean_loss"] for sp in spans]
    assert means == sorted(means, reverse=True)
    covered = [i for sp in spans for i in range(sp["start"], sp["end"])]
    assert len(covered) == len(set(covered))
    for sp in spans:
        inside = [v for v in s.losses[sp["start"]:sp["end"]] if v is not None]
        assert sp["end"] - sp["start"] == 5 and sp["mean_loss"] == pytest.approx(np.mean(inside))
        assert sp["worst_loss"] == max(inside)
    brute = max(np.mean([v for v in s.losses[a:a + 5] if v is not None]) for a in range(len(s.ids) - 4))
    assert spans[0]["mean_loss"] == pytest.approx(brute)


class SpanReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self.inside, self.tags = [], False, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "span":
            self.spans.append({"attrs": dict(attrs), "text": ""})
            self.inside = True

    def handle_endtag(self, tag):
        if tag == "span":
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.spans[-1]["text"] += data


def test_html_one_escaped_span_per_token_and_the_text_recovered(tok):
    s = token_surprise(make(tok), tok, TEXT, window=16)
    page = render_html(s, title="a <test> & more")
    reader = SpanReader()
    reader.feed(page)
    reader.close()
    assert len(reader.spans) == len(s.ids)
    assert "".join(sp["text"] for sp in reader.spans) == TEXT
    assert ">&lt;</span>" in page and ">&amp;</span>" in page and "a &lt;test&gt; &amp; more" in page
    assert "<script" not in page and "http" not in page          # self-contained: nothing fetched
    assert "Worst spans" in page and "nats" in page
    titles = [sp["attrs"]["title"] for sp in reader.spans]
    assert "first token" in titles[0] and all("loss" in t and "expected" in t for t in titles[1:])
    # redder (less green) background for a higher loss
    green = [int(re.search(r"rgb\(255,(\d+),", sp["attrs"]["style"]).group(1)) for sp in reader.spans[1:]]
    order = np.argsort(s.losses[1:])
    assert np.all(np.diff(np.array(green)[order]) <= 0)


def test_terminal_render_recovers_the_text(tok):
    s = token_surprise(make(tok), tok, TEXT, window=16)
    plain = render_terminal(s, color=False)
    legend, body = plain.split("\n", 1)
    assert "90th percentile" in legend and "\x1b" not in plain
    marks = re.findall(r"\[\d+\.\d\]", body)
    assert 0 < len(marks) <= 0.1 * len(s.ids) + 1
    assert re.sub(r"\[\d+\.\d\]", "", body) == TEXT
    coloured = render_terminal(s, color=True)
    assert "\x1b[38;5;16;48;5;" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured.split("\n", 1)[1]) == TEXT


def test_json_and_plot(tok, tmp_path):
    s = token_surprise(make(tok), tok, TEXT, top_k=2)
    spans = worst_spans(s, k=3)
    data = json.loads(json.dumps(to_json(s, spans)))
    assert data["summary"]["tokens_scored"] == len(TEXT) - 1 and len(data["worst_spans"]) == 3
    assert data["tokens"][0] == {"id": s.ids[0], "token": TEXT[0], "loss": None, "expected": []}
    assert len(data["tokens"][5]["expected"]) == 2 and set(data["tokens"][5]["expected"][0]) == {"token", "prob"}
    path = plot_surprise(s, tmp_path / "surprise.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs,words", [
    ({"text": ""}, "empty"),
    ({"text": "a"}, "single token"),
    ({"window": 64}, "--window"),
    ({"window": 1}, "--window"),
    ({"window": 16, "stride": 0}, "--stride"),
    ({"window": 16, "stride": 17}, "--stride"),
    ({"batch_size": 0}, "--batch-size"),
])
def test_bad_input_raises_a_message_naming_the_option(tok, kwargs, words):
    kwargs = {"text": TEXT, **kwargs}
    with pytest.raises(LLMLabError, match=words):
        token_surprise(make(tok), tok, kwargs.pop("text"), **kwargs)
    with pytest.raises(LLMLabError, match="span-tokens"):
        worst_spans(hand_made([None, 1.0]), span_tokens=0)
