"""Quantize a whole model: pick its linear layers by name, put quantized layers in their place.

    config = QuantizeConfig(method="gptq", bits=4, group_size=64)
    report = quantize_model(model, tokenizer, config)   # in place; then llmlab.quant.artifact.save_quantized

Methods (one module each, one concept each):
    int8   per-output-channel symmetric int8, round to nearest          llmlab.quant.int8
    int4   group-wise asymmetric int4, round to nearest ("RTN")         llmlab.quant.int4
    gptq   int4 codes chosen with second-order error compensation       llmlab.quant.gptq
    awq    activation-aware channel scales, then int4 RTN               llmlab.quant.awq
    nf4    NormalFloat-4 with double-quantized absmax (QLoRA)            llmlab.quant.nf4

Every linear layer is quantized, the output head too, unless `skip` names it: the head is the
largest matrix of a small model (SmolLM2: 28M of its 135M weights) and decode reads it every
token. GPTQ and AWQ calibrate the blocks' layers; the head, if quantized, gets round-to-nearest.
With tied embeddings the token table then reads rows from the quantized head
(`QuantizedEmbedding`), so the model holds one 4-bit copy of that matrix, not two.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.model.surgery import HEAD, matches_any, replace_linears, select_linears
from llmlab.quant.int4 import Int4Linear
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding
from llmlab.quant.nf4 import NF4Linear

METHODS = ("int8", "int4", "gptq", "awq", "nf4")


@dataclass
class QuantizeConfig:
    method: str = field(default="int4", metadata={"help": f"quantization method: {', '.join(METHODS)}"})
    bits: int = field(default=4, metadata={"help": "bits per weight code for gptq (4 or 8); int8/int4/awq/nf4 fix their own"})
    group_size: int = field(default=64, metadata={"help": "inputs per scale for int4/gptq/awq (must divide every layer's input "
                                                          "width: SmolLM2 takes 32, 64, 96, 192); int8 uses one scale per "
                                                          "output channel unless --int8-groups"})
    int8_groups: bool = field(default=False, metadata={"help": "int8 with --group-size groups instead of one scale per row"})
    skip: list[str] = field(default_factory=list, metadata={"help": "layer patterns to keep in float, e.g. lm_head or "
                                                                    "'blocks.0.*' (comma-separated)"})
    calib: str = field(default="builtin:pydocs", metadata={"help": "gptq/awq calibration text: builtin:pydocs, "
                                                                   "builtin:shakespeare or file:PATH (never the evaluation text)"})
    calib_tokens: int = field(default=16384, metadata={"help": "gptq/awq calibration tokens (each block sees them all: "
                                                                 "SmolLM2 on 2 CPU cores takes ~5 min for gptq at 16,384)"})
    calib_seq_len: int = field(default=512, metadata={"help": "gptq/awq calibration sequence length"})
    act_order: bool = field(default=False, metadata={"help": "gptq: quantize columns in order of decreasing Hessian diagonal"})
    nf4_block: int = field(default=64, metadata={"help": "nf4: weights per absmax block"})
    seed: int = field(default=0, metadata={"help": "seed for choosing calibration windows"})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise LLMLabError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method == "gptq" and self.bits not in (4, 8):
            raise LLMLabError(f"--bits {self.bits}: gptq writes 4- or 8-bit codes")
        if self.group_size <= 0:
            raise LLMLabError(f"--group-size {self.group_size}: must be positive")
        if self.calib_tokens <= 0 or self.calib_seq_len <= 1:
            raise LLMLabError("--calib-tokens must be positive and --calib-seq-len at least 2")

    def summary(self) -> str:
        if self.method == "int8":
            return "int8 per-channel" if not self.int8_groups else f"int8 g{self.group_size}"
        if self.method == "nf4":
            return f"nf4 block {self.nf4_block}"
        bits = self.bits if self.method == "gptq" else 4
        return f"{self.method} {bits}-bit g{self.group_size}"

    def to_dict(self) -> dict:
        return asdict(self)


def _rtn_factory(config: QuantizeConfig):
    """name, nn.Linear -> quantized layer by round-to-nearest (also the head under gptq/awq)."""
    def make(name: str, linear: nn.Linear) -> nn.Module:
        if config.method == "int8" or (config.method == "gptq" and config.bits == 8):
            return Int8Linear.from_linear(linear, config.group_size if config.int8_groups or config.method == "gptq" else None)
        if config.method == "nf4":
            return NF4Linear.from_linear(linear, block_size=config.nf4_block)
        return Int4Linear.from_linear(linear, config.group_size)
    return make


def _check_widths(model: nn.Module, names: list[str], config: QuantizeConfig) -> None:
    if config.method == "int8" and not config.int8_groups or config.method == "nf4":
        return
    bad = sorted({m.in_features for n, m in model.named_modules() if n in names and m.in_features % config.group_size})
    if bad:
        widths = sorted({m.in_features for n, m in model.named_modules() if n in names})
        fits = [g for g in (32, 64, 96, 128, 192, 256) if all(w % g == 0 for w in widths)]
        raise LLMLabError(f"--group-size {config.group_size} does not divide the input widths {bad} of this model's "
                          f"layers; choose one that divides {widths}: {', '.join(map(str, fits)) or 'none of the usual'}")


@torch.no_grad()
def quantize_model(model: nn.Module, tokenizer, config: QuantizeConfig, progress: bool = True) -> dict:
    """Quantize `model` in place; returns a report (layers, bytes, bits per weight, seconds)."""
    config.validate()
    t0 = time.perf_counter()
    tied = bool(model.config.tie_embeddings)
    linears = select_linears(model, ["all-linear", HEAD])
    skip = [p.strip() for patterns in config.skip for p in patterns.split(",") if p.strip()]   # "a,b" or a b
    unmatched = [p for p in skip if not any(matches_any(n, [p]) for n in linears)]
    if unmatched:   # a typo would otherwise quantize the layer it meant to keep
        raise LLMLabError(f"--skip {' '.join(unmatched)} matches no linear layer; the model has {linears[0]}, ..., "
                          f"{linears[-1]} (patterns match a name or a dotted suffix of it, globs allowed)")
    names = [n for n in linears if not matches_any(n, skip)]
    if not names:
        raise LLMLabError("--skip leaves no layer to quantize")
    _check_widths(model, names, config)
    details: dict = {}
    if config.method in ("gptq", "awq"):
        from llmlab.quant.calibration import calibration_ids
        calib = calibration_ids(tokenizer, config.calib, config.calib_tokens,
                                min(config.calib_seq_len, model.config.block_size), config.seed)
        block_skip = [*skip, HEAD]
        if config.method == "gptq":
            from llmlab.quant.gptq import gptq_quantize
            details = gptq_quantize(model, calib, bits=config.bits, group_size=config.group_size, skip=block_skip,
                                    act_order=config.act_order, progress=progress)
        else:
            from llmlab.quant.awq import awq_quantize
            details = awq_quantize(model, calib, group_size=config.group_size, skip=block_skip, progress=progress)
        names = [n for n in names if type(model.get_submodule(n)) is nn.Linear]   # what is left: the head
    replace_linears(model, names, _rtn_factory(config))
    head = model.get_submodule(HEAD)
    if tied and hasattr(head, "dequantize_rows"):
        model.tok_emb = QuantizedEmbedding(head)      # one quantized copy serves both
    return {"method": config.summary(), "seconds": time.perf_counter() - t0, **storage_report(model), **details}


def storage_report(model: nn.Module) -> dict:
    """Bytes of the weights as stored: quantized layers' codes and constants, float tensors as they are."""
    seen: set[int] = set()
    total, quantized_weights, float_weights = 0, 0, 0
    for module in model.modules():
        # Non-persistent buffers (the RoPE tables) are recomputed at load, not stored.
        stored = [b for name, b in module.named_buffers(recurse=False) if name not in module._non_persistent_buffers_set]
        for tensor in [*module.parameters(recurse=False), *stored]:
            if tensor.data_ptr() in seen or tensor.device.type == "meta":
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            float_weights += module.weight.numel()
        elif hasattr(module, "in_features") and hasattr(module, "dequantize"):
            quantized_weights += module.in_features * module.out_features
    n_params = sum(p.numel() for p in model.parameters()) + quantized_weights
    return {"bytes": total, "quantized_weights": quantized_weights, "float_linear_weights": float_weights,
            "bits_per_weight": 8 * total / max(n_params, 1)}
