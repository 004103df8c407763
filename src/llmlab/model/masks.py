"""Attention masks, built from positions rather than stored: True = this query may see this key.

Every mask here is (B, 1, T, S) bool and broadcasts over heads: T new queries, S keys.

    causal_mask(lengths, T, S)   row b already holds lengths[b] tokens in its cache; its T new
                                 queries sit at positions lengths[b] .. lengths[b] + T - 1 and see
                                 every key at a position <= their own. With an empty cache
                                 (lengths = 0, S = T) this is the usual lower triangle; with a
                                 filled one it is aligned to the bottom right, which is NOT what
                                 SDPA's `is_causal=True` does for T < S (it aligns to the top left,
                                 so new queries would miss most of the cache).
    document_mask(doc_ids)       packed sequences: causal, and only within one's own document.

The KV cache (llmlab.infer.kv_cache), evaluation and serving build their masks through these.
"""

from __future__ import annotations

import torch


def causal_mask(lengths: torch.Tensor, new_tokens: int, key_len: int) -> torch.Tensor:
    """(B, 1, T, S): query t of row b (at position lengths[b] + t) sees keys 0 .. lengths[b] + t."""
    query_pos = lengths[:, None] + torch.arange(new_tokens, device=lengths.device)      # (B, T)
    key_pos = torch.arange(key_len, device=lengths.device)                               # (S,)
    return (key_pos[None, None, :] <= query_pos[:, :, None])[:, None]                    # (B, 1, T, S)


def bottom_right_causal(new_tokens: int, key_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, S): the last T of S positions, each seeing every key up to itself (one sequence)."""
    return torch.ones(new_tokens, key_len, dtype=torch.bool, device=device).tril(diagonal=key_len - new_tokens)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) from doc_ids (B, T): causal, and a token sees only tokens of its own document.

    With several examples packed into one sequence, this keeps each example's attention inside
    itself, so a packed batch computes what the examples would compute one by one (given
    positions that restart at each document)."""
    T = doc_ids.size(1)
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]                                # (B, T, T)
    return (same_doc & bottom_right_causal(T, T, doc_ids.device))[:, None]
