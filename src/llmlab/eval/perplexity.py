"""Perplexity of a text: exp(mean negative log-likelihood per token), over sliding windows.

A text longer than the model's context is scored in windows of `ctx` tokens that start every
`stride` tokens. Each window scores only the tokens that the previous window did not, so every
token is counted once, and (with stride < ctx) each is predicted with at least ctx - stride tokens
of context: stride = ctx is fastest but starts every window cold; a smaller stride is closer to
what the model could do with unlimited context (the method of HF's "Perplexity of fixed-length
models" guide). Bits per byte, NLL / ln 2 summed over tokens divided by the text's UTF-8 bytes,
compares models whose tokenizers differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: list[int], ctx: int, stride: int | None = None,
               text_bytes: int | None = None, device: torch.device | str = "cpu") -> dict[str, float]:
    """{"perplexity", "nll", "tokens", "bits_per_byte" (when text_bytes is given)} of `ids`."""
    stride = stride or ctx
    if not 0 < stride <= ctx:
        raise ValueError(f"stride {stride} must be in 1..ctx ({ctx})")
    model.eval()
    total_nll, total_tokens, scored_until = 0.0, 0, 1   # the first token has no context: never scored
    start = 0
    while scored_until < len(ids):
        window = torch.tensor(ids[start:start + ctx + 1], device=device)
        logits = model(window[None, :-1])["logits"][0].float()                      # (T, V)
        targets = window[1:]
        first_new = scored_until - start - 1       # positions before this were scored by an earlier window
        nll = F.cross_entropy(logits[first_new:], targets[first_new:], reduction="sum")
        total_nll += float(nll)
        total_tokens += len(targets) - first_new
        scored_until = start + len(window)
        start += stride
    mean = total_nll / max(total_tokens, 1)
    out = {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens}
    if text_bytes:
        out["bits_per_byte"] = total_nll / math.log(2) / text_bytes
    return out
