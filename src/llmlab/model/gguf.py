"""Loading Llama-family GGUF files (llama.cpp's format) into our Transformer.

The `gguf` library parses the container (header, metadata, tensor directory, memory-mapped data);
the dequantization of weights is ours, one small NumPy function per block format:

    format  block  bytes  layout                                   value
    F32/F16/BF16    -      plain arrays                              x
    Q8_0    32     34     f16 scale d, 32 x int8 q                  d * q
    Q4_0    32     18     f16 d, 16 bytes of 4-bit q (low nibbles    d * (q - 8)
                          are elements 0-15, high nibbles 16-31)
    Q4_1    32     20     f16 d, f16 min m, 16 bytes of 4-bit q     d * q + m

llama.cpp's converter also permutes the rows of the query and key projections of "llama"
architecture files so that RoPE rotates *adjacent* pairs (x0, x1); our model (like HF Llama)
rotates *halves* (x_i, x_{i+D/2}). `unpermute_qk` undoes that permutation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig

BLOCK = 32


def _f16(block: np.ndarray, start: int) -> np.ndarray:
    """The float16 stored in bytes [start, start+2) of each block, as float32 (..., 1)."""
    return block[..., start:start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 4-bit values: low nibbles first, then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)


def dequantize(data: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw tensor data from the file -> float32 array of `shape` (rows, cols) in PyTorch order."""
    if kind == "F32":
        return np.asarray(data, dtype=np.float32).reshape(shape)
    if kind == "F16":
        return np.asarray(data).view(np.float16).astype(np.float32).reshape(shape)
    if kind == "BF16":
        bits = np.asarray(data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    block_bytes = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}.get(kind)
    if block_bytes is None:
        raise LLMLabError(f"tensor type {kind} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, block_bytes)
    if kind == "Q8_0":
        values = _f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)
    elif kind == "Q4_0":
        values = _f16(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8.0)
    else:  # Q4_1
        values = _f16(blocks, 0) * _nibbles(blocks[:, 4:]) + _f16(blocks, 2)
    return values.reshape(shape)


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of q/k projections (interleaved -> halves RoPE pairing).
    Rows of each head are stored as (D/2 pairs, 2); we want (2 halves, D/2)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


# GGUF tensor name (with {i} for the block) -> our parameter name.
TENSOR_NAMES = {
    "token_embd.weight": "tok_emb.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "blocks.{i}.attn_norm.weight",
    "blk.{i}.attn_q.weight": "blocks.{i}.attn.wq.weight",
    "blk.{i}.attn_k.weight": "blocks.{i}.attn.wk.weight",
    "blk.{i}.attn_v.weight": "blocks.{i}.attn.wv.weight",
    "blk.{i}.attn_output.weight": "blocks.{i}.attn.wo.weight",
    "blk.{i}.attn_q.bias": "blocks.{i}.attn.wq.bias",
    "blk.{i}.attn_k.bias": "blocks.{i}.attn.wk.bias",
    "blk.{i}.attn_v.bias": "blocks.{i}.attn.wv.bias",
    "blk.{i}.ffn_norm.weight": "blocks.{i}.mlp_norm.weight",
    "blk.{i}.ffn_gate.weight": "blocks.{i}.mlp.w_gate.weight",
    "blk.{i}.ffn_up.weight": "blocks.{i}.mlp.w_up.weight",
    "blk.{i}.ffn_down.weight": "blocks.{i}.mlp.w_down.weight",
}


def _our_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        key = ".".join(["blk", "{i}", *parts[2:]])
        target = TENSOR_NAMES.get(key)
        return target.replace("{i}", parts[1]) if target else None
    return TENSOR_NAMES.get(gguf_name)


def open_gguf(path: str | Path):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise LLMLabError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the library raises ValueError, struct.error, ... on damaged files
        raise LLMLabError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                          "it may be truncated: download it again") from None


def gguf_model_config(reader, path: Path) -> ModelConfig:
    def meta(key: str, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = meta("general.architecture")
    if arch not in ("llama", "mistral", "qwen2"):
        raise LLMLabError(f"{path}: architecture {arch!r} is not supported (llama, mistral, qwen2)")
    n_embd = meta(f"{arch}.embedding_length")
    n_head = meta(f"{arch}.attention.head_count")
    names = {t.name for t in reader.tensors}
    vocab = len(meta("tokenizer.ggml.tokens", [])) or meta(f"{arch}.vocab_size")
    return ModelConfig(
        vocab_size=int(vocab), block_size=int(meta(f"{arch}.context_length", 2048)),
        n_layer=int(meta(f"{arch}.block_count")), n_head=int(n_head),
        n_kv_head=int(meta(f"{arch}.attention.head_count_kv", n_head)), n_embd=int(n_embd),
        head_dim=int(meta(f"{arch}.attention.key_length", n_embd // n_head)),
        mlp_hidden=int(meta(f"{arch}.feed_forward_length")), position="rope",
        rope_theta=float(meta(f"{arch}.rope.freq_base", 10000.0)), norm="rmsnorm",
        norm_eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)), mlp="swiglu", bias=False,
        qkv_bias="blk.0.attn_q.bias" in names, tie_embeddings="output.weight" not in names)


def load_gguf_state(path: str | Path, reader=None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, float32 state dict) from a GGUF file (or its already open reader)."""
    path = Path(path)
    reader = reader or open_gguf(path)
    config = gguf_model_config(reader, path)
    # llama.cpp permutes q/k rows only for the "llama" architecture; qwen2 files keep HF's order.
    permuted = reader.fields["general.architecture"].contents() == "llama"
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _our_name(tensor.name)
        if name is None:
            continue  # e.g. rope_freqs: recomputed from the config
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists dims innermost first
        try:
            weight = dequantize(tensor.data, tensor.tensor_type.name, shape)
        except ValueError as e:
            raise LLMLabError(f"{path}: tensor {tensor.name} is damaged ({e})") from None
        if permuted and (name.endswith("attn.wq.weight") or name.endswith("attn.wq.bias")):
            weight = unpermute_qk(weight.reshape(shape[0], -1), config.n_head).reshape(shape)
        elif permuted and (name.endswith("attn.wk.weight") or name.endswith("attn.wk.bias")):
            weight = unpermute_qk(weight.reshape(shape[0], -1), config.n_kv_head).reshape(shape)
        state[name] = torch.from_numpy(np.array(weight, dtype=np.float32, copy=True))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return config, state
