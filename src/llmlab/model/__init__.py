"""The model: one decoder-only Transformer for GPT-2 and Llama families, plus checkpoint I/O.

    config.py        ModelConfig (every architectural switch) and named model shapes
    transformer.py   the Transformer, readable top to bottom
"""

from llmlab.model.config import MODEL_PRESETS, ModelConfig


def __getattr__(name: str):
    # Transformer imports torch (seconds); importing it lazily keeps `llmlab.model.config` (and so
    # flag parsing and config validation in the CLI) torch-free.
    if name == "Transformer":
        from llmlab.model.transformer import Transformer
        return Transformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ModelConfig", "MODEL_PRESETS", "Transformer"]
