"""Many LoRA adapters over one base model, in one batch (the S-LoRA / Punica idea).

S-LoRA (Sheng et al. 2023, arXiv:2311.03285), Punica (Chen et al. 2023, arXiv:2310.18547): one base
model serves many adapters without a merged copy of the weights per adapter. Each token t picks an
adapter a(t) (or none), and an adapted linear layer computes

    y_t = W x_t + s_a B_a (A_a x_t)          A_a: (r, in), B_a: (out, r)

W x is one matmul for all tokens, whatever their adapter; only the thin update differs, so it is
done per adapter on its own tokens: gather them, two small matmuls, scatter-add back. N tokens
cost N * in * out for the base (as with no adapter) plus N * r * (in + out) for the updates (~6%
more for a 576 x 576 layer at r = 16), and each adapter keeps r * (in + out) numbers per layer
instead of a copy of W. Punica's BGMV kernel does all gathers in one launch; here it is a
plain loop over the adapters present in the batch.

    names = attach_adapters(model, {"math": adapter_weights(model, "runs/math"), "chat": ...})
    set_token_adapters(model, torch.tensor([[0], [1], [-1]]))  # per row: math, chat, no adapter
    logits = model(ids)["logits"]                              # ids (3, T)

The index is set once per forward pass on one object all wrapped layers share, which also groups
the tokens by adapter once per input shape (one host sync), not once per layer. A packed batch,
ids (1, N) with every sequence's new tokens in a row, takes a per-token index (1, N). An adapted
output head sees only the tokens the forward pass wants logits for (last_only, logits_index,
logits_mask): a pre-hook on the model picks their adapters the same way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.model.surgery import HEAD, replace_linears

Factors = tuple[torch.Tensor, torch.Tensor, float]  # A (r, in), B (out, r), scaling


class TokenAdapters:
    """The adapter index of the next forward pass, shared by every MultiLoRALinear of a model."""

    def __init__(self, names: list[str]):
        self.names = names
        self.index: torch.Tensor | None = None       # broadcastable to the tokens, -1 = no adapter
        self.head_index: torch.Tensor | None = None  # the same, for the tokens the output head sees
        self._groups: dict = {}

    def set(self, index: torch.Tensor | None, head_only: bool = False) -> None:
        self.head_index = index
        self._groups = {k: v for k, v in self._groups.items() if not k[0]} if head_only else {}
        if not head_only:
            self.index = index

    def groups(self, head: bool, shape: torch.Size) -> list[tuple[int, torch.Tensor]]:
        """(adapter, flat token positions) for each adapter that has tokens in an input of `shape`."""
        index = self.head_index if head else self.index
        if index is None:
            return []
        key = (head, tuple(shape))
        if key not in self._groups:
            try:
                flat = torch.broadcast_to(index, shape).reshape(-1)
            except RuntimeError:
                raise LLMLabError(f"set_token_adapters: index of shape {tuple(index.shape)} does not broadcast to "
                                  f"the {tuple(shape)} tokens of this forward pass; give (B, T) or (B, 1)") from None
            try:
                counts = torch.bincount(flat + 1, minlength=len(self.names) + 1).tolist()  # the one host sync
            except RuntimeError:  # bincount counts non-negative values only
                counts = []
            if not counts or len(counts) > len(self.names) + 1:
                raise LLMLabError(f"set_token_adapters: index values {flat.min().item()}..{flat.max().item()} are "
                                  f"not all -1 (none) or one of the {len(self.names)} adapters attached "
                                  f"(0..{len(self.names) - 1}: {', '.join(self.names)})")
            # A stable sort puts each adapter's tokens side by side: split it into one range per adapter.
            parts = torch.argsort(flat, stable=True).split(counts)
            self._groups[key] = [(a, parts[a + 1]) for a in range(len(self.names)) if counts[a + 1]]
        return self._groups[key]


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Module, factors: dict[int, Factors], batch: TokenAdapters, head: bool = False):
        """base: nn.Linear or a quantized layer (in_features, out_features, forward). factors: adapter
        index -> (A, B, scaling) for the adapters that adapt this layer; stored zero-padded to the
        largest rank (zero rows of A and columns of B add nothing) with the scaling folded into B."""
        super().__init__()
        self.base, self.batch, self.head = base, batch, head
        self.in_features, self.out_features = base.in_features, base.out_features
        device = next(iter([*base.parameters(), *base.buffers()])).device
        # A float base computes in its weight's dtype; a quantized one in its input's (its stored
        # constants may be fp16 whatever x is): float32 then, cast to x's dtype in forward.
        dtype = base.weight.dtype if isinstance(base, nn.Linear) else torch.float32
        r = max(a.shape[0] for a, _, _ in factors.values())
        self.slots = {adapter: slot for slot, adapter in enumerate(factors)}
        A = torch.zeros(len(factors), r, self.in_features)
        B = torch.zeros(len(factors), self.out_features, r)
        for slot, (a, b, scaling) in enumerate(factors.values()):
            A[slot, :a.shape[0]] = a.detach().float()
            B[slot, :, :b.shape[1]] = b.detach().float() * scaling
        self.register_buffer("lora_A", A.to(device, dtype), persistent=False)  # (adapters, r, in)
        self.register_buffer("lora_B", B.to(device, dtype), persistent=False)  # (adapters, out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        groups = self.batch.groups(self.head, x.shape[:-1])
        if not groups:
            return out
        flat_x, flat_out = x.reshape(-1, self.in_features), out.view(-1, self.out_features)
        for adapter, positions in groups:
            slot = self.slots.get(adapter)
            if slot is None:
                continue  # this adapter leaves this layer alone
            x_sel = flat_x.index_select(0, positions)
            update = F.linear(F.linear(x_sel, self.lora_A[slot].to(x.dtype)), self.lora_B[slot].to(x.dtype))
            flat_out.index_add_(0, positions, update.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        names = [self.batch.names[a] for a in self.slots]
        return f"adapters={names}, r={self.lora_A.shape[1]}"


def attach_adapters(model: nn.Module, adapters: dict[str, dict[str, Factors]]) -> list[str]:
    """Wrap every layer some adapter targets in a MultiLoRALinear (once, holding all adapters that
    target it); return the adapter names in index order (index i = the i-th name). adapters: name
    -> {layer name: (A (r, in), B (out, r), scaling)}, e.g. from llmlab.finetune.adapter.adapter_weights."""
    if getattr(model, "_multi_lora", None) is not None:
        raise LLMLabError("attach_adapters: the model already has adapters attached; detach_adapters(model) first")
    if not adapters:
        raise LLMLabError("attach_adapters: no adapters given")
    names = list(adapters)
    modules = dict(model.named_modules())
    for adapter, layers in adapters.items():
        if not layers:
            raise LLMLabError(f"attach_adapters: adapter {adapter!r} adapts no layer")
        for layer, (a, b, _) in layers.items():
            m = modules.get(layer)
            if not hasattr(m, "in_features"):
                kinds = sorted({n.split(".", 2)[-1] for n, m in modules.items() if hasattr(m, "in_features")})
                raise LLMLabError(f"attach_adapters: adapter {adapter!r} adapts {layer}, which this model lacks "
                                  f"(its linear layers: {', '.join(kinds)}); it was made for another base model")
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or \
                    (a.shape[1], b.shape[0]) != (m.in_features, m.out_features):
                raise LLMLabError(f"attach_adapters: adapter {adapter!r} at {layer} has A {tuple(a.shape)}, B "
                                  f"{tuple(b.shape)}; this layer needs (r, {m.in_features}) and ({m.out_features}, r)")
    batch = TokenAdapters(names)
    targeted = [n for n in modules if any(n in layers for layers in adapters.values())]
    config = getattr(model, "config", None)
    replace_linears(model, targeted, lambda layer, base: MultiLoRALinear(
        base, {i: adapters[n][layer] for i, n in enumerate(names) if layer in adapters[n]}, batch, layer == HEAD))
    if config is not None:
        model.config = config  # a wrapped tied head still computes with the embedding's own Parameter
    hook = model.register_forward_pre_hook(_head_index_hook, with_kwargs=True) if HEAD in targeted else None
    model._multi_lora = (batch, targeted, hook)
    return names


def _head_index_hook(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """The output head sees fewer tokens when the forward pass picks which get logits: pick the same."""
    batch = model._multi_lora[0]
    if batch.index is None:
        return
    idx = args[0] if args else kwargs["idx"]
    full = torch.broadcast_to(batch.index, idx.shape)  # Transformer.forward's own choices, mirrored:
    if kwargs.get("logits_mask") is not None:
        full = full[kwargs["logits_mask"]]                                                          # (N,)
    elif kwargs.get("logits_index") is not None:
        full = full[torch.arange(idx.shape[0], device=full.device), kwargs["logits_index"]][:, None]  # (B, 1)
    elif kwargs.get("last_only"):
        full = full[:, -1:]                                                                         # (B, 1)
    batch.set(full, head_only=True)


def set_token_adapters(model: nn.Module, index: torch.Tensor | None) -> None:
    """The adapter of each token of the next forward pass(es): a long tensor broadcastable to ids'
    shape, (B, T) per token or (B, 1) per sequence, values in attach_adapters' order, -1 = none.
    None: every token uses the base alone."""
    attached = getattr(model, "_multi_lora", None)
    if attached is None:
        raise LLMLabError("set_token_adapters: the model has no adapters; call attach_adapters(model, ...) first")
    if index is not None:
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise LLMLabError(f"set_token_adapters: index must be an integer tensor, not {index.dtype}")
        device = next(model.parameters()).device
        index = index.to(device, torch.long)
    attached[0].set(index)


def detach_adapters(model: nn.Module) -> None:
    """Put the base layers back; the model is as it was before attach_adapters (no-op if none)."""
    attached = getattr(model, "_multi_lora", None)
    if attached is None:
        return
    _, targeted, hook = attached
    for name in targeted:  # a plain setattr: replace_linears expects linears, and the tie never broke
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).base)
    if hook is not None:
        hook.remove()
    del model._multi_lora
