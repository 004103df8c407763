"""Text -> unit vectors with our own MiniLM encoder: batched, length-sorted, cached by content hash.

Sorting texts by token length before batching means each batch pads only to its own longest
member, not the corpus' longest: on mixed-length passages this cuts the padded tokens the
encoder computes over (and the time) substantially; results are put back in input order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from llmlab.core.progress import progress

DEFAULT_MODEL = "minilm"
MAX_SEQ_LEN = 256  # all-MiniLM-L6-v2's sentence_bert_config.json: longer inputs are truncated


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Embedder:
    """Sentence embeddings from a BERT directory (default: the built-in all-MiniLM-L6-v2)."""

    def __init__(self, model_dir: str | Path | None = None, max_seq_len: int = MAX_SEQ_LEN,
                 batch_size: int = 32, device: str = "cpu"):
        from llmlab.core.assets import minilm_dir
        from llmlab.model.encoder import Encoder
        from llmlab.tokenizer.wordpiece import WordPieceTokenizer

        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        self.model_name = "all-MiniLM-L6-v2" if model_dir is None else self.model_dir.name
        # An adapted encoder (llmlab.rag.adapt) often lives in a directory named "encoder", like
        # another store's: a short hash of the weights keeps their vectors from being mixed.
        self.weights_tag = "" if model_dir is None else \
            hashlib.sha256((self.model_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
        self.tokenizer = WordPieceTokenizer.from_vocab_file(self.model_dir / "vocab.txt")
        self.encoder = Encoder.from_pretrained(self.model_dir).to(device)
        self.device = device
        self.max_seq_len = max_seq_len
        self.batch_size = batch_size
        self.dim = self.encoder.cfg.hidden_size
        self._cache: dict[str, np.ndarray] = {}  # content hash -> vector, so re-embedding is free

    @property
    def model_id(self) -> str:
        """What a store records so it can refuse vectors from a different model or truncation."""
        name = f"{self.model_name}-{self.weights_tag}" if self.weights_tag else self.model_name
        return f"{name}@{self.max_seq_len}"

    def clear_cache(self) -> None:
        """Forget the vectors computed so far (a timing run measures real embedding, not lookups)."""
        self._cache.clear()

    def count_tokens(self, text: str) -> int:
        """Length in the embedding model's WordPiece tokens (without [CLS]/[SEP])."""
        return len(self.tokenizer.encode(text))

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = []
        for i, t in enumerate(texts):
            hit = self._cache.get(content_hash(t))
            if hit is not None:
                out[i] = hit
            else:
                todo.append(i)
        ids = {i: self.tokenizer.encode_for_model(texts[i], self.max_seq_len) for i in todo}
        order = sorted(todo, key=lambda i: len(ids[i]))
        bar = progress(total=len(order), desc="embed", unit="text", disable=None if show_progress else True)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            tok = torch.full((len(batch), width), self.tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                tok[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            vecs = self.encoder.embed(tok.to(self.device), mask.to(self.device)).float().cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = vecs[row]
                self._cache[content_hash(texts[i])] = vecs[row]
            bar.update(len(batch))
        bar.close()
        return out
