"""Token datasets on disk: flat binary shards of token ids read through `np.memmap`.

A token dataset is a directory:

    meta.json              {"format": "llmlab-tokens", "version": 1, "dtype": "uint16",
                            "vocab_size": ..., "tokenizer": {...}, "source": {...},
                            "splits": {"train": [{"file": "train-00000.bin", "tokens": N}, ...],
                                       "val":   [...]}}
    train-00000.bin ...    little-endian token ids, dtype as in meta.json

uint16 holds any vocabulary up to 65,536 ids (halving disk and page-cache use); larger
vocabularies use uint32. Memory-mapping means a corpus larger than RAM trains fine: the OS pages
in only the windows a batch touches. Writers (`write_token_dataset`, `ShardWriter`) write every file
atomically and meta.json last, so a directory with a meta.json is always complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_open, atomic_write_json
from llmlab.tokenizer import Tokenizer, tokenizer_from_dict

META_FILE = "meta.json"
FORMAT = "llmlab-tokens"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Append token arrays to numbered shard files of one split; `close()` returns their entries."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int = 2**28):
        self.directory, self.split, self.dtype, self.shard_tokens = Path(directory), split, dtype, shard_tokens
        self.entries: list[dict] = []
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray | list[int]) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self._buffer.append(arr)
        self._buffered += arr.size
        if self._buffered >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        name = f"{self.split}-{len(self.entries):05d}.bin"
        data = np.concatenate(self._buffer)
        with atomic_open(self.directory / name, "wb") as f:
            f.write(data.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self.entries.append({"file": name, "tokens": int(data.size)})
        self._buffer, self._buffered = [], 0

    def close(self) -> list[dict]:
        self._flush()
        return self.entries


def write_meta(directory: Path, tokenizer: Tokenizer, splits: dict[str, list[dict]], source: dict) -> None:
    meta = {"format": FORMAT, "version": VERSION, "dtype": token_dtype(tokenizer.vocab_size).name,
            "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.to_dict(), "source": source,
            "splits": splits}
    atomic_write_json(Path(directory) / META_FILE, meta)


def write_token_dataset(directory: str | Path, tokenizer: Tokenizer, splits: dict[str, np.ndarray],
                        source: dict) -> Path:
    """Write whole splits (e.g. {"train": ids, "val": ids}) as one shard each, then meta.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    entries = {}
    for split, ids in splits.items():
        writer = ShardWriter(directory, split, dtype, shard_tokens=max(1, len(ids)))
        writer.add(ids)
        entries[split] = writer.close()
    write_meta(directory, tokenizer, entries, source)
    return directory


@dataclass
class TokenDataset:
    """A token dataset opened for reading: memmapped shards per split plus the tokenizer."""

    directory: Path
    meta: dict
    tokenizer: Tokenizer
    shards: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: str | Path) -> "TokenDataset":
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise LLMLabError(f"{directory} is not a token dataset: {META_FILE} is missing "
                              "(make one with `llmlab data tokenize`, or pass --data NAME / --data-file PATH)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise LLMLabError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r} "
                              f"is not {FORMAT!r} version {VERSION}; re-create the dataset with this llmlab")
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        shards = {}
        for split, entries in meta["splits"].items():
            shards[split] = []
            for entry in entries:
                path = directory / entry["file"]
                if not path.is_file() or path.stat().st_size != entry["tokens"] * dtype.itemsize:
                    raise LLMLabError(f"{path} is missing or truncated (expected {entry['tokens']} tokens); "
                                      "re-create the dataset")
                if entry["tokens"]:
                    shards[split].append(np.memmap(path, dtype=dtype, mode="r"))
        return cls(directory, meta, tokenizer_from_dict(meta["tokenizer"]), shards)

    def num_tokens(self, split: str) -> int:
        return sum(int(s.size) for s in self.shards.get(split, []))

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`batch_size` random windows as a batch dict: input_ids = tokens[i : i+T] and
        labels = tokens[i+1 : i+T+1] (every position is a target; -100 would mark one that is not).

        All randomness comes from `generator`, so saving its state in a checkpoint makes the
        batch sequence after a resume identical to an uninterrupted run.
        """
        shards = [s for s in self.shards.get(split, []) if s.size > block_size + 1]
        if not shards:
            raise LLMLabError(f"split {split!r} of {self.directory} has no shard longer than block_size+1 = "
                              f"{block_size + 1} tokens; use a smaller --block-size or more data")
        sizes = torch.tensor([s.size - block_size - 1 for s in shards], dtype=torch.float64)
        which = torch.multinomial(sizes, batch_size, replacement=True, generator=generator) \
            if len(shards) > 1 else torch.zeros(batch_size, dtype=torch.long)
        # One draw and one gather per shard, not a Python loop per row: at nanoGPT's CPU size (12
        # rows of 65 tokens, a ~30 ms step) per-row calls were a visible share of the step.
        # floor(u * n) is uniform over 0..n-1 (float64 is exact for any shard below 2**53 tokens).
        starts = (torch.rand(batch_size, generator=generator, dtype=torch.float64) * sizes[which]).long().numpy()
        offsets = np.arange(block_size + 1)
        windows = np.empty((batch_size, block_size + 1), dtype=np.int64)
        for s in np.unique(which.numpy()):
            rows = np.flatnonzero(which.numpy() == s)
            windows[rows] = shards[s][starts[rows, None] + offsets]    # a fancy index reads only those pages
        windows = torch.from_numpy(windows)
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}
