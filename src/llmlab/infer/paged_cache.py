"""The paged KV cache: one pool of blocks per layer, and attention for a packed step of many sequences.

Pool layout, per layer: k[layer] and v[layer] of shape (num_blocks, block_size, K, D). Position p of
a sequence lives in block table[p // block_size] at offset p % block_size
(llmlab.infer.block_manager decides which blocks; this file only stores and reads them).

A continuous-batching step packs every scheduled chunk into ONE row of N tokens, ids (1, N): say
fifteen one-token decodes and a 200-token prompt chunk. Every linear layer then runs once over all
N tokens -- the weights are read once per step, whatever the batch -- and only attention is per
sequence, since each attends to its own history. `attend` does that part:

    1. write the N new keys/values into their slots (one index_copy_ per layer)
    2. decodes, batched: gather each decoding sequence's blocks into a padded (G, K, S, D) tensor
       and run one SDPA call with a mask hiding each row's unwritten tail
    3. each prompt chunk on its own: against its own keys (first chunk: plain causal attention)
       or its gathered blocks (later chunks and prefix-cache hits)

Gathering copies the context once per layer per step. A fused paged-attention kernel (vLLM's) reads
the blocks in place instead; docs/08-serving.md measures what the copy costs here.
The model's Attention hands its queries, keys and values to `attend` when the cache has one
(llmlab.model.transformer.Attention.forward), and applies the output projection as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.infer.scheduler import Chunk
from llmlab.model.masks import causal_mask


class PagedKVCache:
    def __init__(self, n_layer: int, num_blocks: int, block_size: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (num_blocks, block_size, n_kv_head, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.block_size, self.device = block_size, torch.device(device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def prepare(self, chunks: list[Chunk]) -> torch.Tensor:
        """Lay out a step: where each of its tokens is written and what each query attends to.
        Returns the positions (1, N) of the packed tokens, for the model's rotary embeddings."""
        bs, dev = self.block_size, self.device
        positions, slots = [], []
        decodes, prompts, offset = [], [], 0
        for c in chunks:
            pos = range(c.start, c.start + c.length)
            positions.extend(pos)
            slots.extend(c.sequence.blocks[p // bs] * bs + p % bs for p in pos)
            (decodes if c.length == 1 else prompts).append((offset, c))
            offset += c.length
        self.slots = torch.tensor(slots, device=dev)
        # Decodes: token indices in the pack, padded block tables, and each row's position.
        self.decode_rows = None
        if decodes:
            width = max(len(c.sequence.blocks) for _, c in decodes)
            tables = [c.sequence.blocks + [0] * (width - len(c.sequence.blocks)) for _, c in decodes]
            self.decode_rows = (torch.tensor([i for i, _ in decodes], device=dev),
                                torch.tensor(tables, device=dev),
                                torch.tensor([c.start for _, c in decodes], device=dev))
        # Prompt chunks: (slice of the pack, its block table or None when it starts at 0, its start).
        self.prompt_chunks = []
        for i, c in prompts:
            table = None if c.start == 0 else torch.tensor(c.sequence.blocks[:(c.start + c.length - 1) // bs + 1],
                                                           device=dev)
            self.prompt_chunks.append((slice(i, i + c.length), table, c.start))
        return torch.tensor(positions, device=dev)[None]

    def _gather(self, layer: int, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, blocks) block tables -> keys and values (G, K, blocks * block_size, D)."""
        G, n = tables.shape
        k = self.k[layer][tables].view(G, n * self.block_size, *self.k[layer].shape[2:]).transpose(1, 2)
        v = self.v[layer][tables].view(G, n * self.block_size, *self.v[layer].shape[2:]).transpose(1, 2)
        return k, v

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, H, N, D), k and v (1, K, N, D) of the packed step (rotary already applied) ->
        attention output (1, H, N, D). Grouped-query heads are matched by SDPA (enable_gqa)."""
        kv_shape = self.k[layer].shape
        self.k[layer].view(-1, *kv_shape[2:]).index_copy_(0, self.slots, k[0].transpose(0, 1))
        self.v[layer].view(-1, *kv_shape[2:]).index_copy_(0, self.slots, v[0].transpose(0, 1))
        out = torch.empty_like(q)
        if self.decode_rows is not None:
            index, tables, starts = self.decode_rows
            keys, values = self._gather(layer, tables)                               # (G, K, S, D)
            queries = q[0, :, index].transpose(0, 1)[:, :, None]                     # (G, H, 1, D)
            mask = causal_mask(starts, 1, keys.size(2))                              # (G, 1, 1, S)
            y = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=True)
            out[0, :, index] = y[:, :, 0].transpose(0, 1)
        for span, table, start in self.prompt_chunks:
            queries = q[:, :, span]
            if table is None:                                # a first chunk sees only itself
                y = F.scaled_dot_product_attention(queries, k[:, :, span], v[:, :, span], is_causal=True,
                                                   enable_gqa=True)
            else:
                keys, values = self._gather(layer, table[None])
                mask = causal_mask(torch.tensor([start], device=q.device), queries.size(2), keys.size(2))
                y = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=True)
            out[:, :, span] = y
        return out
