"""The KV cache: keys and values of every past position, so each new token costs one position.

Without a cache, generating token t re-runs the model over all t previous tokens. With it, the
prompt is processed once (prefill), and each decode step feeds only the newest token, whose query
attends to the stored keys/values. Memory: 2 x layers x kv_heads x head_dim x positions x bytes --
for SmolLM2-135M (30 layers, 3 kv heads of 64) that is 46 KB per position in float32.

The cache is preallocated for B sequences (rows) x max_len positions, one buffer per layer, and
keeps a length per row (`lengths`, a (B,) tensor). Slot s of row b holds that sequence's token at
position s, so RoPE positions, cache slots and mask all come from `lengths`:

    begin(T)     the T new tokens of row b take positions lengths[b] .. lengths[b] + T - 1
    update(...)  each layer writes its keys/values there, row by row
    mask         query at position p sees keys at positions <= p (llmlab.model.masks.causal_mask)
    advance(n)   row b now holds lengths[b] + n[b] tokens

Rows need not agree: a right-padded prefill writes T slots in every row but advances each row by
its own prompt length, and the pad slots it wrote are overwritten by that row's next tokens before
any query can see them (a query at position p sees only slots <= p, all written by then). So a
padded batch needs no padding mask, and the same cache serves one prompt, a batch, chunked prefill
against a filled cache, and a scheduler that admits and retires rows between steps.

Two ways to read it back:
  dynamic (default)  attention sees slots [0, max(lengths) + T): shapes grow by one every step,
                     and no time goes to slots not written yet.
  static             a one-token (decode) step sees all max_len slots and the mask hides the ones
                     not written yet. Nothing about the shapes changes from step to step (the
                     positions are a tensor), so a compiled decode step
                     (llmlab.infer.compiled_decode) is traced once and replayed. A multi-token pass
                     (the prefill, run eagerly) still sees only [0, max(lengths) + T).
"""

from __future__ import annotations

import torch

from llmlab.model.masks import causal_mask


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", static: bool = False):
        # One tensor per layer, not one (n_layer, ...) tensor: a compiled graph that writes into a
        # view of a larger buffer copies the whole buffer, one that writes into its own tensor does not.
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len, self.static = max_len, static
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)  # tokens held per row
        self.filled = 0                             # max(lengths), kept as an int: slicing needs no sync
        self.positions: torch.Tensor | None = None  # (B, T) set by begin(): where this pass writes
        self._rows = torch.arange(batch, device=device)[:, None]

    def begin(self, new_tokens: int) -> torch.Tensor:
        """Before a forward pass that feeds `new_tokens` tokens to every row: their positions (B, T)."""
        if self.filled + new_tokens > self.max_len:
            raise ValueError(f"KV cache overflow: {self.filled + new_tokens} positions > {self.max_len} allocated")
        self.positions = self.lengths[:, None] + torch.arange(new_tokens, device=self.lengths.device)
        return self.positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, K, T, D) at each row's positions (set by `begin`); return the slots
        attention sees: [0, filled + T), or all max_len slots for a one-token step in static mode."""
        # Advanced indices (rows, positions) around a full slice: the indexed view is (B, T, K, D).
        self.k[layer][self._rows, :, self.positions] = k.transpose(1, 2)
        self.v[layer][self._rows, :, self.positions] = v.transpose(1, 2)
        T = k.size(2)
        if self.static and T == 1:
            return self.k[layer], self.v[layer]
        end = self.filled + T
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def attention_mask(self) -> torch.Tensor | None:
        """(B, 1, T, S) bool for the pass set up by `begin`: each query sees the keys at positions up
        to its own. None when the cache was empty (S == T): plain causal attention, SDPA's fast path."""
        T = self.positions.size(1)
        if self.static and T == 1:
            return causal_mask(self.lengths, 1, self.max_len)
        if self.filled == 0:
            return None
        return causal_mask(self.lengths, T, self.filled + T)

    def advance(self, new_tokens: int | torch.Tensor) -> None:
        """After every layer has written: row b now holds lengths[b] + new_tokens[b] tokens."""
        self.lengths += new_tokens
        if isinstance(new_tokens, int):
            self.filled += new_tokens
        else:
            self.filled = int(self.lengths.max())

    def reset(self) -> None:
        self.lengths.zero_()
        self.filled = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
