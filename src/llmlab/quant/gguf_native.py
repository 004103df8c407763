"""Run a GGUF file's own quantized blocks: Q8_0 / Q4_0 / Q4_1 tensors as int8 / int4 layers, exactly.

`llmlab.model.gguf` dequantizes every tensor to float32 (simple, 4-8x the memory). The block
formats are, however, our layers' layouts with a group size of 32, so the file's integers and
float16 constants can be used as they are:

    GGUF   block (32 weights)                  llmlab layer (group_size 32)
    Q8_0   f16 d, 32 x int8 q        d * q     Int8Linear  scale = d, codes = q
    Q4_1   f16 d, f16 m, 16 B nibbles d*q + m  Int4Linear  scale = d, min = m, codes = q
    Q4_0   f16 d, 16 B nibbles   d * (q - 8)   Int4Linear  scale = d, min = -8 * d

-8 * d is exact in float16 (a power-of-two multiple) unless it overflows (|d| > 8188, never seen
in practice; such a tensor is loaded as float instead), and q * d + (-8 d) = d * (q - 8) exactly in
float32, so each layer's `dequantize()` is bit-for-bit the float path's value.

Only the nibble order differs: a GGUF block puts elements 0-15 in the low nibbles of its 16 bytes
and 16-31 in the high ones; we put element 2j in the low nibble of byte j and 2j + 1 in the high.
`repack_q4_nibbles` converts with four byte-wise operations, without unpacking to codes.

llama.cpp's q/k row permutation (llama architecture) moves whole rows, so it is undone on the rows
of raw blocks (codes and constants together), which keeps every value exact.

The model is built on the meta device and the quantized layers replace its linear modules, so no
float copy of a large matrix is ever made; only norms (and any F32/F16/BF16 tensor) are float.
The token embedding of a tied model reads its rows from the quantized head (`QuantizedEmbedding`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.model.gguf import dequantize, gguf_model_config, open_gguf, unpermute_qk, _our_name
from llmlab.quant.int4 import Int4Linear
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding, QuantizedLinear

BLOCK = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
# Modules (by our parameter name without ".weight") that a quantized block tensor may become.
LINEAR_SUFFIXES = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w_gate", "mlp.w_up", "mlp.w_down")


def repack_q4_nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) uint8 in GGUF's order (byte j: element j low, j + 16 high) -> ours (byte k:
    element 2k low, 2k + 1 high). For k < 8 both elements are low nibbles of GGUF bytes 2k, 2k+1;
    for k >= 8 they are the high nibbles of bytes 2(k-8), 2(k-8)+1."""
    even, odd = qs[..., 0::2], qs[..., 1::2]
    return np.concatenate([(even & 0x0F) | ((odd & 0x0F) << 4), (even >> 4) | (odd & 0xF0)], axis=-1)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at bytes [start, start + 2) of each block: (rows, n_blocks)."""
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0]


def layer_from_blocks(raw: np.ndarray, kind: str, bias: torch.Tensor | None = None) -> QuantizedLinear | None:
    """(rows, row bytes) uint8 of one GGUF tensor -> the int8/int4 layer holding its blocks, or None
    for a Q4_0 tensor whose -8 * d would overflow float16 (the caller loads it as float)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, BLOCK_BYTES[kind])
    d = torch.from_numpy(_f16(blocks, 0))
    if kind == "Q8_0":
        codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, -1)
        return Int8Linear.from_codes(torch.from_numpy(codes), d, bias)
    qs = blocks[..., 4:] if kind == "Q4_1" else blocks[..., 2:]
    packed = torch.from_numpy(np.ascontiguousarray(repack_q4_nibbles(qs)).reshape(rows, -1))
    if kind == "Q4_1":
        low = torch.from_numpy(_f16(blocks, 2))
    else:
        low = (-8 * d.float()).to(torch.float16)
        if not torch.isfinite(low).all():
            return None
    return Int4Linear.from_codes(packed, d, low, bias, packed=True)


def _read(reader, config, path: Path) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, torch.Tensor]]:
    """Our name -> (kind, raw block rows) for quantized matrices, and -> float32 tensor for the rest
    (already in our q/k row order)."""
    permuted = reader.fields["general.architecture"].contents() == "llama"
    quantized: dict[str, tuple[str, np.ndarray]] = {}
    floats: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _our_name(tensor.name)
        if name is None:
            continue  # e.g. rope_freqs: recomputed from the config
        kind = tensor.tensor_type.name
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))   # GGUF lists dims innermost first
        heads = None
        if permuted and name.startswith("blocks.") and ".attn.wq." in name:
            heads = config.n_head
        elif permuted and name.startswith("blocks.") and ".attn.wk." in name:
            heads = config.n_kv_head
        module = name.removesuffix(".weight")
        if kind in BLOCK_BYTES and len(shape) == 2 and (module.endswith(LINEAR_SUFFIXES) or
                                                        module in ("tok_emb", "lm_head")):
            try:
                raw = np.asarray(tensor.data, dtype=np.uint8).reshape(shape[0], -1)
            except ValueError as e:
                raise LLMLabError(f"{path}: tensor {tensor.name} is damaged ({e})") from None
            if raw.shape[1] * BLOCK != shape[1] * BLOCK_BYTES[kind]:
                raise LLMLabError(f"{path}: tensor {tensor.name} has {raw.shape[1]} bytes per row, not the "
                                  f"{shape[1] // BLOCK * BLOCK_BYTES[kind]} of {kind}: the file is damaged")
            quantized[name] = (kind, unpermute_qk(raw, heads) if heads else raw)
            continue
        try:
            weight = dequantize(tensor.data, kind, shape)
        except ValueError as e:
            raise LLMLabError(f"{path}: tensor {tensor.name} is damaged ({e})") from None
        if heads:
            weight = unpermute_qk(weight.reshape(shape[0], -1), heads).reshape(shape)
        floats[name] = torch.from_numpy(np.array(weight, dtype=np.float32, copy=True))
    return quantized, floats


def _as_float(kind: str, raw: np.ndarray) -> torch.Tensor:
    rows = raw.shape[0]
    cols = raw.shape[1] // BLOCK_BYTES[kind] * BLOCK
    return torch.from_numpy(dequantize(raw, kind, (rows, cols)))


def _build(config, quantized: dict[str, tuple[str, np.ndarray]], floats: dict[str, torch.Tensor], path: Path):
    from llmlab.model.transformer import Transformer

    model = Transformer.skeleton(config)     # meta tensors, nothing initialised: every one is replaced
    layers: dict[str, QuantizedLinear] = {}
    for name, (kind, raw) in quantized.items():
        module = name.removesuffix(".weight")
        layer = layer_from_blocks(raw, kind, floats.pop(f"{module}.bias", None))
        if layer is None:
            floats[name] = _as_float(kind, raw)
        else:
            layers[module] = layer

    embedding = layers.pop("tok_emb", None)
    if config.tie_embeddings and embedding is not None:
        layers["lm_head"] = embedding     # one quantized table serves as head and embedding
    for module, layer in layers.items():
        parent, _, leaf = module.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, layer)
    if embedding is not None:
        model.tok_emb = QuantizedEmbedding(model.lm_head if config.tie_embeddings else embedding)

    model.load_state_dict(floats, strict=False, assign=True)
    if config.tie_embeddings and embedding is None:
        model.lm_head.weight = model.tok_emb.weight
    model.init_rope()
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:
        raise LLMLabError(f"{path}: the file has no tensor for {', '.join(missing[:5])}: it is not a complete "
                          "Llama-family model")
    return model


def load_native_gguf(path: str | Path, timings: dict[str, float] | None = None):
    """(Transformer, Tokenizer) whose Q8_0/Q4_0/Q4_1 matrices are the file's own blocks as
    Int8Linear / Int4Linear layers (group 32); other tensor types are dequantized to float32.
    timings: filled with the seconds spent parsing the file, building the model and reading the
    tokenizer (SmolLM2: parsing dominates, ~5 s of `gguf`'s metadata reading; the model ~0.5 s)."""
    from llmlab.tokenizer.formats import read_gguf_tokenizer

    path = Path(path)
    clock = [time.perf_counter()]
    reader = open_gguf(path)
    config = gguf_model_config(reader, path)
    clock.append(time.perf_counter())
    quantized, floats = _read(reader, config, path)
    model = _build(config, quantized, floats, path)
    clock.append(time.perf_counter())
    tokenizer = read_gguf_tokenizer(path, reader)
    clock.append(time.perf_counter())
    if timings is not None:
        timings.update(zip(("parse", "model", "tokenizer"), np.diff(clock).tolist()))
    return model, tokenizer


def native_layer_types(model: nn.Module) -> dict[str, str]:
    """Module name -> layer class for every quantized layer (for reports and tests)."""
    return {name: type(m).__name__ for name, m in model.named_modules()
            if isinstance(m, (QuantizedLinear, QuantizedEmbedding))}
