# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Fine-tuning — notebook
#
# The runnable companion of [docs/06-fine-tuning.md](../docs/06-fine-tuning.md). The chapter
# fine-tunes SmolLM2 with one command; here we take LoRA apart on something small enough to
# watch: one linear layer first (B starts at zero, merged equals unmerged, the update has rank
# r), then a tiny pretrained Transformer fine-tuned on new text through its adapters only, with
# the base weights checked to be untouched and the adapters merged back into plain linear
# layers at the end.

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from llmlab.core.assets import pydocs_topics
from llmlab.data.shakespeare import shakespeare_text
from llmlab.finetune.config import LoRAConfig
from llmlab.finetune.lora import LoRALinear, apply_lora, count_parameters, lora_layers, merge_lora
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import CharTokenizer

torch.manual_seed(0)
torch.set_num_threads(1)   # the matrices here are tiny: a second thread costs more than it saves

# %% [markdown]
# ## One LoRA layer
#
# `LoRALinear` wraps a frozen linear layer W and adds a low-rank update:
# `y = W x + (alpha / r) · B (A x)`, with A (r × in) random and B (out × r) zero at the start.
# So at step 0 the wrapped layer computes exactly what the base computes.

# %%
base = nn.Linear(64, 32)
layer = LoRALinear(base, r=4, alpha=8)
x = torch.randn(5, 64)
print(layer)
print("A", tuple(layer.lora_A.shape), " B", tuple(layer.lora_B.shape), " scaling alpha/r =", layer.scaling)
print("at init, max |LoRA(x) - W x| =", (layer(x) - base(x)).abs().max().item())
print("trainable:", [n for n, p in layer.named_parameters() if p.requires_grad])

# %% [markdown]
# Pretend training moved B. The update `delta_weight() = s · B A` is an ordinary (out × in)
# matrix of rank at most r, so `merged_linear()` folds it into one plain `nn.Linear` that
# computes the same outputs, at no extra cost at inference. DoRA (`dora=True`) also rescales each
# output row by a trained magnitude; its merge rescales the rows too.

# %%
with torch.no_grad():
    layer.lora_B.normal_(0, 0.1)
delta = layer.delta_weight()
print("delta_weight", tuple(delta.shape), "rank", torch.linalg.matrix_rank(delta).item())
print("merged vs unmerged, max |diff| =", (layer.merged_linear()(x) - layer(x)).abs().max().item())

dora = LoRALinear(nn.Linear(64, 32), r=4, alpha=8, dora=True)
with torch.no_grad():
    dora.lora_B.normal_(0, 0.1)
    dora.magnitude.mul_(1.5)
print(dora)
print("DoRA merged vs unmerged, max |diff| =", (dora.merged_linear()(x) - dora(x)).abs().max().item())

# %% [markdown]
# ## A small base model to fine-tune
#
# A 2-layer Llama-style Transformer, 64 wide, on characters. We pretrain it for 200 steps on
# Shakespeare (every weight trains: this is the "base model"), then fine-tune it on a text it
# has never seen, Python's documentation. Both texts ship offline.

# %%
shakespeare = shakespeare_text(tiny=True)[:200_000]
python_docs = "\n\n".join(pydocs_topics().values())[:200_000]
tok = CharTokenizer.train(shakespeare + python_docs)
plays, docs = torch.tensor(tok.encode(shakespeare)), torch.tensor(tok.encode(python_docs))
config = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)


def batch(data: torch.Tensor, generator: torch.Generator, size: int = 8, length: int = 64):
    starts = torch.randint(len(data) - length - 1, (size,), generator=generator)
    x = torch.stack([data[s:s + length] for s in starts])
    y = torch.stack([data[s + 1:s + length + 1] for s in starts])
    return x, y


def train(m: nn.Module, data: torch.Tensor, steps: int, lr: float) -> list[float]:
    """A plain loop; the optimizer is given only the parameters that require gradients."""
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
    g, losses = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        loss = m(*batch(data, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(m: nn.Module, data: torch.Tensor) -> float:
    """Mean loss on 4 fixed batches (the same ones for every model)."""
    g = torch.Generator().manual_seed(123)
    return sum(m(*batch(data, g))["loss"].item() for _ in range(4)) / 4


torch.manual_seed(0)
base_model = Transformer(config)
pretrain = train(base_model, plays, steps=200, lr=1e-2)
print(f"pretrained on Shakespeare: loss {pretrain[0]:.2f} -> {sum(pretrain[-10:]) / 10:.2f}; "
      f"on Python docs it scores {evaluate(base_model, docs):.2f}")

# %% [markdown]
# ## LoRA on a model, by layer name
#
# `apply_lora` freezes every weight of a model, then wraps the linear layers that
# `LoRAConfig.targets` selects (names, dotted suffixes or globs; `all-linear` is every linear
# but the output head).

# %%
model = copy.deepcopy(base_model)
names = apply_lora(model, LoRAConfig(r=8, alpha=16, targets="attn.wq,attn.wv"))
print("adapted:", names)
print(model.blocks[0].attn)
trainable, total = count_parameters(model)
print(f"trainable {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
print("by hand: 2 layers x 2 matrices x r (in + out) =", 2 * 2 * 8 * (64 + 64))

# %% [markdown]
# Predict the count for `all-linear` before running the next cell: per block, wq/wk/wv/wo are
# 64 → 64, the SwiGLU MLP's gate and up are 64 → 192 and its down 192 → 64.

# %%
model = copy.deepcopy(base_model)
apply_lora(model, LoRAConfig(r=8, alpha=16, targets="all-linear"))
trainable, total = count_parameters(model)
print(f"all-linear: {len(lora_layers(model))} adapted layers, trainable {trainable:,} of {total:,} "
      f"({100 * trainable / total:.1f}%)")

# %% [markdown]
# ## Fine-tuning through the adapters only
#
# Before training we copy every frozen parameter, to check afterwards that not one of them
# moved. For comparison, a second copy of the base trains every weight (full fine-tuning) on
# the same batches, at the lower learning rate full fine-tuning wants.

# %%
frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
lora_losses = train(model, docs, steps=100, lr=1e-2)
moved = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, frozen_before[n])]
print(f"LoRA: loss {lora_losses[0]:.3f} -> {sum(lora_losses[-10:]) / 10:.3f} (mean of the last 10 steps)")
print(f"frozen parameters that changed: {len(moved)} of {len(frozen_before)}")

full = copy.deepcopy(base_model)
full_losses = train(full, docs, steps=100, lr=3e-3)
full_trainable = sum(p.numel() for p in full.parameters())
print(f"full fine-tuning: loss {full_losses[0]:.3f} -> {sum(full_losses[-10:]) / 10:.3f}, {full_trainable:,} trainable")
print(f"\nloss on Shakespeare afterwards (what was forgotten): base {evaluate(base_model, plays):.2f}, "
      f"LoRA {evaluate(model, plays):.2f}, full {evaluate(full, plays):.2f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(lora_losses, label=f"LoRA r=8 all-linear ({trainable:,} trainable)")
ax.plot(full_losses, label=f"full fine-tuning ({full_trainable:,} trainable)")
ax.axhline(evaluate(base_model, docs), color="gray", ls="--", lw=1, label="the base, untuned")
ax.set_xlabel("step")
ax.set_ylabel("training loss on Python docs (nats/char)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The adapters alone move the loss, while every base weight stays exactly where it was. Full
# fine-tuning, with about 5x the trainable parameters (the embedding and the head among them),
# gets further in the same steps. Both raise the loss on Shakespeare, the text the base was
# trained on: that is forgetting, which the chapter measures on SmolLM2 with
# `llmlab finetune eval`. At this toy's size and 100 steps, read the differences as rough.
#
# ## Merge: back to plain linear layers
#
# `merge_lora` replaces every `LoRALinear` by the `nn.Linear` it computes, so the state dict has
# the base model's names again and inference costs what the base costs.

# %%
model.eval()
x, _ = batch(docs, torch.Generator().manual_seed(7), size=2)
with torch.no_grad():
    before = model(x)["logits"]
    merged_names = merge_lora(model)
    after = model(x)["logits"]
print(f"merged {len(merged_names)} layers; max |logits difference| = {(after - before).abs().max().item():.2e}")
print("LoRALinear left:", len(lora_layers(model)), "| blocks.0.attn.wq is now", type(model.blocks[0].attn.wq).__name__)
print("some state-dict names:", [k for k in model.state_dict() if k.startswith("blocks.0.attn")])

# %% [markdown]
# ## Try this
#
# 1. Predict, then measure: train with `r=1` and with `r=32` (alpha = 2r). How much lower does
#    the loss end at r=32, and how many more parameters does it train? Then add
#    `rslora=True` to `LoRAConfig` at r=32 (scaling alpha/sqrt(r)) and compare.
# 2. In the all-linear cell, set `targets="mlp.*"` and then `"attn.*"`, and re-run from there:
#    which half of the block do the adapters help most on this text, per trainable parameter?
# 3. Pass `"qlora"` as the method to `apply_lora` (the frozen base is stored as NF4): check
#    `count_parameters` still reports the same trainable count, train it, and see that
#    `merge_lora` then merges onto the *dequantized* NF4 weights (the chapter's merge-order trap).
