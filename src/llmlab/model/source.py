"""The one model-source resolver: every `--model`, `--init` and `export SOURCE` goes through here.

    smollm2          the built-in SmolLM2-135M-Instruct GGUF (llmlab.core.assets)
    path/x.gguf      a GGUF file (llama.cpp's format): dequantized into our Transformer
    path/hf_dir      a Hugging Face directory: config.json + *.safetensors (+ tokenizer.json)
    path/run_dir     an llmlab run directory (best.pt, else ckpt.pt) or a checkpoint file
    path/quant_dir   a `llmlab quantize` directory (config.json says format "llmlab-quantized")

`resolve_source` names the source without loading it (cheap: for messages and for recording which
base a run started from); `load_model` turns it into the (Transformer, Tokenizer) pair everything
else uses. A `ModelSource` is written into artifacts made from a model (`as_dict`), with a content
hash, so a later reader can tell whether the base it finds is the one that was used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.core.errors import LLMLabError

KINDS = ("builtin", "gguf", "hf", "run", "quantized")
QUANTIZED_FORMAT = "llmlab-quantized"   # config.json "format" of llmlab.quant.artifact directories


@dataclass(frozen=True)
class ModelSource:
    spec: str    # what the user wrote
    kind: str    # one of KINDS
    path: Path   # the file or directory it resolved to

    @property
    def name(self) -> str:
        return self.path.name

    def weight_files(self) -> list[Path]:
        if self.kind in ("builtin", "gguf") or self.path.is_file():
            return [self.path]
        if self.kind in ("hf", "quantized"):
            return sorted(self.path.glob("*.safetensors"))
        from llmlab.model.checkpoint import BEST, CHECKPOINT
        return [self.path / (BEST if (self.path / BEST).is_file() else CHECKPOINT)]

    def fingerprint(self) -> str:
        """sha256 of the weight files' bytes (SmolLM2's 100 MB GGUF: ~0.3 s)."""
        digest = hashlib.sha256()
        for path in self.weight_files():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()

    def fingerprints(self) -> set[str]:
        """The sha256 values an adapter's recorded base may have to fit this model: its own, and for
        a quantized directory the one of the model it was quantized from (the adapter then runs on
        that model's rounded weights, as LoRA adapters on GPTQ/AWQ bases do in vLLM)."""
        import json

        known = {self.fingerprint()}
        if self.kind == "quantized":
            source = json.loads((self.path / "config.json").read_text(encoding="utf-8")).get("source") or {}
            if source.get("sha256"):
                known.add(source["sha256"])
        return known

    def as_dict(self, with_hash: bool = True) -> dict[str, Any]:
        out = {"spec": self.spec, "kind": self.kind, "path": str(self.path)}
        if with_hash:
            out["sha256"] = self.fingerprint()
        return out


def is_quantized_dir(path: Path) -> bool:
    """A directory `llmlab quantize` wrote (its config.json names our format; HF's never does)."""
    import json

    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == QUANTIZED_FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and not (path / "ckpt.pt").exists() and \
        (any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file())


def resolve_source(spec: str | Path) -> ModelSource:
    """What `spec` names, or a clear error listing what it could be."""
    text = str(spec)
    if text == "smollm2":
        from llmlab.core.assets import smollm2_gguf
        return ModelSource(text, "builtin", smollm2_gguf())
    path = Path(text)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LLMLabError(f"model {text!r}: no such GGUF file")
        return ModelSource(text, "gguf", path)
    if is_quantized_dir(path):
        return ModelSource(text, "quantized", path)
    if is_hf_dir(path):
        return ModelSource(text, "hf", path)
    if path.is_file() or (path.is_dir() and any((path / n).is_file() for n in ("ckpt.pt", "best.pt"))):
        return ModelSource(text, "run", path)
    if path.is_dir():
        raise LLMLabError(f"cannot load model {text!r}: the directory holds no checkpoint yet (a run writes ckpt.pt "
                          "every --ckpt-every steps, at the end and on Ctrl-C) and is not a Hugging Face model "
                          "directory (config.json + *.safetensors)")
    raise LLMLabError(f"cannot load model {text!r}: it does not exist. Give smollm2, a .gguf file, a Hugging Face "
                      "model directory (config.json + *.safetensors), or an llmlab run directory (ckpt.pt / best.pt)")


def load_model(spec: str | Path | ModelSource, adapter: str | Path | None = None, merge_adapters: bool = False,
               native_gguf: bool = False):
    """(Transformer, Tokenizer or None, ModelSource) from any source `resolve_source` accepts.
    Only a Hugging Face directory may come without a tokenizer (no tokenizer.json).

    adapter: a LoRA adapter to put on the model (a fine-tuning run directory or a PEFT adapter
    directory). merge_adapters: fold every LoRA layer (from `adapter`, or from a fine-tuning run
    loaded as the model itself) into plain linear layers, for inference at the base model's cost.
    Adapters are llmlab.finetune's format; it is imported only when one is met.

    native_gguf: a GGUF's Q8_0/Q4_0/Q4_1 tensors become llmlab.quant's int8/int4 layers holding the
    file's own blocks (no float copy); other sources ignore it."""
    model, tokenizer, source = _load(spec, native_gguf)
    if adapter is not None:
        from llmlab.finetune.adapter import load_adapter
        load_adapter(model, adapter, source)
    if merge_adapters and any(type(m).__name__ == "LoRALinear" for m in model.modules()):
        from llmlab.finetune.lora import merge_lora
        merge_lora(model)
    return model, tokenizer, source


def _load(spec: str | Path | ModelSource, native_gguf: bool = False):
    source = spec if isinstance(spec, ModelSource) else resolve_source(spec)
    if source.kind in ("builtin", "gguf") and native_gguf:
        from llmlab.quant.gguf_native import load_native_gguf
        model, tokenizer = load_native_gguf(source.path)
        return model, tokenizer, source
    if source.kind == "quantized":
        from llmlab.quant.artifact import load_quantized
        model, tokenizer = load_quantized(source.path)
        return model, tokenizer, source
    if source.kind in ("builtin", "gguf"):
        from llmlab.model.gguf import load_gguf_state, open_gguf
        from llmlab.model.transformer import Transformer
        from llmlab.tokenizer.formats import read_gguf_tokenizer

        reader = open_gguf(source.path)  # parsing the metadata takes seconds: do it once for both
        config, state = load_gguf_state(source.path, reader)
        return Transformer.from_state_dict(config, state), read_gguf_tokenizer(source.path, reader), source
    if source.kind == "hf":
        from llmlab.model.hf import load_hf_model
        model, tokenizer = load_hf_model(source.path)
        return model, tokenizer, source
    from llmlab.model.checkpoint import load_run_model
    model, tokenizer, _ = load_run_model(source.path)
    return model, tokenizer, source
