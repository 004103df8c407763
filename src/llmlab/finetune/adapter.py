"""`--adapter PATH`: put a trained LoRA adapter on a loaded base model, from either home it has.

    a fine-tuning run directory of ours   (ckpt.pt / best.pt holding an adapter record + weights)
    a PEFT adapter directory              (adapter_config.json + adapter_model.safetensors)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from llmlab.core.errors import LLMLabError


def load_adapter(model: torch.nn.Module, path: str | Path, base_source=None) -> str:
    """Attach the adapter at `path` to `model` (loaded from `base_source`); return a description.
    A run of ours records its base's sha256: another base is refused, since an adapter only makes
    sense on the weights it was trained against."""
    from llmlab.finetune.peft import is_peft_dir, load_peft_adapter
    from llmlab.finetune.lora import rebuild_adapter
    from llmlab.model.checkpoint import BEST, CHECKPOINT, load_checkpoint, load_model_state

    path = Path(path)
    if is_peft_dir(path):
        load_peft_adapter(model, path)
        return f"PEFT adapter {path}"
    if not path.is_dir() or not any((path / n).is_file() for n in (BEST, CHECKPOINT)):
        raise LLMLabError(f"--adapter {path}: not a PEFT adapter directory (adapter_config.json) nor a fine-tuning "
                          "run directory (ckpt.pt / best.pt)")
    name = BEST if (path / BEST).is_file() else CHECKPOINT
    state = load_checkpoint(path, name)
    if "adapter" not in state:
        raise LLMLabError(f"--adapter {path}: this run holds whole model weights, not an adapter; load it with "
                          f"--model {path}")
    base = state.get("base", {})
    if base_source is not None and base.get("sha256") and base["sha256"] not in base_source.fingerprints():
        raise LLMLabError(f"--adapter {path} was trained on {base.get('spec')} (sha256 {base['sha256'][:12]}...), "
                          f"not on {base_source.spec}; load it with --model {base.get('spec')}")
    rebuild_adapter(model, state["adapter"], str(path / name))
    load_model_state(model, state, str(path / name))
    step = state.get("loop", {}).get("step")
    print(f"adapter: {state['adapter']['method']} from {path / name}" + (f" (step {step})" if step else ""),
          file=sys.stderr)
    return f"{state['adapter']['method']} adapter {path}"


def export_peft(run_dir: str | Path, out: str | Path) -> dict:
    """Write the adapter of a LoRA fine-tuning run as a PEFT adapter directory; a summary for the CLI."""
    from llmlab.finetune.lora import lora_layers
    from llmlab.finetune.peft import save_peft_adapter
    from llmlab.model.checkpoint import load_run_model

    model, _, state = load_run_model(run_dir)
    if "adapter" not in state:
        raise LLMLabError(f"{run_dir} holds whole model weights, not a LoRA adapter: export it with --to hf or --to gguf")
    from llmlab.core.config import config_from_dict
    from llmlab.finetune.config import LoRAConfig
    record = state["adapter"]
    files = save_peft_adapter(model, record["method"], config_from_dict(LoRAConfig, record["lora"]),
                              state["base"]["spec"], out)
    notes = []
    if record["method"] == "qlora":
        lora = record["lora"]
        notes.append(f"trained against an NF4-quantized base (block {lora['nf4_block']}, double quant "
                     f"{'on' if lora['double_quant'] else 'off'}): with PEFT, load it onto the 4-bit base "
                     "(bitsandbytes nf4) or merge onto dequantize(quantize(W)); llmlab's --adapter does that itself")
    n = sum(p.numel() for layer in lora_layers(model).values() for p in layer.parameters() if p.requires_grad)
    return {"source": str(run_dir), "to": "peft", "out": str(out), "files": [str(f) for f in files],
            "parameters": n, "bytes": sum(Path(f).stat().st_size for f in files), "notes": notes}


def adapter_weights(model: torch.nn.Module, path: str | Path,
                    base_source=None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """The low-rank factors of the adapter at `path`: {layer name: (A (r, in), B (out, r), scaling)},
    for serving several adapters over one shared base (llmlab.infer.multi_lora). `model` is the base
    and ends exactly as it was: the adapter is attached with load_adapter (so every check it makes
    holds here too), its factors are copied out, and every module, the config (a tied head that an
    adapted lm_head untied) and each parameter's requires_grad are put back.

    A QLoRA adapter is accepted: its factors are an ordinary LoRA's, but they were trained against
    the NF4-rounded base, so on the float base they compute slightly other outputs than in training
    (as PEFT loading it onto the float base does). DoRA is refused: its per-row rescaling
    m / ||W + s B A|| is not a low-rank update one base matmul can share."""
    from llmlab.finetune.lora import lora_layers

    path = Path(path)
    if lora_layers(model):
        raise LLMLabError(f"adapter_weights({path}): the model already has LoRA layers; pass the plain base model")
    _refuse_replaced_base_weights(model, path)
    modules = dict(model.named_modules())
    config = getattr(model, "config", None)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        load_adapter(model, path, base_source)
        layers = lora_layers(model)
        if any(layer.magnitude is not None for layer in layers.values()):
            raise LLMLabError(f"--adapter {path} is a DoRA adapter: its per-row magnitude rescaling cannot share a "
                              f"base matmul with other adapters; serve it merged, with --model BASE --adapter {path}")
        return {name: (layer.lora_A.detach().clone(), layer.lora_B.detach().clone(), float(layer.scaling))
                for name, layer in layers.items()}
    finally:
        # Put back every module load_adapter replaced (LoRALinear wrappers, and a QLoRA base's NF4
        # layers), parents first so each setattr lands on the original parent.
        for name, module in modules.items():
            parent_name, _, child = name.rpartition(".")
            if name and getattr(modules[parent_name], child) is not module:
                setattr(modules[parent_name], child, module)
        if config is not None:
            model.config = config
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])


def _refuse_replaced_base_weights(model: torch.nn.Module, path: Path) -> None:
    """A PEFT adapter may carry the frozen weight of an adapted lm_head, which loading copies over the
    base's: one that differs is a new base, not a low-rank update, and would change `model` in place."""
    from llmlab.finetune.peft import WEIGHTS_FILE, is_peft_dir, read_peft_adapter

    if not is_peft_dir(path) or not (path / WEIGHTS_FILE).is_file():
        return  # load_adapter says what is wrong
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
            if not any(key.endswith(".base_layer.weight") for key in f.keys()):
                return
    except (SafetensorError, OSError):
        return  # unreadable: load_adapter's read says why
    modules = dict(model.named_modules())
    for key, tensor in read_peft_adapter(path)[3].items():
        name = key[:-len(".base.weight")]
        if key.endswith(".base.weight") and name in modules and hasattr(modules[name], "weight") \
                and not torch.equal(modules[name].weight.detach().float().cpu(), tensor):
            raise LLMLabError(f"--adapter {path} also replaces the frozen weight of {name}, so it needs its own "
                              f"base; serve it merged, with --model BASE --adapter {path}")
