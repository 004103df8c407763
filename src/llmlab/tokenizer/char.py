"""Character-level tokenizer: one id per distinct character of the training text.

The simplest tokenizer that works, and the classic one for Shakespeare (65 symbols in
tinyshakespeare). Characters outside the vocabulary are an error on encode rather than a
silent substitution, because a silently wrong id would make the model's loss meaningless.

It has no BOS/EOS, so `add_special` changes nothing. Exported (HF tokenizer.json, GGUF) it becomes a
BPE vocabulary of the same characters with no merges (`formats.exportable`), which gives the same ids.
"""

from __future__ import annotations

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import Tokenizer


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise LLMLabError(
                f"character {e.args[0]!r} is not in this character tokenizer's {len(self.chars)}-symbol "
                "vocabulary (it was built from the training text); remove it from the prompt") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def to_dict(self) -> dict:
        return {"type": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        return cls(data["chars"])
