"""Score every attention head on a probe whose right answer is known, and rank them.

    induction        random tokens, then the same tokens again: r_1 .. r_n r_1 .. r_n. In the second
                     copy, at token r_j, an induction head attends to r_{j+1} of the first copy (the
                     token that followed the current one last time) and so predicts it: the mechanism
                     behind in-context copying and much of in-context learning (Olsson et al. 2022,
                     "In-context learning and induction heads"; Elhage et al. 2021). Score: the mean
                     attention from each second-copy position t to t - n + 1.
    previous-token   the same random tokens: the mean attention from t to t - 1. Induction needs one
                     (in an earlier layer) to write "what came before me" into each position.

Random tokens make the probe fair: nothing in them can be predicted except by copying, so a head
that scores high does it for that reason (the score is the attention mass on one key, from 0 to 1).
A uniform head scores about 1/(t+1) per query: 0.01 to 0.02 at the default length of 50.

    head_scores(model, tokenizer, probe)   (L, H) scores
    copy_loss(model, tokenizer, heads)     the loss on the second copy with `heads` ablated: does
                                           removing the top-scoring heads break copying, and removing
                                           as many others not?
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.inspect import plots
from llmlab.inspect.trace import ablated_heads

PROBES = ("induction", "previous-token")


def probe_tokens(pool: list[int], length: int, batch: int, seed: int, bos: int | None) -> torch.Tensor:
    """(batch, [1 +] 2 * length) ids: each row a random sequence (no repeats within it when the pool
    allows, so a copy has one right answer) written twice, after a BOS when the model wants one."""
    generator = torch.Generator().manual_seed(seed)
    pool_t = torch.tensor(pool)
    rows = []
    for _ in range(batch):
        if length <= len(pool):
            first = pool_t[torch.randperm(len(pool), generator=generator)[:length]]
        else:
            first = pool_t[torch.randint(len(pool), (length,), generator=generator)]
        row = torch.cat([first, first])
        rows.append(torch.cat([torch.tensor([bos]), row]) if bos is not None else row)
    return torch.stack(rows)


def token_pool(tokenizer, vocab_size: int) -> list[int]:
    """Ordinary tokens: the vocabulary without BOS, EOS and the named special tokens."""
    special = {tokenizer.bos_id, tokenizer.eos_id} | set(getattr(tokenizer, "special_tokens", {}).values())
    return [i for i in range(vocab_size) if i not in special]


def probe_batch(model: nn.Module, tokenizer, length: int, batch: int, seed: int) -> tuple[torch.Tensor, int, int]:
    """(ids (batch, T) on the model's device, the copy length that fits block_size, the BOS offset)."""
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    block_size = model.config.block_size
    length = min(length, (block_size - (bos is not None)) // 2)
    if length < 2:
        raise LLMLabError(f"--length: the model's block_size {block_size} leaves no room for a repeated sequence")
    ids = probe_tokens(token_pool(tokenizer, model.config.vocab_size), length, batch, seed, bos)
    return ids.to(next(model.parameters()).device), length, int(bos is not None)


@torch.no_grad()
def head_scores(model: nn.Module, tokenizer, probe: str = "induction", length: int = 50, batch: int = 4,
                seed: int = 0) -> torch.Tensor:
    """(L, H) scores in [0, 1] of every head on `probe`."""
    if probe not in PROBES:
        raise LLMLabError(f"--task {probe!r}: the probes are {', '.join(PROBES)}")
    ids, length, offset = probe_batch(model, tokenizer, length, batch, seed)
    was_training = model.training
    model.eval()
    try:
        attentions = model(ids, return_attention=True, last_only=True)["attentions"]
    finally:
        model.train(was_training)
    if probe == "induction":
        queries = torch.arange(offset + length + 1, offset + 2 * length)              # second copy, from r_2
        keys = queries - length + 1                                                   # after the earlier r_j
    else:
        queries = torch.arange(offset + 1, offset + 2 * length)
        keys = queries - 1
    # each layer's weights (B, H, T, T) -> the mass on the key that answers the probe, averaged
    return torch.stack([w[:, :, queries, keys].float().mean(dim=(0, 2)).cpu() for w in attentions])


@torch.no_grad()
def copy_loss(model: nn.Module, tokenizer, heads: dict[int, list[int]] | None = None, length: int = 50,
              batch: int = 4, seed: int = 0, mode: str = "zero") -> float:
    """Mean loss (nats) on the second copy of the probe sequences, r_2 .. r_n, with `heads` ablated:
    the causal check of the induction story. Intact, a model that copies in context predicts these
    nearly for free; if the heads the probe ranked highest are what does the copying, ablating them
    should raise this loss far more than ablating as many other heads (Olsson et al. 2022, sec. 5)."""
    ids, length, offset = probe_batch(model, tokenizer, length, batch, seed)
    targets = torch.full_like(ids, -100)
    second = slice(offset + length + 1, offset + 2 * length)
    targets[:, second] = ids[:, second]
    was_training = model.training
    model.eval()
    try:
        with ablated_heads(model, heads or {}, mode):
            logits = model(ids)["logits"]
    finally:
        model.train(was_training)
    return float(F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100))


def ranked(scores: torch.Tensor, top: int | None = None) -> list[dict]:
    """Heads sorted by score, best first: [{"head": "L.H", "layer", "index", "score"}]."""
    n_head = scores.size(1)
    order = scores.flatten().argsort(descending=True)
    out = [{"head": f"{int(i) // n_head}.{int(i) % n_head}", "layer": int(i) // n_head, "index": int(i) % n_head,
            "score": round(float(scores.flatten()[i]), 4)} for i in order]
    return out[:top] if top else out


def plot_scores(scores: torch.Tensor, probe: str, path: str | Path, top: int = 12) -> Path:
    """Left: every head's score, layers down, heads across. Right: the best `top` heads as bars."""
    L, H = scores.shape
    fig, (grid, bars) = plots.figure(1, 2, cell=(max(4.0, 0.45 * H + 2), max(4.0, 0.2 * L + 1.5)))
    plots.heatmap(grid, scores.numpy(), xlabels=[str(h) for h in range(H)], ylabels=[str(layer) for layer in range(L)],
                  vmin=0, vmax=max(float(scores.max()), 1e-6), colorbar=f"{probe} score",
                  title=f"{probe} score of every head")
    grid.set_xlabel("head")
    grid.set_ylabel("layer")
    best = ranked(scores, top)
    bars.barh([b["head"] for b in best][::-1], [b["score"] for b in best][::-1], color="C1")
    bars.set_xlabel(f"{probe} score (attention mass on the probe's answer)")
    bars.set_title(f"top {len(best)} heads", fontsize=9)
    bars.set_xlim(0, 1)
    return plots.save(fig, path)
