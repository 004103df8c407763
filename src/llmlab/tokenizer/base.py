"""The interface every tokenizer implements, so data prep, training and sampling never care which.

A tokenizer maps text <-> integer ids. It serialises to a plain dict (`to_dict`) that is stored
inside every checkpoint and token dataset, so a model always travels with the exact tokenizer it
was trained on. `load_tokenizer` (in `llmlab.tokenizer`) rebuilds one from such a dict or a saved
directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from llmlab.core.io import atomic_write_json

TOKENIZER_FILE = "llmlab-tokenizer.json"
FORMAT_VERSION = 1


class Tokenizer(ABC):
    """text -> ids -> text. Subclasses set `kind` and implement the four abstract methods."""

    kind: str = "base"
    eos_id: int | None = None
    bos_id: int | None = None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids for `text`, with no BOS/EOS added."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        ...

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        ...

    @abstractmethod
    def to_dict(self) -> dict:
        """Everything needed to rebuild this tokenizer; must include {"type": self.kind}."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        ...

    def save(self, directory: str | Path) -> Path:
        """Write `<directory>/llmlab-tokenizer.json` atomically and return its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_json(path, {"format": "llmlab-tokenizer", "version": FORMAT_VERSION, **self.to_dict()})
        return path
