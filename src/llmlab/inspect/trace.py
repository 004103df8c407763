"""One forward pass that records what the probes look at, through the model's own seams.

    trace(model, ids, attention_layers=[0, 8], mlp=True)  -> Trace
        .residual[i]     (T, C) the residual stream entering block i; residual[L] leaves the last block
        .attentions[l]   (H, T, T) softmax weights of the layers asked for (the explicit path)
        .mlp_hidden[l]   (T, F) the MLP's hidden activation (the input of mlp.w_down), when mlp=True
        .logits          (T, V) the model's own output, float32

    recording_inputs(model, names)   forward pre-hooks on named modules, removed on exit
    ablated_heads(model, {layer: [head, ...]})   zero (or mean-) ablate attention heads while inside

The residual stream and attention weights come from `Transformer.forward`'s return_hidden_states and
return_attention (off by default, so they cost nothing then). Inside a block, the Linear layers'
stable names (attn.wo, mlp.w_down) are the seams: a forward pre-hook sees a Linear's input, which
for attn.wo is every head's output side by side (H slices of D) and for mlp.w_down is the MLP's
hidden activation. PyTorch's hooks are registered here and removed on exit, so outside these
context managers the model runs exactly as it was loaded; nothing is patched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from llmlab.core.errors import LLMLabError


@dataclass
class Trace:
    ids: list[int]
    logits: torch.Tensor                                   # (T, V) float32
    residual: list[torch.Tensor]                           # L + 1 tensors (T, C)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)    # layer -> (H, T, T)
    mlp_hidden: dict[int, torch.Tensor] = field(default_factory=dict)    # layer -> (T, F)

    @property
    def n_layer(self) -> int:
        return len(self.residual) - 1


def check_layers(model: nn.Module, layers: Iterable[int], what: str = "--layers") -> list[int]:
    """Layer indices validated against the model; negative ones count from the end, as in Python."""
    n = len(model.blocks)
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise LLMLabError(f"{what}: layer {layer} does not exist; this model has layers 0..{n - 1}")
        out.append(layer % n)
    return out


def parse_heads(spec: str, model: nn.Module) -> dict[int, list[int]]:
    """'12.3,5.0' -> {12: [3], 5: [0]} (layer.head), checked against the model's shape."""
    heads: dict[int, list[int]] = {}
    n_head = model.config.n_head
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            layer, head = (int(v) for v in item.split("."))
        except ValueError:
            raise LLMLabError(f"--head {item!r}: write a head as LAYER.HEAD, e.g. 12.3 (comma-separate several)")
        (layer,) = check_layers(model, [layer], "--head")
        if not 0 <= head < n_head:
            raise LLMLabError(f"--head {item!r}: head {head} does not exist; layers have heads 0..{n_head - 1}")
        heads.setdefault(layer, []).append(head)
    return heads


@contextmanager
def recording_inputs(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While inside, record the input of each named submodule on every forward, detached."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        if name not in modules:
            raise LLMLabError(f"the model has no module {name!r} to record")

        def hook(module, args, name=name):
            seen[name] = args[0].detach()
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def ablated_heads(model: nn.Module, heads: dict[int, list[int]], mode: str = "zero") -> Iterator[None]:
    """While inside, the listed heads' outputs are replaced before the output projection mixes them:
    by zero ("zero"), or by their mean over the positions of the sequence ("mean", which keeps the
    head's constant contribution and removes only what depends on the input; a gentler intervention,
    Wang et al. 2022's mean ablation). Heads not listed, and every other layer, are untouched."""
    if mode not in ("zero", "mean"):
        raise LLMLabError(f"ablation mode {mode!r}: use zero or mean")
    head_dim = model.config.head_dim
    handles = []
    for layer, layer_heads in heads.items():
        def hook(module, args, layer_heads=tuple(layer_heads)):
            y = args[0].clone()                                        # (B, T, H*D): the heads side by side
            for h in layer_heads:
                part = y[..., h * head_dim:(h + 1) * head_dim]
                part.copy_(torch.zeros_like(part) if mode == "zero" else part.mean(dim=-2, keepdim=True).expand_as(part))
            return (y,) + tuple(args[1:])
        handles.append(model.blocks[layer].attn.wo.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def trace(model: nn.Module, ids: list[int], attention_layers: Iterable[int] = (), mlp: bool = False) -> Trace:
    """Run `ids` (one sequence, at most block_size tokens) and record the residual stream, the
    attention weights of `attention_layers`, and with mlp=True every layer's MLP hidden activation."""
    block_size = model.config.block_size
    if not ids:
        raise LLMLabError("the prompt is empty: give some text to look at")
    if len(ids) > block_size:
        raise LLMLabError(f"the prompt is {len(ids)} tokens, more than the model's block_size {block_size}: "
                          "shorten it")
    layers = check_layers(model, attention_layers)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    names = [f"blocks.{i}.mlp.w_down" for i in range(len(model.blocks))] if mlp else []
    was_training = model.training
    model.eval()
    try:
        with recording_inputs(model, names) as seen:
            out = model(x, return_hidden_states=True, return_attention=layers)
    finally:
        model.train(was_training)
    return Trace(ids=list(ids), logits=out["logits"][0].float(),
                 residual=[h[0].float() for h in out["hidden_states"]],
                 attentions={i: out["attentions"][i][0].float() for i in layers},
                 mlp_hidden={i: seen[f"blocks.{i}.mlp.w_down"][0].float() for i in range(len(model.blocks))} if mlp else {})


def encode_prompt(tokenizer, text: str, chat: bool = False) -> list[int]:
    """The ids a model sees for `text`: with the BOS its tokenizer says the model expects, or with
    chat=True as one user message in the model's chat template, up to where the reply would start
    (what an instruct model sees in `llmlab chat`; the template holds its own BOS)."""
    if not text:
        raise LLMLabError("the prompt is empty: give some text to look at (--prompt or --text-file)")
    if not chat:
        return tokenizer.encode(text, add_special=True)
    if not getattr(tokenizer, "chat_template", None):
        raise LLMLabError("--chat: this model's tokenizer has no chat template; drop --chat to look at the raw text")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return tokenizer.encode(rendered, allowed_special=True)


def token_text(tokenizer, token_id: int) -> str:
    """A token as readable text: its bytes decoded (a piece of a UTF-8 character shows as U+FFFD)."""
    return tokenizer.decode_bytes([int(token_id)]).decode("utf-8", errors="replace")
