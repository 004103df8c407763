"""The KV cache: keys and values of every past position, so each new token costs one position.

Without a cache, generating token t re-runs the model over all t previous tokens. With it, the
prompt is processed once (prefill), and each decode step feeds only the newest token, whose query
attends to the stored keys/values. Memory: 2 x layers x kv_heads x head_dim x positions x bytes --
for SmolLM2-135M (30 layers, 3 kv heads of 64) that is 46 KB per position in float32.

The cache is preallocated for a fixed number of *slots* (B sequences x max_len positions), one
buffer per layer. Sequences in a batch are left-padded to a common length, so slot j holds the
j-th position of the padded batch; the engine passes an attention mask that hides pad slots and
keeps RoPE positions per sequence (slot - padding).

Two ways to read it back:
  dynamic (default)  attention sees slots [0, length): shapes grow by one every step, and no
                     time goes to slots not written yet.
  static             a one-token (decode) step sees all max_len slots and the mask hides the ones
                     not written yet; the write position is a tensor (`write_slots`). Nothing
                     about the shapes changes from step to step, so a compiled decode step
                     (llmlab.infer.compiled_decode) is traced once and replayed. A multi-token
                     pass (the prefill, run eagerly) still sees only [0, length + T): it would
                     otherwise spend attention FLOPs on empty slots.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", static: bool = False):
        # One tensor per layer, not one (n_layer, ...) tensor: a compiled graph that writes into a
        # view of a larger buffer copies the whole buffer, one that writes into its own tensor does not.
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len, self.static = max_len, static
        self.length = 0  # slots filled so far (the same for every sequence of the batch)
        self.write_slots: torch.Tensor | None = None  # set by begin(): the slots this forward pass writes

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, K, T, D) into slots [length, length + T); return the slots attention sees:
        [0, length + T), or all max_len slots for a one-token step in static mode."""
        if self.static and k.size(2) == 1:
            self.k[layer][:, :, self.write_slots] = k
            self.v[layer][:, :, self.write_slots] = v
            return self.k[layer], self.v[layer]
        T = k.size(2)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > {self.max_len} allocated")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def begin(self, n: int) -> None:
        """Called before a forward pass that adds n positions: sets the slots it writes."""
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length + n} positions > {self.max_len} allocated")
        self.write_slots = torch.arange(self.length, self.length + n, device=self.k[0].device)

    def attention_mask(self, pad: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, T, S) bool for the T slots being written (after `begin`); True = may attend.

        Query slot q sees key slots <= q that are not padding (pad[b] = how many slots sequence b
        is left-padded by). A pad slot may see itself, so no softmax row is empty (an all -inf row
        gives NaN). A static decode step always needs the mask (it also hides slots not written
        yet); otherwise, without padding, None means plain causal attention."""
        T = self.write_slots.size(0)
        full = self.static and T == 1
        if not full and not bool(pad.any()):
            return None
        q = self.write_slots[:, None]                                       # (T, 1)
        S = self.max_len if full else self.length + T
        k = torch.arange(S, device=pad.device)[None, :]                     # (1, S)
        causal = k <= q                                                     # (T, S)
        not_pad = k[None] >= pad[:, None, None]                             # (B, 1, S)
        return ((causal[None] & not_pad) | (k == q)[None])[:, None]

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has written its n new positions."""
        self.length += n

    def reset(self) -> None:
        self.length = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
