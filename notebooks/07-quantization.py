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
# # 7. Quantization — notebook
#
# The runnable companion of [docs/07-quantization.md](../docs/07-quantization.md). We take one
# weight matrix of SmolLM2, store it as int8, int4 and NF4 with `llmlab.quant`, and look at the
# error each format leaves: its distribution, its guaranteed bound, and how it trades against
# bits per weight as the group size changes. Then we check that a quantized layer computes what
# its dequantized weight computes, and quantize the whole model to see how far its next-token
# distribution moves.
#
# Quantized layers multiply one to eight rows through small C++ kernels that are compiled the
# first time they are used (about 40 s, once per machine). This notebook does not need them:
# the line below selects the PyTorch path, which computes the same products. Delete it to build
# and use the kernels.

# %%
import os

os.environ.setdefault("LLMLAB_NO_KERNELS", "1")

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from llmlab.core.assets import pydocs_topics
from llmlab.model.source import load_model
from llmlab.quant.int4 import Int4Linear, dequantize_int4, int4_error_bound, pack_int4, quantize_int4
from llmlab.quant.int8 import Int8Linear, dequantize_int8, int8_error_bound, quantize_int8
from llmlab.quant.nf4 import NF4Linear, dequantize_nf4, nf4_error_bound, quantize_nf4
from llmlab.quant.quantize import QuantizeConfig, quantize_model

torch.manual_seed(0)
torch.set_num_threads(1)   # robust on a shared or busy machine; 2 threads gain little at these sizes
model, tokenizer, source = load_model("smollm2")      # a few seconds: the GGUF file's metadata is parsed
model.eval()
W = model.blocks[0].mlp.w_up.weight.detach().clone()   # (1536, 576)
print(f"{source.name}: blocks.0.mlp.w_up {tuple(W.shape)}, std {W.std():.4f}, max |w| {W.abs().max():.4f}")

# %% [markdown]
# ## Three formats, one matrix
#
# - **int8**, one float16 scale per output row: `scale = max|w| / 127`, codes `round(w / scale)`.
# - **int4**, groups of g inputs per row, each with a float16 scale and minimum: 16 levels from
#   min to max, two codes per byte, 4 + 32/g bits per weight.
# - **NF4**, blocks of 64 with one absmax each: 16 levels at quantiles of a normal distribution,
#   plus double quantization of the absmax values: about 4.13 bits.
#
# Each quantizer returns codes plus constants; the matching `dequantize_*` rebuilds a float
# matrix. For comparison we also quantize a Gaussian matrix of the same shape and standard
# deviation, the kind of weights a float-trained model has.

# %%
def roundtrip(w: torch.Tensor, fmt: str, group: int = 64) -> tuple[torch.Tensor, float]:
    """(dequantize(quantize(w)), bits per weight) for one format."""
    if fmt == "int8":
        q, scale = quantize_int8(w)
        return dequantize_int8(q, scale), 8 + 16 / w.shape[1]
    if fmt == "int4":
        q, scale, low = quantize_int4(w, group)
        return dequantize_int4(pack_int4(q), scale, low), 4 + 32 / group
    q = quantize_nf4(w, block_size=group)
    return dequantize_nf4(q), q.bits_per_param()


gaussian = torch.randn_like(W) * W.std()
formats = [("int8", 0), ("int4", 32), ("int4", 64), ("int4", 192), ("nf4", 64)]
print(f"{'format':<10} {'bits/w':>6}  {'SmolLM2 rel. RMS error':>22}  {'Gaussian rel. RMS error':>23}")
for fmt, g in formats:
    row = []
    for w in (W, gaussian):
        w_hat, bits = roundtrip(w, fmt, g)
        row.append(((w - w_hat).norm() / w.norm()).item())
    name = fmt if fmt == "int8" else f"{fmt} g{g}"
    print(f"{name:<10} {bits:6.3f}  {row[0]:22.5f}  {row[1]:23.5f}")

# %% [markdown]
# int4 with groups of 32 reproduces SmolLM2's matrix **exactly**. That is not a miracle of the
# method: the only offline SmolLM2 weights are a GGUF file in Q4_1, which stores every group of
# 32 as 16 levels between a minimum and a maximum, the same grid int4 g32 finds again. So the
# chapter measures SmolLM2 at groups of 64 and 192, where each group merges 2 or 6 original grids
# and the rounding is real, and keeps a float-trained model beside it. On the Gaussian matrix
# every format pays its full price.
#
# ## Where the errors fall
#
# The histograms of w − w′ on SmolLM2's matrix (log scale): int8's errors stay within half a
# step of a 255-level grid, int4's and NF4's spread over a 16-level one.

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for fmt, g, label in [("int8", 0, "int8 per row"), ("int4", 64, "int4 g64"), ("nf4", 64, "nf4 block 64")]:
    err = (W - roundtrip(W, fmt, g)[0]).flatten()
    ax.hist(err.numpy(), bins=200, histtype="step", log=True, label=label)
ax.set_xlabel("w - dequantize(quantize(w))")
ax.set_ylabel("weights")
ax.set_title("SmolLM2 blocks.0.mlp.w_up: rounding error")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The spike at zero in int4 g64 is SmolLM2's Q4_1 past again. A group of 64 is two of the
# file's groups of 32; when one of them holds both the smallest and the largest value, the new
# grid is exactly its old one, and its 32 weights come back without error (about a quarter of
# this matrix's weights). NF4's tails are the longest: its
# widest gap between levels is the outermost one, next to ±1, where a block's largest weights
# sit.
#
# Each format also knows a bound on its own error, computed from its constants: half a step of
# each weight's group for int8 and int4, and 0.152 of the block's absmax for NF4 (half the
# widest gap between its levels), plus the error of the double-quantized absmax.

# %%
q8, s8 = quantize_int8(W)
q4, s4, m4 = quantize_int4(W, 64)
nf = quantize_nf4(W, block_size=64)
checks = {
    "int8": ((W - dequantize_int8(q8, s8)).abs() <= int8_error_bound(s8, W.shape[1]) + 1e-7),
    "int4 g64": ((W - dequantize_int4(pack_int4(q4), s4, m4)).abs() <= int4_error_bound(s4, W.shape[1]) + 1e-7),
    "nf4": ((W - dequantize_nf4(nf)).abs().view(-1, 64)
            <= nf4_error_bound(nf.block_absmax(), nf.absmax_error_bound())[:, None] + 1e-7),
}
for name, ok in checks.items():
    print(f"{name:<9} every weight within its bound: {bool(ok.all())}")

# %% [markdown]
# ## Error against bits
#
# Smaller groups cost bits (each group stores its constants) and buy accuracy (an outlier
# stretches the grid of fewer weights). Here is the trade-off on the Gaussian matrix and on
# SmolLM2's, for int4 with groups of 32 to 576 (the whole row) and NF4 with blocks of 32 to 256.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for w, name, style in [(gaussian, "Gaussian", "-o"), (W, "SmolLM2", "--s")]:
    for fmt, groups in [("int4", (32, 64, 96, 192, 576)), ("nf4", (32, 64, 128, 256))]:
        points = []
        for g in groups:
            w_hat, bits = roundtrip(w, fmt, g)
            points.append((bits, ((w - w_hat).norm() / w.norm()).item()))
        ax.plot(*zip(*points), style, label=f"{fmt}, {name}")
ax.set_xlabel("bits per weight (codes + constants)")
ax.set_ylabel("relative RMS error ||W - W'|| / ||W||")
ax.set_title("smaller groups: more bits, less error")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# At equal bits per weight NF4 has the lower error on both matrices: its 16 levels sit where
# normally distributed weights are, while int4 spreads them evenly from min to max. (int4 g64 at
# 4.5 bits and NF4 block 64 at 4.13 are about level.) SmolLM2's int4 curve falls to zero at
# g32, for the reason above.
#
# ## A quantized layer computes what its dequantized weight computes
#
# `Int4Linear`, `Int8Linear` and `NF4Linear` hold codes and constants as buffers and never keep
# a float copy of W. Their forward, for many rows, dequantizes and runs one matrix product; for
# a single row, `matvec` computes the same sum with the dequantization inside the reduction (the
# expression the C++ kernel implements). Either way the output matches
# `F.linear(x, layer.dequantize())`; the difference from the float layer is the quantization
# error itself.

# %%
linear = model.blocks[0].mlp.w_up
x = torch.randn(16, 576)
y_float = linear(x)
for layer in (Int8Linear.from_linear(linear), Int4Linear.from_linear(linear, group_size=64),
              NF4Linear.from_linear(linear)):
    with torch.no_grad():
        y = layer(x)
        same = (y - F.linear(x, layer.dequantize())).abs().max().item()
        drift = ((y - y_float).norm() / y_float.norm()).item()
        bytes_ = sum(b.numel() * b.element_size() for b in layer.buffers())
        line = (f"{type(layer).__name__:<11} {8 * bytes_ / W.numel():6.3f} bits/w, {bytes_ / 1024:6.1f} KiB "
                f"(float32: {W.numel() * 4 / 1024:.0f} KiB) | vs its dequantized weight {same:.1e} "
                f"| vs the float layer {drift:.4f} relative")
        if hasattr(layer, "matvec"):
            line += f" | matvec vs forward {(layer.matvec(x[0]) - y[0]).abs().max().item():.1e}"
    print(line)

# %% [markdown]
# ## The whole model
#
# `quantize_model` swaps every linear layer, the output head included, for an int4 layer (what
# `llmlab quantize --method int4 --group-size 64` runs). How far does the next-token
# distribution move? We compare the float and quantized models' predictions at every position
# of one paragraph: the mean KL divergence, and how often the most likely token is the same.

# %%
text = pydocs_topics()["for"][:500]                   # Python's documentation of the for statement
ids = torch.tensor([tokenizer.encode(text)])
with torch.no_grad():
    p_float = model(ids)["logits"].log_softmax(-1)
    report = quantize_model(model, tokenizer, QuantizeConfig(method="int4", group_size=64), progress=False)
    p_int4 = model(ids)["logits"].log_softmax(-1)
kl = (p_float.exp() * (p_float - p_int4)).sum(-1).mean().item()
agree = (p_float.argmax(-1) == p_int4.argmax(-1)).float().mean().item()
print(f"{report['method']}: {report['bytes'] / 2**20:.1f} MiB, {report['bits_per_weight']:.2f} bits per weight "
      f"overall, quantized in {report['seconds']:.1f} s")
print(f"over {ids.shape[1]} positions: mean KL(float || int4) = {kl:.3f} nats, same top-1 token {100 * agree:.0f}%")

# %% [markdown]
# One paragraph is a small sample; the chapter's `llmlab eval ppl --reference smollm2`
# scores 2,048 tokens of WikiText-2 the same way (mean KL 0.36 nats and 70% top-1 agreement for
# int4 g64 there).
#
# ## Try this
#
# 1. Predict, then check: in the error-vs-bits plot, where would int4 with groups of 16 land on
#    the Gaussian matrix (4 + 32/16 = 6 bits)? Add 16 to the list (576 is divisible by it).
# 2. Plant an outlier: set `gaussian[0, 0] = 50 * W.std()` and re-run the format table. Which
#    format's error grows most, and why does int4's grow less with small groups?
# 3. Quantize the whole model with `QuantizeConfig(method="nf4")` or `method="int8"` instead and
#    compare the KL and top-1 agreement with int4's (re-run from the loading cell first).
