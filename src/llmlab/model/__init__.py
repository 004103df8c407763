"""The model: one decoder-only Transformer for GPT-2 and Llama families, plus checkpoint I/O.

    config.py        ModelConfig (every architectural switch) and named model shapes
    transformer.py   the Transformer, readable top to bottom
    masks.py         attention masks from positions (filled caches, per-row lengths, packed documents)
    surgery.py       replace_linears: swapping nn.Linears by name (compile, LoRA, quantization)
    source.py        the one model-source resolver (smollm2, .gguf, HF dir, run dir)
    checkpoint.py    checkpoint files; run dir -> (model, tokenizer)
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
