"""Surprise: the per-token loss of a text under a model, shown as coloured text.

A token's surprise is -ln p(token | the tokens before it), in nats: the cross-entropy that training
minimises, one token at a time. Its mean over a text is the loss a training log reports, e^mean is
the perplexity, and sum / ln 2 / bytes is bits per byte, which compares models with different
tokenizers. High surprise marks what the model did not expect: names and numbers it cannot know, rare
words, the first token of a change of topic, and errors in the text (typos, a broken OCR line, a
wrong date). A repeated passage goes cold on its second copy: the model copies it (induction heads).

Reading the pictures: white is a token the model saw coming, deep red one it did not (the scale is
fixed, 0..10 nats, so pages are comparable; ln of the vocabulary size, ~10.8 for 49k tokens, is what
a guess at random would cost). Hover a token in the HTML page for its loss and the model's top-k
guesses; the worst-spans table lists the stretches with the highest mean loss.

Texts longer than the context are scored with the strided sliding window of the perplexity
literature (as in HF's perplexity guide): windows of `window` tokens start every `stride` tokens, and
each token is scored once, in the first window that holds it, so it sees at least window - stride
tokens of context (when the text has them). A model that expects a BOS gets it at the start of every
window, as llama.cpp's perplexity does, rather than a window that starts mid-text with no BOS.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from llmlab.core.errors import LLMLabError
from llmlab.inspect import plots
from llmlab.inspect.trace import encode_prompt, token_text

SCALE_NATS = 10.0   # the colour scale's top: fixed, so two pages can be compared by eye


@dataclass
class TokenSurprise:
    ids: list[int]
    pieces: list[str]
    losses: list[float | None]                      # nats; None where nothing predicts the token
    expected: list[list[tuple[str, float]]]         # top-k (piece, prob) the model gave at that position
    n_bytes: list[int] = field(default_factory=list)   # exact UTF-8 bytes per token (pieces may hold U+FFFD)

    def summary(self) -> dict:
        scored = [i for i, loss in enumerate(self.losses) if loss is not None]
        total = sum(self.losses[i] for i in scored)
        nbytes = sum(self.n_bytes[i] if self.n_bytes else len(self.pieces[i].encode()) for i in scored)
        mean = total / len(scored) if scored else float("nan")
        return {"tokens": len(self.ids), "tokens_scored": len(scored), "mean_loss": mean,
                "perplexity": math.exp(mean) if scored else float("nan"),
                "bits_per_byte": total / math.log(2) / nbytes if nbytes else float("nan")}


def _windows(n: int, window: int, stride: int, first: int) -> list[tuple[int, int, int]]:
    """(begin, end, score_from) over n tokens: tokens [score_from, end) are scored in [begin, end)."""
    plan, begin, scored_to = [], 0, first
    while scored_to < n:
        end = min(begin + window, n)
        plan.append((begin, end, scored_to))
        scored_to, begin = end, begin + stride
    return plan


@torch.no_grad()
def token_surprise(model, tokenizer, text: str, window: int | None = None, stride: int | None = None,
                   top_k: int = 3, batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> TokenSurprise:
    """Every token's loss under `model`, with the model's top_k guesses at each position."""
    ids = encode_prompt(tokenizer, text)
    block_size = model.config.block_size
    window = block_size if window is None else window
    if not 2 <= window <= block_size:
        raise LLMLabError(f"--window {window}: use 2..{block_size} tokens (the model's block_size), or leave it unset")
    stride = max(1, window // 2) if stride is None else stride
    if not 1 <= stride <= window:
        raise LLMLabError(f"--stride {stride}: use 1..{window} (the window); smaller strides give each token more context")
    if batch_size < 1:
        raise LLMLabError(f"--batch-size {batch_size}: use at least 1")
    # The BOS is kept at the front of every window; the rest (the body) is what the windows slide over.
    bos = getattr(tokenizer, "bos_id", None)
    prefix = ids[:1] if getattr(tokenizer, "add_bos", False) and bos is not None and ids[0] == bos else []
    body = ids[len(prefix):]
    span = window - len(prefix)
    # A token needs one token of context in its window (or the BOS), so stride == window still overlaps by one.
    step = min(stride, span if prefix else span - 1)
    plan = _windows(len(body), span, step, first=0 if prefix else 1)
    total = sum(end - start for _, end, start in plan)
    if total == 0:
        raise LLMLabError("the text is a single token: nothing predicts it; give a longer text")

    device = next(model.parameters()).device
    top_k = max(0, min(top_k, model.config.vocab_size))
    losses: list[float | None] = [None] * len(ids)
    top: list[list[tuple[int, float]]] = [[] for _ in ids]
    was_training = model.training
    model.eval()
    try:
        done = 0
        for b0 in range(0, len(plan), batch_size):
            batch = plan[b0:b0 + batch_size]
            rows = [prefix + body[begin:end] for begin, end, _ in batch]
            width = max(len(r) for r in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)          # right-padded: causal, so harmless
            want = torch.zeros(len(rows), width, dtype=torch.bool)
            targets = []
            for r, (row, (begin, end, start)) in enumerate(zip(rows, batch)):
                x[r, :len(row)] = torch.tensor(row)
                # body token u sits at len(prefix) + u - begin and is predicted one position earlier
                want[r, len(prefix) + start - begin - 1:len(prefix) + end - begin - 1] = True
                targets += range(start, end)
            logits = model(x.to(device), logits_mask=want.to(device))["logits"]     # (N, V), row-major
            for c in range(0, len(targets), 1024):                               # bounded float32 copies
                logp = logits[c:c + 1024].float().log_softmax(-1)
                tgt = torch.tensor([body[u] for u in targets[c:c + 1024]], device=logp.device)
                nll = (-logp.gather(1, tgt[:, None])[:, 0]).cpu().tolist()
                probs, best = logp.exp().topk(top_k, dim=-1) if top_k else (logp[:, :0], logp[:, :0])
                for u, loss, p, i in zip(targets[c:c + 1024], nll, probs.cpu().tolist(), best.cpu().tolist()):
                    losses[len(prefix) + u] = loss
                    top[len(prefix) + u] = list(zip(i, p))
            done += len(targets)
            if progress is not None:
                progress(done, total)
    finally:
        model.train(was_training)
    piece = {i: token_text(tokenizer, i) for i in set(ids) | {i for t in top for i, _ in t}}
    return TokenSurprise(ids=list(ids), pieces=[piece[i] for i in ids], losses=losses,
                         expected=[[(piece[i], p) for i, p in t] for t in top],
                         n_bytes=[len(tokenizer.decode_bytes([i])) for i in ids])


def _expected_json(expected: list[tuple[str, float]]) -> list[dict]:
    return [{"token": t, "prob": p} for t, p in expected]


def worst_spans(s: TokenSurprise, k: int = 10, span_tokens: int = 8) -> list[dict]:
    """The k non-overlapping spans of span_tokens tokens with the highest mean loss, worst first:
    every window ranked by its mean, then taken greedily unless it overlaps one already taken."""
    if span_tokens < 1:
        raise LLMLabError(f"--span-tokens {span_tokens}: use at least 1")
    n, span_tokens = len(s.ids), min(span_tokens, len(s.ids))
    loss = np.array([0.0 if v is None else v for v in s.losses])
    scored = np.array([v is not None for v in s.losses], dtype=float)
    csum, ccount = np.concatenate([[0], np.cumsum(loss)]), np.concatenate([[0], np.cumsum(scored)])
    sums = csum[span_tokens:] - csum[:-span_tokens]
    counts = ccount[span_tokens:] - ccount[:-span_tokens]
    means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    taken, spans = np.zeros(n, dtype=bool), []
    for start in np.argsort(-means, kind="stable"):
        end = start + span_tokens
        if len(spans) >= k or means[start] == -np.inf:
            break
        if taken[start:end].any():
            continue
        taken[start:end] = True
        worst = max((i for i in range(start, end) if s.losses[i] is not None), key=lambda i: s.losses[i])
        spans.append({"start": int(start), "end": int(end), "mean_loss": float(means[start]),
                      "text": "".join(s.pieces[start:end]), "worst_token": s.pieces[worst],
                      "worst_loss": s.losses[worst], "expected": _expected_json(s.expected[worst])})
    return spans


def _visible(text: str) -> str:
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5")


def _background(loss: float | None) -> str:
    if loss is None:
        return "transparent"
    fade = round(215 * min(max(loss, 0.0), SCALE_NATS) / SCALE_NATS)
    return f"rgb(255,{255 - fade},{255 - fade})"


def _summary_line(s: TokenSurprise) -> str:
    m = s.summary()
    return (f"{m['tokens_scored']} tokens scored, mean loss {m['mean_loss']:.3f} nats, "
            f"perplexity {m['perplexity']:.2f}, {m['bits_per_byte']:.3f} bits per byte")


def _guesses(expected: list[tuple[str, float]]) -> str:
    return ", ".join(f"{t!r} {p:.2f}" for t, p in expected)


def render_html(s: TokenSurprise, title: str = "", spans: list[dict] | None = None) -> str:
    """One self-contained page: the summary, a legend, the worst spans, then the text, token by token."""
    esc = html.escape
    spans = worst_spans(s) if spans is None else spans
    tokens = []
    for i, (piece, loss) in enumerate(zip(s.pieces, s.losses)):
        tip = f"#{i} " + ("first token: nothing predicts it" if loss is None
                          else f"loss {loss:.2f} nats; expected {_guesses(s.expected[i])}")
        tokens.append(f'<span class="t" style="background:{_background(loss)}" title="{esc(tip)}">{esc(piece)}</span>')
    stops = ", ".join(f"{_background(v)} {100 * v / SCALE_NATS:.0f}%" for v in (0, SCALE_NATS / 2, SCALE_NATS))
    rows = "".join(f"<tr><td>{r}</td><td>{sp['start']}&ndash;{sp['end'] - 1}</td><td>{sp['mean_loss']:.2f}</td>"
                   f"<td class=mono>{esc(_visible(sp['text']))}</td><td class=mono>{esc(repr(sp['worst_token']))} "
                   f"{sp['worst_loss']:.2f}</td><td class=mono>{esc(_guesses([(e['token'], e['prob']) for e in sp['expected']]))}"
                   "</td></tr>" for r, sp in enumerate(spans, 1))
    head = esc(title or "surprise")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{head}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #111; }}
.mono, .text {{ font-family: monospace; }}
.text {{ white-space: pre-wrap; line-height: 1.6; border-top: 1px solid #ccc; padding-top: 1em; }}
.t:hover {{ outline: 1px solid #333; }}
.bar {{ display: inline-block; width: 20em; height: 1em; vertical-align: middle; border: 1px solid #999;
        background: linear-gradient(to right, {stops}); }}
table {{ border-collapse: collapse; font-size: 90%; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{head}</h1>
<p>{esc(_summary_line(s))}</p>
<p>loss per token: 0 nats <i class="bar"></i> {SCALE_NATS:g}+ nats (white: expected, red: surprising);
hover a token for its loss and the model's top guesses.</p>
<h2>Worst spans</h2>
<table><tr><th>#</th><th>tokens</th><th>mean loss</th><th>text</th><th>worst token</th><th>expected there</th></tr>
{rows}</table>
<div class="text">{"".join(tokens)}</div>
</body></html>
"""


_BUCKETS = ((1.0, 231), (2.0, 224), (4.0, 217), (6.0, 210), (8.0, 203), (math.inf, 196))  # nats -> xterm 256


def _ansi(text: str, colour: int) -> str:
    # Coloured line by line: a background carried over a newline would paint the rest of the row.
    return "\n".join(f"\x1b[38;5;16;48;5;{colour}m{part}\x1b[0m" if part else "" for part in text.split("\n"))


def render_terminal(s: TokenSurprise, color: bool = True) -> str:
    """A legend line, then the text: ANSI 256-colour backgrounds by loss, or with color=False plain
    text with [loss] after each token above the 90th percentile."""
    if color:
        lows = [0.0] + [hi for hi, _ in _BUCKETS[:-1]]
        legend = " ".join(_ansi(f" {lo:g}-{hi:g} " if hi < math.inf else f" {lo:g}+ ", c)
                          for lo, (hi, c) in zip(lows, _BUCKETS))
        out = [f"{_summary_line(s)}; loss (nats): {legend}\n"]
        for piece, loss in zip(s.pieces, s.losses):
            out.append(piece if loss is None else _ansi(piece, next(c for hi, c in _BUCKETS if loss < hi)))
        return "".join(out)
    scored = [v for v in s.losses if v is not None]
    cut = float(np.percentile(scored, 90))
    out = [f"{_summary_line(s)}; [x.x] marks tokens above the 90th percentile ({cut:.2f} nats)\n"]
    for piece, loss in zip(s.pieces, s.losses):
        out.append(piece + (f"[{loss:.1f}]" if loss is not None and loss > cut else ""))
    return "".join(out)


def plot_surprise(s: TokenSurprise, path) -> Path:
    """Loss against position, each token faint and a rolling mean bold."""
    positions = np.array([i for i, v in enumerate(s.losses) if v is not None])
    values = np.array([v for v in s.losses if v is not None])
    fig, (ax,) = plots.figure(1, 1, cell=(10.0, 3.5))
    ax.plot(positions, values, lw=0.6, alpha=0.5, color="tab:red", label="per token")
    run = max(1, min(64, len(values) // 20))
    if run > 1:
        rolling = np.convolve(values, np.ones(run) / run, mode="valid")
        ax.plot(positions[run - 1:], rolling, lw=1.8, color="black", label=f"mean of last {run}")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats)")
    ax.set_title(_summary_line(s), fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    return plots.save(fig, path)


def to_json(s: TokenSurprise, spans: list[dict]) -> dict:
    return {"summary": s.summary(),
            "tokens": [{"id": i, "token": t, "loss": v, "expected": _expected_json(e)}
                       for i, t, v, e in zip(s.ids, s.pieces, s.losses, s.expected)],
            "worst_spans": spans}
