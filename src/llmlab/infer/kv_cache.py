"""The KV cache: keys and values of every past position, so each new token costs one position.

Without a cache, generating token t re-runs the model over all t previous tokens. With it, the
prompt is processed once (prefill), and each decode step feeds only the newest token, whose query
attends to the stored keys/values. Memory: 2 x layers x kv_heads x head_dim x positions x bytes --
for SmolLM2-135M (30 layers, 3 kv heads of 64) that is 46 KB per position in float32.

The cache is preallocated for a fixed number of *slots* (B sequences x max_len positions), so
shapes never change (what `torch.compile` wants). Sequences in a batch are left-padded to a common
length, so slot j holds the j-th position of the padded batch; the engine passes an attention mask
that hides pad slots and keeps RoPE positions per sequence (slot - padding).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # slots filled so far (the same for every sequence of the batch)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, K, T, D) into slots [length, length + T); return slots [0, length + T)."""
        T = k.size(2)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > {self.max_len} allocated")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has written its n new positions."""
        self.length += n

    def reset(self) -> None:
        self.length = 0

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
