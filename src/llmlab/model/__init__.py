"""The model: one decoder-only Transformer for GPT-2 and Llama families, plus checkpoint I/O.

    config.py        ModelConfig (every architectural switch) and named model shapes
    transformer.py   the Transformer, readable top to bottom
"""

from llmlab.model.config import MODEL_PRESETS, ModelConfig
from llmlab.model.transformer import Transformer

__all__ = ["ModelConfig", "MODEL_PRESETS", "Transformer"]
