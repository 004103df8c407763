"""Batch sampling from several shards: one vectorised draw per batch, windows never cross shards."""

from __future__ import annotations

import numpy as np
import torch

from llmlab.data.tokens import ShardWriter, TokenDataset, write_meta
from llmlab.tokenizer.char import CharTokenizer


def test_windows_come_whole_from_one_shard_and_every_shard_is_drawn(tmp_path):
    tok = CharTokenizer.train("abcd")
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), shard_tokens=200)
    for value in (1, 2, 3):                       # three shards, each one repeated id
        writer.add(np.full(200, value))
    entries = writer.close()
    write_meta(tmp_path, tok, {"train": entries, "val": entries[:1]}, {})
    ds = TokenDataset.open(tmp_path)
    batch = ds.get_batch("train", 64, 16, torch.Generator().manual_seed(1))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (64, 16) and x.dtype == torch.int64 and x.is_contiguous()
    assert torch.equal(x.min(1).values, x.max(1).values) and torch.equal(x, y)   # one shard per row
    assert set(x[:, 0].tolist()) == {1, 2, 3}
    again = ds.get_batch("train", 64, 16, torch.Generator().manual_seed(1))["input_ids"]
    assert torch.equal(x, again)                  # all randomness from the generator
