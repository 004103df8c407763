"""Export our models: to a Hugging Face directory (see `llmlab.model.hf`) or to a GGUF file.

GGUF (llama.cpp's format) is written with the `gguf` library's `GGUFWriter`; what we decide is
what goes in it:

    metadata   llama.* hyperparameters (the keys llama.cpp's loader reads), and the tokenizer as
               tokenizer.ggml.* (byte-level BPE: model "gpt2", token strings, types, merges; SentencePiece
               BPE and the character tokenizer: model "llama", tokens, scores, types; both: special
               ids, add_bos/add_space_prefix, chat template)
    tensors    names from `llmlab.model.gguf.TENSOR_NAMES` (the same table the reader uses), q/k rows
               permuted to llama.cpp's interleaved RoPE pairing (llama arch only), matrices in F32, F16, Q8_0,
               Q4_0 or Q4_1 (`write_gguf` takes any (name, rows, GGML type) list, so models with int8/int4
               layers write their own blocks: `llmlab.quant.gguf_export`); 1-D tensors (norms, biases)
               always F32, as llama.cpp's converter keeps them

Q8_0 (our quantizer, `quantize_q8_0`): blocks of 32 values share one float16 scale
d = max|x| / 127 and store round(x / d) as int8: 34 bytes per 32 weights (8.5 bits per weight).
Q4_0 / Q4_1 (4.5 / 5 bits per weight) follow llama.cpp's reference rounding in `llmlab.quant.gguf_export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_path
from llmlab.model.config import ModelConfig

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
Q8_BLOCK = 32


def quantize_q8_0(weight: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) -> uint8 (rows, cols/32*34): per block [f16 scale d][32 x int8 q]."""
    rows, cols = weight.shape
    blocks = weight.astype(np.float32).reshape(-1, Q8_BLOCK)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    # llama.cpp rounds half away from zero (roundf); np.round would round half to even.
    q = np.trunc(blocks * inverse + np.copysign(0.5, blocks)).clip(-127, 127).astype(np.int8)
    packed = np.concatenate([scale.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return packed.reshape(rows, cols // Q8_BLOCK * 34)


def permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Our rotate-halves q/k rows -> llama.cpp's interleaved-pairs order (inverse of `unpermute_qk`).
    Each head's rows are (2 halves, D/2); llama.cpp wants them as (D/2 pairs, 2)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def gguf_arch(config: ModelConfig) -> str:
    if config.position != "rope" or config.norm != "rmsnorm" or config.mlp != "swiglu":
        raise LLMLabError("GGUF export supports Llama-style models (rope + rmsnorm + swiglu); this one is "
                          f"{config.position}/{config.norm}/{config.mlp}: export it with --to hf instead")
    if config.bias:
        raise LLMLabError("GGUF export does not support biases on every linear layer (llama.cpp's llama "
                          "architecture has none); export with --to hf instead")
    return "qwen2" if config.qkv_bias else "llama"


def _tokenizer_pre(tokenizer) -> str:
    """llama.cpp's name for the pre-tokenizer (`tokenizer.ggml.pre`) of a byte-level BPE tokenizer.
    The names select regexes compiled into llama.cpp (src/llama-vocab.cpp), and some switch more on:
    llama-bpe also turns on ignore_merges, so a Llama-3-pattern tokenizer without it is written as
    smaug-bpe (the same regex, nothing else); "gpt-2" (not "gpt2", which llama.cpp does not know and
    reads as its different "default" split) is GPT-2's own pattern. llama.cpp does not normalize
    byte-level text: a Qwen2 tokenizer's NFC step is dropped, as llama.cpp's own converter drops it
    (only text that is not already NFC encodes differently)."""
    from llmlab.tokenizer.patterns import PATTERNS

    if tokenizer.pattern == PATTERNS["gpt2"] and not tokenizer.ignore_merges:
        return "smollm" if tokenizer.split_digits else "gpt-2"
    # cl100k ("gpt4") and Llama 3 split text identically (the gpt4 form only adds possessive
    # quantifiers that cannot change a match here).
    if tokenizer.pattern in (PATTERNS["gpt4"], PATTERNS["llama3"]) and not tokenizer.split_digits:
        return "llama-bpe" if tokenizer.ignore_merges else "smaug-bpe"
    if tokenizer.pattern == PATTERNS["qwen2"] and not tokenizer.split_digits and not tokenizer.ignore_merges:
        return "qwen2"
    raise LLMLabError("this tokenizer's pre-tokenization has no llama.cpp name (the gpt2, gpt4, llama3 and qwen2 "
                      "patterns do); export with --to hf, or pass --no-tokenizer")


def _add_tokenizer(writer, tokenizer) -> None:
    """tokenizer.ggml.*: byte-level BPE as model "gpt2" (tokens in GPT-2's byte alphabet + merges);
    SentencePiece-style BPE, and the character tokenizer as a vocabulary of its characters with no
    merges, as model "llama" (tokens with "▁" for space, scores that rank the merges, token types)."""
    from llmlab.tokenizer.formats import exportable, hf_tokenizer_json
    from llmlab.tokenizer.spm import SentencePieceBPE

    tokenizer = exportable(tokenizer)
    if isinstance(tokenizer, SentencePieceBPE):
        from llmlab.tokenizer.gguf_vocab import spm_gguf_vocab

        tokens, scores, types = spm_gguf_vocab(tokenizer)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        if tokenizer.unk_id is not None:
            writer.add_unk_token_id(int(tokenizer.unk_id))
        add_space_prefix = tokenizer.adds_prefix
    else:
        hf = hf_tokenizer_json(tokenizer)
        tokens = [""] * len(hf["model"]["vocab"])
        for text, i in hf["model"]["vocab"].items():
            tokens[i] = text
        special_ids = set(tokenizer.special_tokens.values())
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_tokenizer_pre(tokenizer))
        writer.add_token_list(tokens)
        writer.add_token_types([3 if i in special_ids else 1 for i in range(len(tokens))])  # 3 = control
        writer.add_token_merges([f"{a} {b}" for a, b in hf["model"]["merges"]])
        add_space_prefix = False
    for setter, value in ((writer.add_bos_token_id, tokenizer.bos_id), (writer.add_eos_token_id, tokenizer.eos_id),
                          (writer.add_pad_token_id, tokenizer.pad_id)):
        if value is not None:
            setter(int(value))
    # Say exactly what our encoder does, or llama.cpp applies its defaults (a "llama" vocabulary:
    # BOS and a space prefix; llama-bpe: BOS).
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_eos_token(tokenizer.add_eos)
    writer.add_add_space_prefix(add_space_prefix)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def save_gguf(state: dict[str, torch.Tensor], config: ModelConfig, tokenizer, path: str | Path,
              dtype: str = "f16", name: str = "llmlab") -> Path:
    """Write a llama.cpp-loadable GGUF file from float weights. dtype: f32 | f16 | q8_0 | q4_0 | q4_1
    (for 2-D weights; a model with int8/int4 layers goes through llmlab.quant.gguf_export)."""
    check_gguf_type(dtype)
    arch = gguf_arch(config)
    tensors = []
    for our_name, tensor in state.items():
        if our_name == "lm_head.weight" and config.tie_embeddings:
            continue  # no output.weight: llama.cpp then reuses token_embd, as the reader does
        data = to_gguf_rows(our_name, tensor.detach().float().cpu().numpy(), config, arch)
        tensors.append((gguf_tensor_name(our_name), *encode_float(data, dtype)))
    return write_gguf(path, config, tokenizer, tensors, dtype, name)


def check_gguf_type(dtype: str) -> None:
    if dtype not in GGUF_TYPES:
        raise LLMLabError(f"GGUF tensor type {dtype!r} is not supported for export (choose {', '.join(GGUF_TYPES)})")


def gguf_tensor_name(our_name: str) -> str:
    """Our parameter name -> its GGUF tensor name (`llmlab.model.gguf.TENSOR_NAMES` read backwards)."""
    from llmlab.model.gguf import TENSOR_NAMES

    reverse = {ours: theirs for theirs, ours in TENSOR_NAMES.items()}
    parts = our_name.split(".")
    key = ".".join(["blocks", "{i}", *parts[2:]]) if parts[0] == "blocks" else our_name
    gguf_name = reverse.get(key)
    if gguf_name is None:
        raise LLMLabError(f"parameter {our_name} has no GGUF tensor name")
    return gguf_name.replace("{i}", parts[1]) if parts[0] == "blocks" else gguf_name


def to_gguf_rows(our_name: str, rows: np.ndarray, config: ModelConfig, arch: str) -> np.ndarray:
    """q/k rows (of floats, or of raw quantized blocks: a row permutation moves whole rows) in
    llama.cpp's order. Only its "llama" architecture uses interleaved RoPE pairs ("NORM" rope); qwen2
    uses the rotate-halves ("NEOX") pairing like ours, so its q/k rows are stored unpermuted."""
    heads = None
    if arch == "llama" and our_name.endswith(("attn.wq.weight", "attn.wq.bias")):
        heads = config.n_head
    elif arch == "llama" and our_name.endswith(("attn.wk.weight", "attn.wk.bias")):
        heads = config.n_kv_head
    if heads is not None:
        rows = permute_qk(rows.reshape(rows.shape[0], -1), heads).reshape(rows.shape)
    return np.ascontiguousarray(rows)


def encode_float(data: np.ndarray, dtype: str):
    """A float32 tensor (GGUF row order) -> (array to write, raw GGML type or None for a plain array).
    1-D tensors (norms, biases) stay F32, as llama.cpp's converter keeps them; a matrix whose rows
    are not a whole number of 32-weight blocks cannot be block-quantized and is written F16."""
    import gguf

    if data.ndim == 1 or dtype == "f32":
        return data.astype(np.float32), None
    if dtype == "f16" or data.shape[1] % Q8_BLOCK:
        return data.astype(np.float16), None
    if dtype == "q8_0":
        return quantize_q8_0(data), gguf.GGMLQuantizationType.Q8_0
    from llmlab.quant.gguf_export import quantize_q4_0, quantize_q4_1

    if dtype == "q4_0":
        return quantize_q4_0(data), gguf.GGMLQuantizationType.Q4_0
    return quantize_q4_1(data), gguf.GGMLQuantizationType.Q4_1


def write_gguf(path: str | Path, config: ModelConfig, tokenizer, tensors, dtype: str, name: str) -> Path:
    """Write metadata, tokenizer and `tensors` (an iterable of (GGUF name, array, raw GGML type or
    None), rows already in llama.cpp's order) as a GGUF file. dtype names the file type."""
    check_gguf_type(dtype)
    arch = gguf_arch(config)
    path = Path(path)
    # Written under a temporary name and renamed over `path` only when complete: an export that
    # fails (bad input, disk full, Ctrl-C) leaves the previous file as it was and no temporary.
    try:
        with atomic_path(path) as tmp:
            _write_gguf(tmp, tensors, config, tokenizer, arch, dtype, name)
    except OSError as e:
        raise LLMLabError(f"writing {path} failed ({e}); nothing was written") from None
    return path


def _write_gguf(tmp: Path, tensors, config: ModelConfig, tokenizer, arch: str, dtype: str, name: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        _add_metadata(writer, config, tokenizer, dtype, name)
        for gguf_name, data, raw_dtype in tensors:
            if raw_dtype is None:
                writer.add_tensor(gguf_name, data)
            else:
                writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_metadata(writer, config: ModelConfig, tokenizer, dtype: str, name: str) -> None:
    import gguf

    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
                  "q4_1": "MOSTLY_Q4_1"}
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, file_types[dtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.mlp_hidden)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    if tokenizer is not None:
        _add_tokenizer(writer, tokenizer)


# ----------------------------------------------------------------------------- sources


def load_export_model(source: str | Path, merge: bool = False, native_gguf: bool = False):
    """(Transformer, tokenizer or None) from any model source (llmlab.model.source); its layers may be
    quantized (a `llmlab quantize` directory, or a GGUF loaded with `native_gguf`).
    A LoRA fine-tuning run exports only merged (`merge`): its adapter alone goes to PEFT's format."""
    from llmlab.model.source import load_model, resolve_source

    resolved = resolve_source(source)
    if native_gguf and resolved.kind not in ("builtin", "gguf"):
        raise LLMLabError(f"--native-gguf keeps a GGUF file's quantized blocks, but {source} is a {resolved.kind} "
                          "model: leave --native-gguf out")
    if resolved.kind == "hf":
        from llmlab.model.hf import LLAMA_FAMILY, _rope_params, read_hf_config
        cfg = read_hf_config(resolved.path)
        if cfg.get("model_type") in LLAMA_FAMILY and _rope_params(cfg)[1] is not None:
            raise LLMLabError(f"{resolved.path} uses RoPE scaling, which our exports cannot record yet")
    model, tokenizer, _ = load_model(resolved, merge_adapters=merge, native_gguf=native_gguf)
    if any(type(m).__name__ == "LoRALinear" for m in model.modules()):
        raise LLMLabError(f"{source} is a LoRA fine-tune: export the adapter with --to peft, or the whole model "
                          "with --merge (the adapter folded into its base)")
    return model, tokenizer


def _float_state(model) -> dict[str, torch.Tensor]:
    from llmlab.quant.gguf_export import dequantized_state, has_quantized_layers

    return dequantized_state(model) if has_quantized_layers(model) else model.state_dict()


def load_for_export(source: str | Path, merge: bool = False) -> tuple[dict[str, torch.Tensor], ModelConfig, Any]:
    """(float state dict, config, tokenizer or None) from any model source; quantized layers dequantized."""
    model, tokenizer = load_export_model(source, merge)
    return _float_state(model), model.config, tokenizer


def _count_weights(model) -> int:
    """Weights of the float model (a tied head once), without dequantizing anything."""
    from llmlab.quant.gguf_export import weight_items

    count = 0
    for item in weight_items(model).values():
        count += item.numel() if isinstance(item, torch.Tensor) else item.in_features * item.out_features
    return count


def export_model(source: str | Path, to: str, out: str | Path, dtype: str = "f16",
                 with_tokenizer: bool = True, merge: bool = False, native_gguf: bool = False) -> dict[str, Any]:
    """Export `source` to `out` (to: "hf" directory or "gguf" file). Returns a summary dict.
    A model with int8/int4 layers goes to GGUF through `llmlab.quant.gguf_export.save_quantized_gguf`,
    which writes group-32 layers' own blocks (Q8_0, Q4_1, Q4_0) without rounding them again."""
    if to not in ("hf", "gguf"):
        raise LLMLabError(f"unknown export format {to!r}: choose hf or gguf")
    if to == "gguf":
        check_gguf_type(dtype)
    model, tokenizer = load_export_model(source, merge, native_gguf)
    config = model.config
    if not with_tokenizer:
        tokenizer = None
    notes: list[str] = []
    n_params = _count_weights(model)
    if to == "hf":
        from llmlab.model.hf import save_hf_dir
        files = save_hf_dir(_float_state(model), config, tokenizer, out)
    else:
        from llmlab.quant.gguf_export import has_quantized_layers, save_quantized_gguf
        name = Path(str(source)).name
        if has_quantized_layers(model):
            files = [save_quantized_gguf(model, tokenizer, out, qtype=dtype, name=name, notes=notes)]
        else:
            files = [save_gguf(model.state_dict(), config, tokenizer, out, dtype=dtype, name=name)]
        if tokenizer is not None and tokenizer.kind == "char":
            notes.append("llama.cpp takes id 2 of a 'llama' vocabulary that names no EOS as the end of text, and "
                         f"here it is the character {tokenizer.decode([2])!r}: generate with --ignore-eos there")
    return {"source": str(source), "to": to, "out": str(out), "files": [str(f) for f in files],
            "parameters": n_params, "dtype": dtype if to == "gguf" else "float32",
            "bytes": sum(Path(f).stat().st_size for f in files), "notes": notes}
