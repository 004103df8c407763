"""LoRA: train a low-rank update next to each frozen linear layer (Hu et al. 2021, arXiv:2106.09685).

A linear layer computes y = W x. Fine-tuning changes W by some dW; LoRA's bet is that the dW a
task needs has low rank, so it is written as a product of two thin matrices:

    y = W x + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << in, out

Only A and B train: for SmolLM2's 576x576 attention projections at r=16 that is 18k numbers
instead of 332k. B starts at zero, so at step 0 the adapted model *is* the base model (the
first gradient step moves away from a known-good point rather than from noise); A starts random
(Kaiming-uniform, as nn.Linear initialises its weight), else B's gradient A x would be zero too.
The factor alpha / r keeps the update's size roughly independent of r, so a learning rate tuned
at one rank carries over; rsLoRA's alpha / sqrt(r) (Kalajdzievski 2023, arXiv:2312.03732) does
that better at large r.

DoRA (Liu et al. 2024, arXiv:2402.09353) splits each weight row into a length m and a direction:
W' = m * (W + s B A) / ||W + s B A||, with m trainable (initialised to ||W||, so again the model
starts unchanged) and the norm treated as a constant in backward (the paper's sec. 4.3), which
saves keeping its graph.

After training, merge: W' = W + s B A is an ordinary linear layer again, with no cost at
inference. A QLoRA layer's frozen base is NF4 (llmlab.quant.nf4): its merge goes onto the
weights it was trained against, dequantize(quantize(W)), not onto the original W.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.finetune.config import LoRAConfig
from llmlab.model.surgery import HEAD, replace_linears, select_linears

ADAPTER_FORMAT, ADAPTER_VERSION = "llmlab-lora", 1


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) float weight a frozen layer computes with: nn.Linear's, or a quantized one's dequantized."""
    return layer.dequantize(torch.float32) if hasattr(layer, "dequantize") else layer.weight


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 dora: bool = False):
        """base: an nn.Linear, or a quantized layer with in_features, out_features, bias, dequantize()."""
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features, self.r = base.in_features, base.out_features, r
        self.scaling = alpha / (math.sqrt(r) if rslora else r)
        weight = base_weight(base)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # DoRA's magnitude: one length per output row, starting at the base's (so the model is unchanged).
        self.magnitude = nn.Parameter(weight.detach().float().norm(dim=1)) if dora else None
        self.merged = False
        self._norm_at_merge: torch.Tensor | None = None

    def delta_weight(self) -> torch.Tensor:
        """s * B @ A, the (out, in) update LoRA adds to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def _dora_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """m / ||W + s B A|| per output row (the norm detached, DoRA sec. 4.3)."""
        norm = (weight.float() + self.delta_weight().float()).norm(dim=1).detach()
        return self.magnitude / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        update = F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
        if self.magnitude is None:
            return out + update
        bias = self.base.bias
        if bias is not None:
            out = out - bias
        out = (out + update) * self._dora_scale(base_weight(self.base)).to(x.dtype)
        return out + bias if bias is not None else out

    def merged_weight(self, onto: torch.Tensor | None = None) -> torch.Tensor:
        """The float weight of the merged layer: W + s B A (DoRA: rescaled rows). `onto` merges onto
        another W (to measure what merging a QLoRA adapter onto the unquantized W would do)."""
        weight = (base_weight(self.base) if onto is None else onto).detach().float()
        merged = weight + self.delta_weight().detach().float()
        if self.magnitude is not None:
            merged = merged * self._dora_scale(weight)[:, None]
        return merged

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into a float base in place (inference at plain-linear cost); undo with unmerge()."""
        if not isinstance(self.base, nn.Linear):
            raise LLMLabError("a QLoRA layer's base is NF4: merge it into a new float layer with merge_lora(model)")
        if self.merged:
            return
        weight = self.base.weight
        if self.magnitude is not None:
            self._norm_at_merge = (weight.float() + self.delta_weight().float()).norm(dim=1)
        weight.copy_(self.merged_weight().to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = self.base.weight
        restored = weight.float()
        if self.magnitude is not None:
            restored = restored * (self._norm_at_merge / self.magnitude)[:, None]
        weight.copy_((restored - self.delta_weight().float()).to(weight.dtype))
        self.merged = False

    def merged_linear(self, onto: torch.Tensor | None = None) -> nn.Linear:
        """A plain nn.Linear computing what this layer computes (see merged_weight)."""
        bias = self.base.bias
        weight = self.merged_weight(onto)
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias.float())
        return linear

    def extra_repr(self) -> str:
        kind = "DoRA" if self.magnitude is not None else "LoRA"
        return f"{kind} r={self.r}, scaling={self.scaling:g}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, config: LoRAConfig, method: str = "lora") -> list[str]:
    """Freeze every weight of `model`, then wrap the layers `config.targets` selects in LoRALinear.
    method "qlora" also stores every frozen block linear as NF4 (the output head and embeddings stay
    float, as in the QLoRA paper); "dora" adds the magnitude vectors. Returns the adapted names."""
    if method not in ("lora", "qlora", "dora"):
        raise LLMLabError(f"apply_lora: method {method!r} is not an adapter method (lora, qlora, dora)")
    for p in model.parameters():
        p.requires_grad_(False)
    names = select_linears(model, config.target_list)
    replace_linears(model, names, lambda _, linear: LoRALinear(linear, config.r, config.alpha, config.dropout,
                                                               config.rslora, dora=method == "dora"))
    if method == "qlora":
        quantize_frozen_base(model, config.nf4_block, config.double_quant)
    return names


def quantize_frozen_base(model: nn.Module, block_size: int, double_quant: bool) -> None:
    """QLoRA's memory saving: every block linear (adapted or not) keeps its frozen weight in NF4."""
    from llmlab.quant.nf4 import NF4Linear

    def to_nf4(linear: nn.Linear) -> nn.Module:
        return NF4Linear.from_linear(linear, block_size=block_size, double_quant=double_quant)

    for name, layer in lora_layers(model).items():
        layer.base = to_nf4(layer.base)
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != HEAD]
    replace_linears(model, plain, lambda _, linear: to_nf4(linear))


@torch.no_grad()
def merge_lora(model: nn.Module) -> list[str]:
    """Replace every LoRALinear by the plain nn.Linear it computes (QLoRA: onto its NF4 weights),
    and a QLoRA base's unadapted NF4 layers by float ones holding the same dequantized weights. The
    model's state dict then has the base model's names again, for any export."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        _set(model, name, layer.merged_linear())
    for name, m in list(model.named_modules()):
        if hasattr(m, "dequantize") and hasattr(m, "in_features"):
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            linear.weight.copy_(m.dequantize(torch.float32))
            if m.bias is not None:
                linear.bias.copy_(m.bias.float())
            _set(model, name, linear)
    return list(layers)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def adapter_record(config: LoRAConfig, method: str, names: list[str]) -> dict:
    """What a checkpoint stores to rebuild the adapter's structure on top of its base (`rebuild_adapter`)."""
    from llmlab.core.config import config_to_dict
    return {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "method": method, "layers": names,
            "lora": config_to_dict(config)}


def rebuild_adapter(model: nn.Module, record: dict, where: str = "the checkpoint") -> LoRAConfig:
    """Put the adapter structure a checkpoint describes onto a freshly loaded base model, ready for
    its weights (llmlab.model.checkpoint.load_run_model calls this)."""
    from llmlab.core.config import config_from_dict

    if record.get("format") != ADAPTER_FORMAT or record.get("version") != ADAPTER_VERSION:
        raise LLMLabError(f"{where} holds an adapter in format {record.get('format')!r} version "
                          f"{record.get('version')!r}; this llmlab reads {ADAPTER_FORMAT} version {ADAPTER_VERSION}")
    config = config_from_dict(LoRAConfig, record["lora"])
    layers = apply_lora(model, config.__class__(**{**vars(config), "targets": ",".join(record["layers"])}),
                        record["method"])
    if layers != record["layers"]:
        raise LLMLabError(f"{where}: its adapter names layers {record['layers'][:3]}..., which this base model does not have")
    return config


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a quantized base counts its weights by element."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if hasattr(m, "dequantize") and hasattr(m, "in_features"):
            total += m.in_features * m.out_features
    return trainable, total
