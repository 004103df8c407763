"""Hugging Face PEFT LoRA adapter directories <-> our LoRA layers, both ways.

A PEFT adapter directory is what `peft.PeftModel.save_pretrained` writes, and what
`PeftModel.from_pretrained(base_model, directory)` loads on top of a base model:

    adapter_config.json         {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": [...],
                                 "use_rslora": false, "use_dora": false, "base_model_name_or_path": ...}
    adapter_model.safetensors   only the adapter's tensors, named after the base model's modules

The tensors of one adapted Llama layer, and ours (llmlab.finetune.lora.LoRALinear):

    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight     blocks.{i}.attn.wq.lora_A     (r, in)
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight     blocks.{i}.attn.wq.lora_B     (out, r)
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_magnitude_vector   ...wq.magnitude (DoRA, out)

"base_model.model." is the PeftModel wrapper's prefix; the rest is the HF module name, mapped to ours
with llmlab.model.hf.LLAMA_NAMES (q/k/v/o_proj -> attn.wq/wk/wv/wo, gate/up/down_proj -> mlp.w_gate/
w_up/w_down, lm_head -> lm_head). Only the Llama layout (RoPE, separate q/k/v: Llama, Mistral, Qwen2)
maps one module to one of ours; GPT-2's fused c_attn would need its adapter split by rows.

Both libraries compute y = W x + s B (A x) with s = lora_alpha / r, or lora_alpha / sqrt(r) with
use_rslora, and DoRA's W' = m * (W + s B A) / ||W + s B A|| per output row with the norm detached;
the same A, B, m therefore give the same outputs in eval mode. (In training with dropout they differ
slightly: PEFT's DoRA also feeds the dropped-out input through the frozen W.)

A QLoRA adapter exports like any other, but it was trained against the NF4-rounded base: the
safetensors metadata and README.md say so, and `load_peft_adapter(..., method="qlora")` rebuilds that
base (merge it onto dequantize(quantize(W)), not W). This module never imports peft.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_path, atomic_write_json, atomic_write_text, read_json_object
from llmlab.finetune.config import LoRAConfig
from llmlab.finetune.lora import apply_lora, lora_layers
from llmlab.model.hf import LLAMA_NAMES, rename_tensor

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# HF module name -> ours, for the linear layers only (a .weight entry whose leaf is wq, w_up, lm_head, ...).
MODULE_NAMES = {hf[:-len(".weight")]: ours[:-len(".weight")] for hf, ours in LLAMA_NAMES.items()
                if hf.endswith(".weight") and ours.split(".")[-2].startswith(("w", "lm_head"))}
LEAF_NAMES = {hf.split(".")[-1]: ours.split(".", 2)[-1] if ours.startswith("blocks.") else ours
              for hf, ours in MODULE_NAMES.items()}          # q_proj -> attn.wq, lm_head -> lm_head
OUR_NAMES = {ours: hf for hf, ours in MODULE_NAMES.items()}
BLOCK_SUFFIXES = {hf.split("{i}.")[1] for hf in MODULE_NAMES if "{i}." in hf}   # self_attn.q_proj, mlp.up_proj
# PEFT also saves the frozen weight of an adapted lm_head ("save_embedding_layers", for resized
# vocabularies) and loads it over the base's; ours is the LoRALinear's base.weight.
TENSOR_SUFFIXES = {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B", ".base_layer.weight": "base.weight",
                   ".lora_magnitude_vector": "magnitude", ".lora_magnitude_vector.weight": "magnitude"}
# adapter_config.json keys that only describe or initialise the adapter: any value is fine. Every
# other key must be absent or empty/false, else PEFT would compute something our layers do not.
HARMLESS = {"peft_type", "task_type", "auto_mapping", "base_model_name_or_path", "revision", "peft_version",
            "inference_mode", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora",
            "init_lora_weights", "megatron_core", "qalora_group_size", "layers_pattern", "exclude_modules",
            "eva_config", "corda_config", "loftq_config", "lora_ga_config", "ensure_weight_tying", "runtime_config",
            "bias", "fan_in_fan_out"}
# Initialisations that rewrite the base weights (the adapter then only fits that rewritten base).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")



def _hf_module(ours: str) -> str | None:
    return rename_tensor(ours, OUR_NAMES)


def _check_llama(model: nn.Module, what: str) -> None:
    c = getattr(model, "config", None)
    if c is None or (c.position, c.norm, c.mlp) != ("rope", "rmsnorm", "swiglu"):
        layout = "unknown" if c is None else f"{c.position}/{c.norm}/{c.mlp}"
        raise LLMLabError(f"{what}: PEFT adapters map onto Llama-family models only (rope + rmsnorm + swiglu, "
                          f"separate q/k/v projections); this model is {layout} (GPT-2's fused c_attn has no "
                          "one-to-one adapter mapping)")


def save_peft_adapter(model: nn.Module, method: str, config: LoRAConfig, base_name: str,
                      out_dir: str | Path) -> list[Path]:
    """Write the adapter of `model` (apply_lora'd with `config`, `method`) as a PEFT directory that
    `peft.PeftModel.from_pretrained(<HF export of the base>, out_dir)` loads. Returns the files written."""
    from safetensors.torch import save

    _check_llama(model, "save_peft_adapter")
    layers = lora_layers(model)
    if not layers:
        raise LLMLabError("save_peft_adapter: the model has no LoRA layers; apply_lora (or load a fine-tune) first")
    dora = [name for name, layer in layers.items() if layer.magnitude is not None]
    if method not in ("lora", "qlora", "dora") or (method == "dora") != bool(dora) or 0 < len(dora) < len(layers):
        raise LLMLabError(f"save_peft_adapter: method {method!r} does not describe the model's adapter "
                          f"({len(dora)} of {len(layers)} layers are DoRA)")
    if any(layer.r != config.r for layer in layers.values()):
        raise LLMLabError(f"save_peft_adapter: config.r={config.r} but the model's adapters have rank "
                          f"{sorted({layer.r for layer in layers.values()})}")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        key = PREFIX + _hf_module(name)
        tensors[key + ".lora_A.weight"] = layer.lora_A.detach().contiguous().clone()
        tensors[key + ".lora_B.weight"] = layer.lora_B.detach().contiguous().clone()
        if layer.magnitude is not None:
            tensors[key + ".lora_magnitude_vector"] = layer.magnitude.detach().contiguous().clone()
    metadata = {"format": "pt", "llmlab_method": method}
    if method == "qlora":
        metadata.update(llmlab_nf4_block=str(config.nf4_block), llmlab_double_quant=str(config.double_quant).lower())
        metadata["llmlab_nf4"] = (f"trained against the NF4 base (block {config.nf4_block}, double_quant "
                                  f"{config.double_quant}): merge onto dequantize(quantize(W)), not W")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(save(tensors, metadata=metadata))
    note = f"\n\nQLoRA: {metadata['llmlab_nf4']}." if method == "qlora" else ""
    atomic_write_text(out_dir / "README.md", f"# {method} adapter for {base_name}\n\nWritten by llmlab: "
                      f"r={config.r}, alpha={config.alpha:g}{', rsLoRA' if config.rslora else ''}, "
                      f"{len(layers)} layers. Load with peft.PeftModel.from_pretrained(base, this_dir).{note}\n")
    # The config goes last: until it is there, the directory is not an adapter (is_peft_dir).
    atomic_write_json(out_dir / CONFIG_FILE, {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
        "r": config.r, "lora_alpha": int(config.alpha) if float(config.alpha).is_integer() else config.alpha,
        "lora_dropout": config.dropout, "target_modules": _target_modules(model, list(layers)),
        "use_rslora": config.rslora, "use_dora": method == "dora", "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "rank_pattern": {}, "alpha_pattern": {}})
    return [out_dir / WEIGHTS_FILE, out_dir / "README.md", out_dir / CONFIG_FILE]


def _target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Leaf names ("q_proj") when each adapted kind is adapted in every block (PEFT matches them as
    name suffixes), else the full module names, so PEFT adapts exactly the layers we did."""
    mappable = [n for n, _ in model.named_modules() if _hf_module(n)]  # nn.Linear, LoRALinear or NF4
    kinds = {_hf_module(n).split(".")[-1] for n in names}
    same_kinds = {n for n in mappable if _hf_module(n).split(".")[-1] in kinds}
    if same_kinds == set(names):
        return sorted(kinds)
    return [_hf_module(n) for n in names]


def is_peft_dir(path: str | Path) -> bool:
    """True when `path` is a directory with a LoRA adapter_config.json (PEFT's adapter format)."""
    file = Path(path) / CONFIG_FILE
    try:
        return file.is_file() and read_json_object(file, "").get("peft_type") == "LORA"
    except LLMLabError:
        return False


def _our_module(hf_module: str) -> str | None:
    if hf_module != "lm_head" and not hf_module.startswith("model."):
        hf_module = "model." + hf_module  # an adapter made on LlamaModel (no LM head) lacks the prefix
    return rename_tensor(hf_module, MODULE_NAMES)


def _check_options(cfg: dict, file: Path) -> None:
    for key, value in cfg.items():
        if key not in HARMLESS and value not in (None, False, {}, [], "", 0):
            raise LLMLabError(f"{file}: option {key}={value!r} is not supported by llmlab (it changes what the "
                              f"adapter computes or which layers it covers); re-save the adapter without it")
    if cfg.get("bias", "none") != "none":
        raise LLMLabError(f"{file}: bias={cfg['bias']!r} trains biases too; llmlab reads bias 'none' adapters only")
    if cfg.get("fan_in_fan_out"):
        raise LLMLabError(f"{file}: fan_in_fan_out=true (GPT-2 Conv1D layout) is not supported; "
                          "llmlab reads Llama-family adapters")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise LLMLabError(f"{file}: init_lora_weights={init!r} rewrites the base weights, so the adapter fits "
                          "only that rewritten base; convert it to a plain LoRA adapter with PEFT first")
    task = cfg.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise LLMLabError(f"{file}: task_type {task!r}; llmlab models are causal LMs (CAUSAL_LM)")


def _targets(cfg: dict, file: Path) -> list[str]:
    """adapter_config.json's target_modules as our layer patterns."""
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return ["all-linear"]
        raise LLMLabError(f"{file}: target_modules is the regular expression {targets!r}; llmlab reads a list "
                          "of module names or 'all-linear'")
    if not isinstance(targets, list) or not targets:
        raise LLMLabError(f"{file}: target_modules must be a non-empty list of module names, not {targets!r}")
    out = []
    for target in targets:
        target = str(target)
        ours = LEAF_NAMES.get(target) if "." not in target else _our_module(target)
        if ours is None and target in BLOCK_SUFFIXES:  # "self_attn.q_proj": PEFT matches it as a suffix too
            ours = LEAF_NAMES[target.split(".")[-1]]
        if ours is None:
            raise LLMLabError(f"{file}: target module {target!r} has no llmlab equivalent (adaptable: "
                              f"{', '.join(LEAF_NAMES)}, or full names like model.layers.0.self_attn.q_proj)")
        out.append(ours)
    return out


def read_peft_adapter(adapter_dir: str | Path) -> tuple[LoRAConfig, str, list[str], dict[str, torch.Tensor], str | None]:
    """(LoRAConfig, method, adapted layer names, weights, base_model_name_or_path) of a PEFT adapter
    directory, all in our naming ("blocks.0.attn.wq", "blocks.0.attn.wq.lora_A"). method is lora or
    dora, or qlora for an adapter llmlab exported from a QLoRA fine-tune."""
    from safetensors import SafetensorError, safe_open

    adapter_dir = Path(adapter_dir)
    file = adapter_dir / CONFIG_FILE
    if not file.is_file():
        raise LLMLabError(f"{adapter_dir} has no {CONFIG_FILE}: it is not a PEFT adapter directory")
    cfg = read_json_object(file, "it is not an adapter config PEFT wrote")
    if cfg.get("peft_type") != "LORA":
        raise LLMLabError(f"{file}: peft_type is {cfg.get('peft_type')!r}; llmlab reads LoRA adapters (LORA) only")
    _check_options(cfg, file)
    targets = _targets(cfg, file)
    base = cfg.get("base_model_name_or_path")
    try:
        config = LoRAConfig(r=cfg["r"], alpha=float(cfg.get("lora_alpha", 8)), dropout=float(cfg.get("lora_dropout", 0.0)),
                            targets=",".join(targets), rslora=bool(cfg.get("use_rslora", False)))
    except KeyError as e:
        raise LLMLabError(f"{file} lacks {e}, which every LoRA adapter config has") from None
    except (LLMLabError, TypeError, ValueError) as e:
        raise LLMLabError(f"{file}: {e}") from None

    weights_file = adapter_dir / WEIGHTS_FILE
    if not weights_file.is_file():
        old = " (it holds adapter_model.bin: re-save it with safe_serialization=True)" \
            if (adapter_dir / "adapter_model.bin").is_file() else ""
        raise LLMLabError(f"{adapter_dir} has no {WEIGHTS_FILE}{old}")
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            metadata = f.metadata() or {}
            raw = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LLMLabError(f"{weights_file} is not a readable safetensors file ({e}); it may be truncated") from None

    weights: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        suffix = next((s for s in TENSOR_SUFFIXES if key.endswith(s)), None)
        ours = _our_module(key[len(PREFIX):-len(suffix)]) if suffix and key.startswith(PREFIX) else None
        if ours is None:
            raise LLMLabError(f"{weights_file}: tensor {key} has no llmlab equivalent (llmlab maps the LoRA A/B and "
                              "DoRA magnitude of Llama q/k/v/o, gate/up/down and lm_head only)")
        weights[f"{ours}.{TENSOR_SUFFIXES[suffix]}"] = tensor.float()
    layers = sorted({k.rsplit(".", 1)[0] for k in weights if not k.endswith(".base.weight")}, key=_model_order)
    stray = [k for k in weights if k.endswith(".base.weight") and k[:-len(".base.weight")] not in layers]
    if stray:
        raise LLMLabError(f"{weights_file}: holds the frozen weight of {_hf_module(stray[0][:-12])}, which the "
                          "adapter does not adapt; llmlab loads adapters, not replacement base weights")
    dora = bool(cfg.get("use_dora", False))
    for name in layers:
        a, b, m = (weights.get(f"{name}.{p}") for p in ("lora_A", "lora_B", "magnitude"))
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != config.r or b.shape[1] != config.r:
            raise LLMLabError(f"{weights_file}: {_hf_module(name)} needs lora_A (r, in) and lora_B (out, r) with "
                              f"r={config.r} (from {CONFIG_FILE}); it has "
                              f"{[tuple(t.shape) if t is not None else None for t in (a, b)]}")
        if dora != (m is not None) or (m is not None and tuple(m.shape) != (b.shape[0],)):
            raise LLMLabError(f"{weights_file}: {_hf_module(name)} " + (
                f"has no DoRA magnitude of shape ({b.shape[0]},), yet use_dora is true" if dora else
                "holds a DoRA magnitude, yet use_dora is false in " + CONFIG_FILE))
    if not layers:
        raise LLMLabError(f"{weights_file} holds no LoRA tensors")
    if cfg.get("exclude_modules"):  # the weights say which layers survived the exclusion
        config = dataclasses.replace(config, targets=",".join(layers))
    method = "dora" if dora else ("qlora" if metadata.get("llmlab_method") == "qlora" else "lora")
    if method == "qlora":  # how its base was quantized, for load_peft_adapter(..., method="qlora")
        try:
            config = dataclasses.replace(config, nf4_block=int(metadata["llmlab_nf4_block"]),
                                         double_quant=metadata["llmlab_double_quant"] == "true")
        except (KeyError, ValueError):
            raise LLMLabError(f"{weights_file}: its metadata says qlora but lacks a valid llmlab_nf4_block / "
                              "llmlab_double_quant") from None
    return config, method, layers, weights, base


def _model_order(name: str) -> tuple:
    parts = name.split(".")
    return (0, int(parts[1]), parts[2:]) if parts[0] == "blocks" else (1, 0, parts)


def load_peft_adapter(model: nn.Module, adapter_dir: str | Path, method: str | None = None) -> LoRAConfig:
    """Put the adapter in `adapter_dir` onto `model` (a fresh base: apply_lora, then its weights), so
    the model computes what PEFT's PeftModel computes. method None takes the adapter's own: lora or
    dora, or qlora for one exported from an llmlab QLoRA fine-tune (the frozen base stored in NF4 again,
    as it was trained: merging it onto the float W would change what it computes); method "lora" puts
    such an adapter on the float base, as PEFT does."""
    adapter_dir = Path(adapter_dir)
    _check_llama(model, f"loading {adapter_dir}")
    if lora_layers(model):
        raise LLMLabError(f"loading {adapter_dir}: the model already has LoRA layers; load onto a fresh base model "
                          "(or merge_lora the old adapter first)")
    config, adapter_method, layers, weights, base = read_peft_adapter(adapter_dir)
    method = method or adapter_method
    if (method == "dora") != (adapter_method == "dora") or method not in ("lora", "qlora", "dora"):
        raise LLMLabError(f"loading {adapter_dir}: method {method!r} does not fit its {adapter_method} adapter")
    made_for = f"the adapter was made for {base or 'another base model (base_model_name_or_path is not set)'}"
    modules = dict(model.named_modules())
    for name in layers:
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise LLMLabError(f"{adapter_dir / WEIGHTS_FILE} adapts {_hf_module(name)}, which this model lacks "
                              f"({model.config.n_layer} layers); {made_for}")
        want = {"lora_A": (config.r, linear.in_features), "lora_B": (linear.out_features, config.r),
                "magnitude": (linear.out_features,), "base.weight": tuple(linear.weight.shape)}
        for part, shape in want.items():
            tensor = weights.get(f"{name}.{part}")
            if tensor is not None and tuple(tensor.shape) != shape:
                raise LLMLabError(f"{adapter_dir / WEIGHTS_FILE}: {_hf_module(name)} {part} has shape "
                                  f"{tuple(tensor.shape)}, this model needs {shape}; {made_for}")
    targeted = select_targets(model, config, adapter_dir)
    if set(targeted) != set(layers):
        missing = sorted(set(targeted) - set(layers), key=_model_order)
        raise LLMLabError(f"{adapter_dir}: {CONFIG_FILE} targets {len(targeted)} layers but {WEIGHTS_FILE} holds "
                          f"{len(layers)} (no weights for {', '.join(missing[:3]) or '-'})")
    with torch.no_grad():
        # A saved lm_head weight goes in first, as PEFT loads it over the base's (a tied embedding,
        # the same Parameter, changes with it there too), and before QLoRA would quantize it.
        for key, tensor in weights.items():
            if key.endswith(".base.weight"):
                modules[key[:-len(".base.weight")]].weight.copy_(tensor)
        apply_lora(model, dataclasses.replace(config, targets=",".join(targeted)), method)
        adapted = lora_layers(model)
        for key, tensor in weights.items():
            if not key.endswith(".base.weight"):
                name, part = key.rsplit(".", 1)
                param = getattr(adapted[name], part)
                param.copy_(tensor.to(param.dtype))
    return config


def select_targets(model: nn.Module, config: LoRAConfig, adapter_dir: Path) -> list[str]:
    """The layers `config.targets` names in `model`, as PEFT would match them."""
    from llmlab.model.surgery import select_linears
    try:
        return select_linears(model, config.target_list)
    except LLMLabError as e:
        raise LLMLabError(f"{adapter_dir / CONFIG_FILE}: {e}") from None

