"""Sampling from a trained model without a KV cache: the readable baseline (nanoGPT's way).

Each new token re-runs the model over the last `block_size` tokens. Quadratic, but for the small
models a training run produces it is fast enough, and there is nothing hidden. The KV-cached
engine for real pretrained models lives in `llmlab.infer`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k most likely tokens, then the smallest set with probability >= top_p
    (nucleus sampling, Holtzman et al. 2020, arXiv:1904.09751); the rest get -inf."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (always keep the first).
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_tokens(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                  device: torch.device | None = None) -> Iterator[int]:
    """Yield `max_new_tokens` token ids continuing `prompt_ids` (temperature 0 = greedy)."""
    model.eval()
    device = device or next(model.parameters()).device
    block = model.config.block_size
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        logits = model(ids[:, -block:])["logits"][:, -1, :].float()               # (1, V)
        if temperature <= 0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        ids = torch.cat([ids, next_id], dim=1)
        yield int(next_id)
