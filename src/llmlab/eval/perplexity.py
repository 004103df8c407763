"""Perplexity of a text: exp(mean negative log-likelihood per token), over sliding windows.

A text longer than the model's context is scored in windows of `ctx` tokens that start every
`stride` tokens. Each window scores only the tokens that the previous window did not, so every
token is counted once, and (with stride < ctx) each is predicted with at least ctx - stride tokens
of context: stride = ctx is fastest but starts every window cold; a smaller stride is closer to
what the model could do with unlimited context (the method of HF's "Perplexity of fixed-length
models" guide). Bits per byte, NLL / ln 2 summed over tokens divided by the text's UTF-8 bytes,
compares models whose tokenizers differ.

`windows` is the one place that decides which tokens each window scores; `scored_logits` runs a
model over them, and llmlab.eval.reference reuses both, so a model and its reference are always
compared on identical windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError


def windows(n_ids: int, ctx: int, stride: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(start, end, first_new) for each window over `n_ids` token ids.

    The window feeds ids[start:end - 1] to the model and predicts ids[start + 1:end]; its
    predictions from index `first_new` on are the new ones. The first id has no context and is
    never scored, so the windows score ids[1:] exactly once, in order: prediction `first_new` of a
    window is scored position start + first_new (position p predicts ids[p + 1]).
    """
    stride = ctx if stride is None else stride
    if ctx < 1:
        raise LLMLabError(f"ctx {ctx}: the context must be at least 1 token")
    if not 0 < stride <= ctx:
        raise LLMLabError(f"stride {stride} must be in 1..ctx ({ctx}): a larger stride would skip tokens")
    if n_ids < 2:
        raise LLMLabError(f"{n_ids} token(s): perplexity needs at least 2 (the first one is only context)")
    start, scored_until = 0, 1
    while scored_until < n_ids:
        end = min(start + ctx + 1, n_ids)
        yield start, end, scored_until - start - 1
        scored_until = end
        start += stride


def scored_logits(model: torch.nn.Module, ids: list[int], ctx: int, stride: int | None = None,
                  device: torch.device | str = "cpu", progress_label: str | None = None,
                  ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(position, logits (n, V) float32, targets (n,)) for the new predictions of each window.
    position: the first of the n scored positions (0 .. len(ids) - 2). progress_label: show a
    progress bar (tokens/s, ETA) on stderr under that name."""
    from llmlab.core.progress import progress

    model.eval()
    bar = progress(total=len(ids) - 1, desc=progress_label, unit="tok", disable=None if progress_label else True)
    with bar:
        for start, end, first_new in windows(len(ids), ctx, stride):
            window = torch.tensor(ids[start:end], device=device)
            with torch.no_grad():   # per window, not around the yield: grad mode would leak to the caller
                logits = model(window[None, :-1])["logits"][0, first_new:].float()    # (n, V)
            yield start + first_new, logits, window[1 + first_new:]
            bar.update(len(logits))


def perplexity(model: torch.nn.Module, ids: list[int], ctx: int, stride: int | None = None,
               text_bytes: int | None = None, device: torch.device | str = "cpu",
               progress_label: str | None = None) -> dict[str, float]:
    """{"perplexity", "nll" (mean per token), "tokens", "bits_per_byte" (when text_bytes is given)}."""
    total_nll, total_tokens = 0.0, 0
    for _, logits, targets in scored_logits(model, ids, ctx, stride, device, progress_label):
        total_nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        total_tokens += len(targets)
    return summarize(total_nll, total_tokens, text_bytes)


def summarize(total_nll: float, tokens: int, text_bytes: int | None = None) -> dict[str, float]:
    """The perplexity dict from a summed NLL (nats) over `tokens` scored tokens."""
    mean = total_nll / max(tokens, 1)
    out = {"perplexity": math.exp(mean), "nll": mean, "tokens": tokens}
    if text_bytes:
        out["bits_per_byte"] = total_nll / math.log(2) / text_bytes
    return out
