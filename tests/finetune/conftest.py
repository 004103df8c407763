"""Tiny base models for fine-tuning tests: a random two-layer Llama with SmolLM2's real tokenizer.

Saved as Hugging Face directories (config.json + model.safetensors + tokenizer files), so each is a
valid `--model` for `llmlab finetune` and a base that adapter runs record by sha256. The tokenizer
is SmolLM2's own (it carries the ChatML template the SFT data is rendered with); reading it from
the bundled GGUF takes a few seconds, so it is read once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def tiny_llama(vocab_size: int, seed: int):
    import torch

    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer

    config = ModelConfig(vocab_size=vocab_size, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         position="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=True)
    torch.manual_seed(seed)
    model = Transformer(config)
    # At init scale (std 0.02) the residual stream is the last token's embedding and every prompt
    # gets the same greedy reply, which would hide predictions written in the wrong order; with
    # its matrices 10x larger, attention is sharp enough that each prompt gets its own.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return model, config


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from llmlab.core.assets import smollm2_gguf
    from llmlab.tokenizer.formats import read_gguf_tokenizer

    return read_gguf_tokenizer(smollm2_gguf())


def _save_tiny(tokenizer, directory: Path, seed: int) -> Path:
    from llmlab.model.hf import save_hf_dir

    model, config = tiny_llama(tokenizer.vocab_size, seed)
    save_hf_dir(model.state_dict(), config, tokenizer, directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A Hugging Face directory holding a random tiny Llama: the base every fine-tune here starts from."""
    return _save_tiny(smollm2_tokenizer, tmp_path_factory.mktemp("tiny_base") / "base", seed=0)


@pytest.fixture(scope="session")
def other_base(tmp_path_factory, smollm2_tokenizer) -> Path:
    """Another random tiny Llama with the same shapes (so an adapter fits it), but other weights."""
    return _save_tiny(smollm2_tokenizer, tmp_path_factory.mktemp("other_base") / "base", seed=1)
