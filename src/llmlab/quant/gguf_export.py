"""Write GGUF Q8_0 / Q4_0 / Q4_1 files from float or quantized models (the inverse of `gguf_native`).

Our int8/int4 layers with a group size of 32 *are* GGUF blocks, laid out differently, so they are
written without any rounding:

    layer                                   GGUF    bytes per block of 32
    Int8Linear   group 32 (scale, codes)    Q8_0    [f16 d = scale][32 x int8 codes]
    Int4Linear   group 32 (scale, min)      Q4_1    [f16 d = scale][f16 m = min][16 B nibbles]
    Int4Linear   group 32, min = -8 scale   Q4_0    [f16 d = scale][16 B nibbles]   (codes as stored)

GGUF's nibble order puts elements 0-15 of a block in the low nibbles and 16-31 in the high ones
(ours: element 2j low, 2j + 1 high in byte j). A layer that has no exact form in the requested type
(another group size, an Int4Linear whose minimums are not -8 * scale asked for as Q4_0, any layer asked
for as another type) is dequantized and requantized with llama.cpp's reference rounding, and
`save_quantized_gguf` says so in `notes`. Float matrices are quantized with the same rules
(ggml-quants.c, quantize_row_q4_0_ref / q4_1_ref; the `gguf` package's quantizer agrees bit for bit):

    Q4_0   d = peak / -8, peak = the block's value of largest magnitude (with its sign)
           q = min(15, trunc(x / d + 8.5))                 x ~ d * (q - 8)
    Q4_1   d = (max - min) / 15, m = min
           q = min(15, trunc((x - m) / d + 0.5))           x ~ d * q + m

Both divide by the float32 d and store it rounded to float16 afterwards, as llama.cpp does.
Q4_0's grid is symmetric around the peak: -8 d is the peak itself, so the extreme weight of each
block is exact and the other end of the range has one level less. llama.cpp needs rows that are a
whole number of blocks; any other matrix is written F16, and 1-D tensors (norms, biases) F32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from llmlab.core.errors import LLMLabError
from llmlab.model.export import check_gguf_type, encode_float, gguf_arch, gguf_tensor_name, to_gguf_rows, write_gguf
from llmlab.quant.int4 import Int4Linear, unpack_int4
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding

BLOCK = 32


# ----------------------------------------------------------------------------- float quantizers

def _blocks(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2 or weight.shape[1] % BLOCK:
        raise LLMLabError(f"a GGUF block format needs a matrix with rows of a multiple of {BLOCK} values, "
                          f"not shape {weight.shape}")
    return weight.reshape(-1, BLOCK)


def _inverse(d: np.ndarray) -> np.ndarray:
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)   # an all-zero block: codes 8 / 0


def _gguf_nibbles(codes: np.ndarray) -> np.ndarray:
    """(..., 32) codes 0..15 -> (..., 16) bytes in GGUF's order (element j low, j + 16 high)."""
    codes = codes.astype(np.uint8)
    return codes[..., :16] | (codes[..., 16:] << 4)


def quantize_q4_0(weight: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) -> Q4_0 uint8 (rows, cols / 32 * 18), llama.cpp's reference rounding."""
    blocks = _blocks(weight)
    # The first value of largest magnitude, with its sign (llama.cpp keeps the first: a strict <).
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    d = peak / np.float32(-8)
    q = np.minimum(15, np.trunc(blocks * _inverse(d) + np.float32(8.5)))
    packed = np.concatenate([d.astype(np.float16).view(np.uint8), _gguf_nibbles(q)], axis=1)
    return packed.reshape(weight.shape[0], -1)


def quantize_q4_1(weight: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) -> Q4_1 uint8 (rows, cols / 32 * 20), llama.cpp's reference rounding."""
    blocks = _blocks(weight)
    low, high = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    d = (high - low) / np.float32(15)
    q = np.minimum(15, np.trunc((blocks - low) * _inverse(d) + np.float32(0.5)))
    packed = np.concatenate([d.astype(np.float16).view(np.uint8), low.astype(np.float16).view(np.uint8),
                             _gguf_nibbles(q)], axis=1)
    return packed.reshape(weight.shape[0], -1)


# ----------------------------------------------------------------------------- exact packers

def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _constants(scale, rows: int, n_blocks: int, what: str) -> np.ndarray:
    """float16 (rows, n_blocks) -> (rows, n_blocks, 2) bytes."""
    d = _numpy(scale, np.float16)
    if d.shape != (rows, n_blocks):
        raise LLMLabError(f"{what}: constants of shape {d.shape} do not give one per block of {BLOCK} "
                          f"(expected {(rows, n_blocks)}): only a group size of {BLOCK} is a GGUF block")
    return d.reshape(rows, n_blocks, 1).view(np.uint8)


def pack_q8_0(codes, scale) -> np.ndarray:
    """int8 codes (out, in) and float16 scales (out, in / 32) (Int8Linear, group 32) -> Q8_0 rows."""
    q = _numpy(codes, np.int8)
    rows, cols = q.shape
    d = _constants(scale, rows, cols // BLOCK, "Q8_0")
    return np.concatenate([d, q.reshape(rows, -1, BLOCK).view(np.uint8)], axis=-1).reshape(rows, -1)


def _gguf_q4_bytes(qweight) -> np.ndarray:
    """Our packed (out, in / 2) codes -> GGUF nibbles (out, in / 32, 16)."""
    codes = unpack_int4(torch.from_numpy(_numpy(qweight, np.uint8))).numpy()
    return _gguf_nibbles(codes.reshape(codes.shape[0], -1, BLOCK))


def pack_q4_1(qweight, scale, low) -> np.ndarray:
    """Int4Linear storage (packed codes (out, in / 2), float16 scales and mins (out, in / 32)) ->
    Q4_1 rows with the same d = scale, m = min and codes."""
    qs = _gguf_q4_bytes(qweight)
    rows, n_blocks = qs.shape[:2]
    d, m = _constants(scale, rows, n_blocks, "Q4_1"), _constants(low, rows, n_blocks, "Q4_1")
    return np.concatenate([d, m, qs], axis=-1).reshape(rows, -1)


def pack_q4_0(qweight, scale) -> np.ndarray:
    """Int4Linear storage whose minimums are -8 * scale (packed codes, float16 scales (out, in / 32))
    -> Q4_0 rows: d = scale and the codes as they are, since d * (q - 8) = q * scale + min."""
    qs = _gguf_q4_bytes(qweight)
    rows, n_blocks = qs.shape[:2]
    return np.concatenate([_constants(scale, rows, n_blocks, "Q4_0"), qs], axis=-1).reshape(rows, -1)


def has_q4_0_grid(layer: Int4Linear) -> bool:
    """Whether every group's minimum is -8 * its scale (the layer is Q4_0 exactly)."""
    return torch.equal(layer.mins.float(), -8 * layer.scales.float())


# ----------------------------------------------------------------------------- whole models

def is_quantized_module(module) -> bool:
    """A layer that stores its weight in some quantized form and can `dequantize()` it (int8, int4, NF4)."""
    return (isinstance(module, nn.Module) and callable(getattr(module, "dequantize", None))
            and not isinstance(getattr(module, "weight", None), nn.Parameter))


def has_quantized_layers(model: nn.Module) -> bool:
    return any(is_quantized_module(m) or isinstance(m, QuantizedEmbedding) for m in model.modules())


def weight_items(model: nn.Module) -> dict[str, Tensor | nn.Module]:
    """Our parameter name -> a float tensor, or the quantized layer that holds that weight. A tied
    model has no lm_head entry; its tok_emb entry is the head when the head is quantized (the logits
    are computed with the head's values, so those are the ones to keep)."""
    items: dict[str, Tensor | nn.Module] = {}
    inside: list[str] = []       # prefixes of quantized layers: their buffers are handled whole
    for name, module in model.named_modules(remove_duplicate=False):
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, QuantizedEmbedding):
            items[f"{name}.weight"] = module.table
            inside.append(f"{name}.")
        elif is_quantized_module(module):
            items[f"{name}.weight"] = module
            if getattr(module, "bias", None) is not None:
                items[f"{name}.bias"] = module.bias
            inside.append(f"{name}.")
        else:
            for param_name, param in module.named_parameters(recurse=False):
                items[f"{name}.{param_name}" if name else param_name] = param
    if model.config.tie_embeddings:
        head = items.pop("lm_head.weight", None)
        if head is not None and is_quantized_module(head):
            items["tok_emb.weight"] = head
    elif items.get("lm_head.weight") is not None and items.get("lm_head.weight") is items.get("tok_emb.weight"):
        # A quantized model whose embedding reads the head's storage (QuantizedEmbedding): one
        # tensor, written as a tied file (no output.weight: llama.cpp then reuses token_embd).
        del items["lm_head.weight"]
    return items


def dequantized_state(model: nn.Module) -> dict[str, Tensor]:
    """A float32 state dict of our parameter names (quantized layers dequantized), e.g. for an HF export."""
    state = {name: (item.dequantize().float() if isinstance(item, nn.Module) else item.detach().float())
             for name, item in weight_items(model).items()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def _describe(layer: nn.Module) -> str:
    group = getattr(layer, "group_size", None)
    return f"{type(layer).__name__}" + (f" group {group}" if group else "")


def encode_layer(layer: nn.Module, qtype: str, keep_exact: bool = False):
    """(rows of GGUF data in our row order, raw GGML type or None, exact?) for a quantized layer.
    exact: the file holds the layer's own codes and constants. keep_exact: a layer that is exact in
    some block type keeps that type even when `qtype` is another."""
    import gguf

    types = gguf.GGMLQuantizationType
    group = getattr(layer, "group_size", None)
    if isinstance(layer, Int8Linear) and group == BLOCK and (qtype == "q8_0" or keep_exact):
        return pack_q8_0(layer.qweight, layer.scales), types.Q8_0, True
    if isinstance(layer, Int4Linear) and group == BLOCK:
        if qtype == "q4_0" and has_q4_0_grid(layer):
            return pack_q4_0(layer.qweight, layer.scales), types.Q4_0, True
        if qtype == "q4_1" or keep_exact:
            return pack_q4_1(layer.qweight, layer.scales, layer.mins), types.Q4_1, True
    data, raw_type = encode_float(layer.dequantize().float().cpu().numpy(), qtype)
    return data, raw_type, False


def save_quantized_gguf(model: nn.Module, tokenizer, path: str | Path, qtype: str = "q8_0",
                        name: str = "llmlab", keep_exact: bool = False,
                        notes: list[str] | None = None) -> Path:
    """Write `model` (a Transformer whose linears may be nn.Linear, Int8Linear, Int4Linear, ... and
    whose embedding may be a QuantizedEmbedding) as a GGUF file with `qtype` matrices (q8_0, q4_0,
    q4_1; f16/f32 dequantize). Group-32 int8/int4 layers are written exactly (see the module doc);
    what had to be requantized is appended to `notes`."""
    check_gguf_type(qtype)
    config = model.config
    arch = gguf_arch(config)
    tensors, requantized = [], {}
    for our_name, item in weight_items(model).items():
        if isinstance(item, nn.Module):
            data, raw_type, exact = encode_layer(item, qtype, keep_exact)
            if not exact and qtype in ("q8_0", "q4_0", "q4_1"):
                requantized.setdefault(_describe(item), []).append(our_name.removesuffix(".weight"))
        else:
            data, raw_type = encode_float(item.detach().float().cpu().numpy(), qtype)
        tensors.append((gguf_tensor_name(our_name), to_gguf_rows(our_name, data, config, arch), raw_type))
    if notes is not None:
        for kind, names in requantized.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            notes.append(f"{len(names)} {kind} layer(s) ({shown}) have no exact {qtype.upper()} form: requantized "
                         f"from their dequantized weights with llama.cpp's {qtype.upper()} rounding")
    return write_gguf(path, config, tokenizer, tensors, qtype, name)

