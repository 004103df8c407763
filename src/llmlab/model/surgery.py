"""Model surgery: the one place that swaps `nn.Linear`s by module name.

The compiled decode path (reduction-form matvecs), LoRA adapters and quantized layers all change
what a linear layer computes without editing the model file: they select layers by name and put
a replacement in their place.

    names = select_linears(model, ["attn.wq", "attn.wv"])      # or ["all-linear"], or globs
    replace_linears(model, names, lambda name, linear: LoRALinear(linear, r=16))

A pattern matches a module name when it equals the name, is a dotted suffix of it ("attn.wq"
matches "blocks.3.attn.wq"), or it or such a suffix matches the pattern as a glob ("mlp.*",
"blocks.1?.attn.w[qv]"). "all-linear" means every
linear layer but the output head (PEFT's meaning: the head is the vocabulary projection, rarely
what one wants to adapt or quantize like the others).

Tied embeddings: with `tie_embeddings`, `lm_head.weight` *is* `tok_emb.weight`. A replacement that
keeps using that Parameter (a different forward over the same weights) keeps the tie. One that
stores the weights differently (quantized, or adapted) cannot also serve as the embedding table,
so it unties them: the embedding keeps the original Parameter and `config.tie_embeddings` becomes
False, so checkpoints and exports save both tensors and reload the same model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch.nn as nn

ALL_LINEAR = "all-linear"
HEAD = "lm_head"


def _matches(name: str, pattern: str) -> bool:
    """The name, or one of its dotted suffixes ("attn.wq", "wq"), equals or glob-matches the pattern."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module name is selected by any of the patterns (same rules as select_linears)."""
    return any(_matches(name, p) for p in patterns)


def select_linears(model: nn.Module, patterns: Iterable[str] | str) -> list[str]:
    """Names of the nn.Linear modules the patterns select, in model order. A pattern that selects
    nothing is an error naming the layers there are (a typo would otherwise adapt nothing)."""
    from llmlab.core.errors import LLMLabError

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in linears if n != HEAD] if pattern == ALL_LINEAR else [n for n in linears if _matches(n, pattern)]
        if not hits:
            kinds = sorted({n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in linears})
            raise LLMLabError(f"layer pattern {pattern!r} matches no linear layer; the model has {', '.join(kinds)} "
                              f"(per block), or use {ALL_LINEAR}")
        chosen.update(hits)
    return [n for n in linears if n in chosen]


def replace_linears(model: nn.Module, names: Iterable[str],
                    factory: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Put factory(name, linear) in place of each named nn.Linear; return the names replaced.
    A tied output head whose replacement no longer holds the embedding's Parameter is untied
    (see the module docstring)."""
    replaced = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        new = factory(name, linear)
        setattr(parent, child, new)
        replaced.append(name)
        config = getattr(model, "config", None)
        if name == HEAD and config is not None and config.tie_embeddings and getattr(new, "weight", None) is not linear.weight:
            model.config = config.replace(tie_embeddings=False)
    return replaced
