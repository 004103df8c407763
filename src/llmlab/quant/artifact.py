"""A quantized model directory: what `llmlab quantize` writes and every `--model` flag opens.

    q/int4/
      config.json              format "llmlab-quantized", format_version, the model config, one record
                               per quantized layer (type, shape, group size), the quantize config,
                               the source model (spec, kind, sha256), the report
      model.safetensors        codes, scales, minimums, norms, biases: the tensors exactly as the layers hold them
      llmlab-tokenizer.json    the source model's tokenizer

Loading builds the Transformer on the meta device (no float weights are allocated), puts an empty
layer of the recorded type in place of each quantized linear, and adopts the saved tensors, so a
4-bit model never exists in float in memory. A reader refuses a newer format version, and any
tensor whose shape does not match its record, with a message that says what to do.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_path, atomic_write_text
from llmlab.model.source import QUANTIZED_FORMAT
from llmlab.model.surgery import HEAD, replace_linears
from llmlab.quant.int4 import Int4Linear
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding
from llmlab.quant.nf4 import NF4Linear

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def layer_record(module: nn.Module) -> dict:
    """How to rebuild an empty layer of this kind and shape."""
    base = {"in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    if isinstance(module, Int4Linear):
        return {"type": "int4", **base, "group_size": module.group_size}
    if isinstance(module, Int8Linear):
        return {"type": "int8", **base, "group_size": module.group_size}
    if isinstance(module, NF4Linear):
        return {"type": "nf4", **base, "block_size": module.block_size, "double_quant": module.double_quant,
                "dq_block_size": module.dq_block_size}
    raise TypeError(f"no record for {type(module).__name__}")


def empty_layer(record: dict) -> nn.Module:
    kind, inp, out, bias = record["type"], record["in"], record["out"], record["bias"]
    if kind == "int4":
        return Int4Linear(inp, out, bias, group_size=record["group_size"])
    if kind == "int8":
        return Int8Linear(inp, out, bias, group_size=record["group_size"])
    if kind == "nf4":
        return NF4Linear(inp, out, bias, block_size=record["block_size"], double_quant=record["double_quant"],
                         dq_block_size=record["dq_block_size"])
    raise LLMLabError(f"unknown quantized layer type {kind!r}: this directory was written by a newer llmlab")


def save_quantized(model: nn.Module, tokenizer, directory: str | Path, quantize_config: dict,
                   source: dict | None = None, report: dict | None = None) -> Path:
    """Write the directory (atomically: a failed or interrupted save leaves no half-written model)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    layers = {name: layer_record(m) for name, m in model.named_modules(remove_duplicate=False)
              if isinstance(m, (Int4Linear, Int8Linear, NF4Linear)) and not name.startswith("tok_emb.")}
    embedding = "lm_head" if isinstance(model.tok_emb, QuantizedEmbedding) and model.tok_emb.table is model.lm_head else "float"
    # A shared tensor is stored once (safetensors refuses aliases): the tied float head, or the
    # quantized head that the embedding reads from; load_quantized ties them again.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("tok_emb.table.")
             and not (k == "lm_head.weight" and model.config.tie_embeddings)}
    config = {"format": QUANTIZED_FORMAT, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "model": asdict(model.config), "layers": layers, "embedding": embedding,
              "quantize": quantize_config, "source": source or {}, "report": report or {}}
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": QUANTIZED_FORMAT})
        if tokenizer is not None:
            tokenizer.save(directory)
        atomic_write_text(directory / "config.json", json.dumps(config, indent=2, default=str))  # last: marks it complete
    except OSError as e:
        raise LLMLabError(f"writing {directory} failed ({e}); the directory holds no complete model") from None
    return directory


def read_config(directory: Path) -> dict:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LLMLabError(f"{directory}/config.json cannot be read ({e}); quantize the model again") from None
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LLMLabError(f"{directory} is quantized-model format version {version!r}; this llmlab reads up to "
                          f"{FORMAT_VERSION}: upgrade llmlab, or quantize the source model again")
    return config


def load_quantized(directory: str | Path):
    """(Transformer with quantized layers, Tokenizer or None) from a directory `save_quantized` wrote."""
    from safetensors.torch import load_file

    from llmlab.core.config import config_from_dict
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer import load_tokenizer
    from llmlab.tokenizer.base import TOKENIZER_FILE

    directory = Path(directory)
    config = read_config(directory)
    if not (directory / WEIGHTS).is_file():
        raise LLMLabError(f"{directory} has no {WEIGHTS}: the save did not finish; quantize the model again")
    model_config = config_from_dict(ModelConfig, config["model"])
    model = Transformer.skeleton(model_config)
    layers = config["layers"]
    replace_linears(model, list(layers), lambda name, linear: empty_layer(layers[name]))
    if config.get("embedding") == "lm_head":
        model.tok_emb = QuantizedEmbedding(model.get_submodule(HEAD))
    state = load_file(str(directory / WEIGHTS))
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise LLMLabError(f"{directory}: tensor {name} has shape {tuple(tensor.shape)} but its config expects "
                              f"{tuple(expected[name].shape)}; the files do not belong together: quantize again")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not m.startswith("tok_emb.table.")
               and not (m == "lm_head.weight" and model_config.tie_embeddings)]
    if missing or unexpected:
        raise LLMLabError(f"{directory}/{WEIGHTS} does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if model_config.tie_embeddings and config.get("embedding") != "lm_head":
        model.lm_head.weight = model.tok_emb.weight
    if model_config.position == "rope":
        model.init_rope()
    tokenizer = load_tokenizer(directory) if (directory / TOKENIZER_FILE).is_file() else None
    return model.eval(), tokenizer
