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
    if base_source is not None and base.get("sha256") and base_source.fingerprint() != base["sha256"]:
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
