"""Hugging Face checkpoint directories <-> our Transformer.

A Hugging Face model directory holds `config.json` (architecture + hyperparameters) and the weights
as safetensors: one `model.safetensors`, or shards listed in `model.safetensors.index.json`
(`weight_map`: tensor name -> shard file). We read four families:

    family           model_type   layout notes
    Llama            llama        RMSNorm, SwiGLU, RoPE (rotate-halves pairing, same as ours), GQA
    Mistral          mistral      Llama layout; its sliding attention window caps our context length
    Qwen2            qwen2        Llama layout + biases on the q/k/v projections
    GPT-2            gpt2         LayerNorm, GELU(tanh), learned positions; Conv1D weights are
                                  stored (in, out), i.e. transposed w.r.t. nn.Linear; q/k/v fused

The name mapping lives in one table per family (`LLAMA_NAMES`, `GPT2_NAMES`), in the same spirit as
`llmlab.model.gguf.TENSOR_NAMES`. `save_hf_dir` goes the other way, writing a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_bytes, atomic_write_text, read_json_object
from llmlab.model.config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LLAMA_FAMILY = ("llama", "mistral", "qwen2")

# HF Llama/Mistral/Qwen2 name (with {i} for the layer) -> our parameter name.
LLAMA_NAMES = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.norm.weight": "final_norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{i}.input_layernorm.weight": "blocks.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.mlp_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attn.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attn.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attn.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attn.wo.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attn.wq.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attn.wk.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attn.wv.bias",
    "model.layers.{i}.self_attn.o_proj.bias": "blocks.{i}.attn.wo.bias",
    "model.layers.{i}.mlp.gate_proj.weight": "blocks.{i}.mlp.w_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blocks.{i}.mlp.w_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.mlp.w_down.weight",
    "model.layers.{i}.mlp.gate_proj.bias": "blocks.{i}.mlp.w_gate.bias",
    "model.layers.{i}.mlp.up_proj.bias": "blocks.{i}.mlp.w_up.bias",
    "model.layers.{i}.mlp.down_proj.bias": "blocks.{i}.mlp.w_down.bias",
}

# GPT-2 (GPT2LMHeadModel, "transformer." prefix) -> ours. "attn.c_attn" holds q, k, v side by side
# and is split in `_gpt2_state`; every Conv1D weight ("c_*") is transposed there too.
GPT2_NAMES = {
    "transformer.wte.weight": "tok_emb.weight",
    "transformer.wpe.weight": "pos_emb.weight",
    "transformer.ln_f.weight": "final_norm.weight",
    "transformer.ln_f.bias": "final_norm.bias",
    "lm_head.weight": "lm_head.weight",
    "transformer.h.{i}.ln_1.weight": "blocks.{i}.attn_norm.weight",
    "transformer.h.{i}.ln_1.bias": "blocks.{i}.attn_norm.bias",
    "transformer.h.{i}.ln_2.weight": "blocks.{i}.mlp_norm.weight",
    "transformer.h.{i}.ln_2.bias": "blocks.{i}.mlp_norm.bias",
    "transformer.h.{i}.attn.c_proj.weight": "blocks.{i}.attn.wo.weight",
    "transformer.h.{i}.attn.c_proj.bias": "blocks.{i}.attn.wo.bias",
    "transformer.h.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.w_up.weight",
    "transformer.h.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.w_up.bias",
    "transformer.h.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.w_down.weight",
    "transformer.h.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.w_down.bias",
}


def rename_tensor(name: str, table: dict[str, str]) -> str | None:
    """Look `name` up in a {i}-templated table: the first all-digit component is the layer index."""
    parts = name.split(".")
    for k, part in enumerate(parts):
        if part.isdigit():
            target = table.get(".".join(parts[:k] + ["{i}"] + parts[k + 1:]))
            return target.replace("{i}", part) if target else None
    return table.get(name)


# ----------------------------------------------------------------------------- reading


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise LLMLabError(f"{directory} has no config.json: it is not a Hugging Face model directory")
    return read_json_object(path, "it is not a model config transformers wrote")


def _rope_params(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(RoPE base, scaling dict or None). transformers 5 nests both in `rope_parameters`; 4.x keeps
    `rope_theta` and `rope_scaling` at the top level."""
    params = dict(cfg.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = dict(cfg.get("rope_scaling") or params)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return theta, None
    if kind not in ROPE_SCALINGS:
        raise LLMLabError(f"RoPE scaling {kind!r} is not supported (supported: default, {', '.join(ROPE_SCALINGS)}); "
                          "the model's positions would be encoded differently from its training")
    return theta, {**scaling, "rope_type": kind}


ROPE_SCALINGS = ("linear", "llama3")


def scaled_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any]) -> torch.Tensor:
    """RoPE frequencies theta^(-2i/D) with a checkpoint's context-extension scaling applied.

    linear  (position interpolation, Chen et al. 2023, arXiv:2306.15595): every frequency / factor,
            i.e. positions are squeezed by `factor` into the trained range.
    llama3  (Llama 3.1): wavelengths longer than original_context/low_freq_factor are slowed by
            `factor`, those shorter than original_context/high_freq_factor are kept, and the band
            between is interpolated linearly in original_context/wavelength.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    context = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * torch.pi / inv_freq
    ratio = context / wavelength                       # how many wavelengths fit the trained context
    blend = ((ratio - low) / (high - low)).clamp(0.0, 1.0)  # 0: long wavelength (scale), 1: short (keep)
    return (1 - blend) * inv_freq / factor + blend * inv_freq


def apply_rope_scaling(model, scaling: dict[str, Any]) -> None:
    """Replace a built model's RoPE tables with scaled ones. Our ModelConfig has no scaling fields,
    so this lives with the checkpoint loader; calling `model.init_rope()` again would undo it."""
    c = model.config
    inv_freq = scaled_inv_freq(c.head_dim, c.rope_theta, scaling)
    angles = torch.outer(torch.arange(c.block_size, dtype=torch.float64), inv_freq)
    device = model.tok_emb.weight.device
    model.rope_cos, model.rope_sin = angles.cos().float().to(device), angles.sin().float().to(device)


def model_config_from_hf(cfg: dict[str, Any], directory: Path) -> ModelConfig:
    """Map a Hugging Face config.json dict to our ModelConfig."""
    kind = cfg.get("model_type")
    if kind in LLAMA_FAMILY:
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise LLMLabError(f"{directory}/config.json: hidden_act {act!r} is not supported (SwiGLU needs silu)")
        n_head = cfg["num_attention_heads"]
        attention_bias = bool(cfg.get("attention_bias", False))
        context = cfg.get("max_position_embeddings", 2048)
        window = cfg.get("sliding_window") if (kind == "mistral" or cfg.get("use_sliding_window")) else None
        if window:
            # We attend to the whole context; capping it at the window keeps outputs identical to
            # sliding-window attention (which only differs once a sequence is longer than the window).
            context = min(context, int(window))
        return ModelConfig(
            vocab_size=cfg["vocab_size"], block_size=context,
            n_layer=cfg["num_hidden_layers"], n_head=n_head, n_kv_head=cfg.get("num_key_value_heads") or n_head,
            n_embd=cfg["hidden_size"], head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_head,
            mlp_hidden=cfg["intermediate_size"], position="rope", rope_theta=_rope_params(cfg)[0],
            norm="rmsnorm", norm_eps=cfg.get("rms_norm_eps", 1e-6), mlp="swiglu",
            # Llama's attention_bias puts biases on q, k, v and o; Qwen2 has them on q, k, v only.
            bias=attention_bias and bool(cfg.get("mlp_bias", False)),
            qkv_bias=attention_bias or kind == "qwen2",
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    if kind == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise LLMLabError(f"{directory}/config.json: GPT-2 activation {act!r} is not supported "
                              "(gelu_new, gelu_pytorch_tanh or gelu)")
        return ModelConfig(
            vocab_size=cfg["vocab_size"], block_size=cfg.get("n_positions", 1024), n_layer=cfg["n_layer"],
            n_head=cfg["n_head"], n_embd=cfg["n_embd"], mlp_hidden=cfg.get("n_inner") or 4 * cfg["n_embd"],
            position="learned", norm="layernorm", norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            mlp="gelu-exact" if act == "gelu" else "gelu",
            bias=True, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
    raise LLMLabError(f"{directory}/config.json: model_type {kind!r} is not supported "
                      f"(supported: {', '.join(LLAMA_FAMILY)}, gpt2)")


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a directory: model.safetensors, or the shards its index file lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (directory / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise LLMLabError(f"{directory / INDEX_FILE} is not a valid safetensors index ({e!r})") from None
        files = sorted(set(weight_map.values()))
    elif (directory / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise LLMLabError(f"{directory} holds no {SINGLE_FILE} or {INDEX_FILE} "
                          "(only safetensors weights are read; convert .bin checkpoints first)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise LLMLabError(f"{path} is listed in {INDEX_FILE} but missing: download the missing shard")
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise LLMLabError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from None
    return state


def _gpt2_state(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in hf_state.items():
        parts = name.split(".")
        if not name.startswith("transformer.") and name != "lm_head.weight":
            name = "transformer." + name  # GPT2Model (no LM head) saves names without the prefix
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            i, kind = name.split(".")[2], parts[-1]
            # Conv1D weight is (in, 3*out): transpose to nn.Linear's (out, in), then split q|k|v.
            fused = tensor.t() if kind == "weight" else tensor
            for proj, part in zip(("wq", "wk", "wv"), fused.split(config.n_embd, dim=0)):
                state[f"blocks.{i}.attn.{proj}.{kind}"] = part.contiguous()
            continue
        ours = rename_tensor(name, GPT2_NAMES)
        if ours is None:
            continue  # e.g. attn.bias / attn.masked_bias: causal-mask buffers, not weights
        is_conv1d = ".c_" in name and name.endswith(".weight")
        state[ours] = tensor.t().contiguous() if is_conv1d else tensor
    return state


def load_hf_state(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, float32 state dict in our names) from a Hugging Face model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LLMLabError(f"{directory}: no such directory")
    cfg = read_hf_config(directory)
    try:
        config = model_config_from_hf(cfg, directory)
    except KeyError as e:
        raise LLMLabError(f"{directory}/config.json lacks {e}, which a {cfg.get('model_type')} model needs") from None
    hf_state = read_safetensors(directory)
    if cfg["model_type"] == "gpt2":
        state = _gpt2_state(hf_state, config)
    else:
        state = {}
        for name, tensor in hf_state.items():
            ours = rename_tensor(name, LLAMA_NAMES)
            if ours is not None:
                state[ours] = tensor
    state = {k: v.float() for k, v in state.items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    elif "lm_head.weight" not in state and "tok_emb.weight" in state:
        # Some checkpoints say tie_word_embeddings=false yet ship no head; the embedding is the head.
        config = config.replace(tie_embeddings=True)
    return config, state


def load_hf_model(directory: str | Path):
    """(Transformer, tokenizer or None) from a Hugging Face model directory."""
    from llmlab.model.transformer import Transformer

    directory = Path(directory)
    config, state = load_hf_state(directory)
    try:
        model = Transformer.from_state_dict(config, state)
    except ValueError as e:
        raise LLMLabError(f"{directory}: the weights do not match config.json ({e})") from None
    cfg = read_hf_config(directory)
    if cfg.get("model_type") in LLAMA_FAMILY and _rope_params(cfg)[1] is not None:
        apply_rope_scaling(model, _rope_params(cfg)[1])
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        from llmlab.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(directory)  # with tokenizer_config.json: special tokens, BOS rule, template
        if tokenizer.vocab_size > config.vocab_size:
            raise LLMLabError(f"{directory}/tokenizer.json has ids up to {tokenizer.vocab_size - 1}, but config.json "
                              f"says the model has {config.vocab_size} tokens: the tokenizer belongs to another model")
    return model, tokenizer


# ----------------------------------------------------------------------------- writing


def hf_config_from_model(config: ModelConfig, tokenizer=None) -> dict[str, Any]:
    """The config.json transformers needs to rebuild `config` (Llama / Qwen2 / GPT-2 layout)."""
    special = {}
    if tokenizer is not None:
        special = {"bos_token_id": getattr(tokenizer, "bos_id", None), "eos_token_id": getattr(tokenizer, "eos_id", None),
                   "pad_token_id": getattr(tokenizer, "pad_id", None)}
    if config.position == "rope":
        if config.norm != "rmsnorm" or config.mlp != "swiglu":
            raise LLMLabError("only Llama-style (rope + rmsnorm + swiglu) or GPT-2-style (learned + layernorm + "
                              f"gelu) models can be exported to Hugging Face; this one has {config.norm}/{config.mlp}")
        # Biases on q/k/v only is exactly Qwen2; biases everywhere is Llama with attention/mlp_bias.
        qwen2 = config.qkv_bias and not config.bias
        out = {
            "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
            "model_type": "qwen2" if qwen2 else "llama",
            "vocab_size": config.vocab_size, "hidden_size": config.n_embd,
            "intermediate_size": config.mlp_hidden, "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
            "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.block_size,
            "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
            "tie_word_embeddings": config.tie_embeddings, "torch_dtype": "float32",
        }
        if not qwen2:
            out.update(attention_bias=config.bias, mlp_bias=config.bias)
        return {**out, **special}
    if config.norm != "layernorm" or config.mlp not in ("gelu", "gelu-exact") or config.n_kv_head != config.n_head:
        raise LLMLabError("a learned-position model exports as GPT-2, which needs layernorm, gelu and no GQA")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": config.mlp_hidden,
            "activation_function": "gelu" if config.mlp == "gelu-exact" else "gelu_new",   # gelu_new is tanh
            "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "float32", **special}


def hf_state_from_model(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> HF tensor names (contiguous, float32; a tied head is written once)."""
    out: dict[str, torch.Tensor] = {}
    if config.position == "rope":
        reverse = {v: k for k, v in LLAMA_NAMES.items()}
        for name, tensor in state.items():
            if name == "lm_head.weight" and config.tie_embeddings:
                continue
            hf_name = rename_tensor(name, reverse)
            if hf_name is None:
                raise LLMLabError(f"parameter {name} has no Hugging Face equivalent")
            out[hf_name] = tensor.detach().float().contiguous().clone()
        return out
    reverse = {v: k for k, v in GPT2_NAMES.items()}
    for name, tensor in state.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        if ".attn.wq." in name or ".attn.wk." in name or ".attn.wv." in name:
            continue  # fused below
        hf_name = rename_tensor(name, reverse)
        if hf_name is None:
            raise LLMLabError(f"parameter {name} has no GPT-2 equivalent")
        t = tensor.detach().float()
        out[hf_name] = (t.t() if ".c_" in hf_name and hf_name.endswith(".weight") else t).contiguous().clone()
    for i in range(config.n_layer):
        p = f"blocks.{i}.attn"
        w = torch.cat([state[f"{p}.{n}.weight"].detach().float() for n in ("wq", "wk", "wv")], dim=0)
        out[f"transformer.h.{i}.attn.c_attn.weight"] = w.t().contiguous()
        biases = [state.get(f"{p}.{n}.bias") for n in ("wq", "wk", "wv")]
        out[f"transformer.h.{i}.attn.c_attn.bias"] = (torch.cat([b.detach().float() for b in biases])
                                                      if all(b is not None for b in biases)
                                                      else torch.zeros(3 * config.n_embd))
    # GPT-2 always has biases; a bias-free model of ours gets zero biases (same function).
    for i in range(config.n_layer):
        for name, size in ((f"transformer.h.{i}.attn.c_proj.bias", config.n_embd),
                           (f"transformer.h.{i}.mlp.c_fc.bias", config.mlp_hidden),
                           (f"transformer.h.{i}.mlp.c_proj.bias", config.n_embd),
                           (f"transformer.h.{i}.ln_1.bias", config.n_embd),
                           (f"transformer.h.{i}.ln_2.bias", config.n_embd)):
            out.setdefault(name, torch.zeros(size))
    out.setdefault("transformer.ln_f.bias", torch.zeros(config.n_embd))
    return out


def save_hf_dir(state: dict[str, torch.Tensor], config: ModelConfig, tokenizer, directory: str | Path) -> list[Path]:
    """Write config.json, model.safetensors and the tokenizer files into `directory`; returns the
    files written. A character tokenizer is written as a BPE vocabulary of its characters with no
    merges (same ids), so transformers runs a char model with its tokenizer too."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_from_model(state, config)
    atomic_write_bytes(directory / SINGLE_FILE, save(tensors, metadata={"format": "pt"}))
    written = [directory / SINGLE_FILE]
    atomic_write_text(directory / "config.json", json.dumps(hf_config_from_model(config, tokenizer), indent=2))
    written.append(directory / "config.json")
    if tokenizer is not None and getattr(tokenizer, "kind", None) in ("bpe", "spm", "char"):
        from llmlab.tokenizer.formats import save_hf_tokenizer
        save_hf_tokenizer(tokenizer, directory)
        written += [directory / "tokenizer.json", directory / "tokenizer_config.json"]
    return written
