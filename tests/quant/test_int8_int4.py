"""int8 and int4 round-to-nearest weights (llmlab.quant.int8, .int4): the reconstruction error stays
within the analytical bound on random and adversarial weights, scales are float16 rounded up so no
code is clipped, the 4-bit packing round-trips, and quantize_model refuses group sizes that do not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.quant.int4 import (Int4Linear, dequantize_int4, int4_error_bound, pack_int4, quantize_int4,
                               unpack_int4)
from llmlab.quant.int8 import Int8Linear, dequantize_int8, int8_error_bound, quantize_int8
from llmlab.quant.linear import round_down_fp16, round_up_fp16
from llmlab.quant.quantize import QuantizeConfig, quantize_model

G = torch.Generator


def random_weight(out=24, inp=192, seed=0, std=0.05) -> torch.Tensor:
    return torch.randn(out, inp, generator=G().manual_seed(seed)) * std


def adversarial_weight(inp=192) -> torch.Tensor:
    """Row 0: one large outlier; row 1: all zeros; row 2: a constant first group (not a float16 value),
    row 3: a constant first group that is one, and a negative constant second group."""
    w = random_weight(6, inp, seed=1)
    w[0, 5] = 40.0
    w[1] = 0.0
    w[2, :32] = 0.3
    w[3, :32] = 0.25
    w[3, 32:64] = -0.7
    return w


def int8_roundtrip(w, group_size):
    q, scale = quantize_int8(w, group_size)
    return q, scale, dequantize_int8(q, scale)


def int4_roundtrip(w, group_size):
    q, scale, low = quantize_int4(w, group_size)
    return q, scale, low, dequantize_int4(pack_int4(q), scale, low)


# The bound is exact arithmetic; W' is computed in float32, which adds at most an ulp or two of |W|.
def within(err: torch.Tensor, bound: torch.Tensor, w: torch.Tensor) -> bool:
    return bool((err <= bound + 4 * torch.finfo(torch.float32).eps * w.abs().clamp_min(1e-30)).all())


# ----------------------------------------------------------------------------------------------
# float16 rounding of the constants


def test_round_up_and_down_fp16_are_the_nearest_float16_on_the_right_side():
    g = G().manual_seed(0)
    x = torch.cat([torch.rand(2000, generator=g) * 10.0 ** torch.randint(-9, 4, (2000,), generator=g).float(),
                   torch.tensor([0.0, 1.0, 0.25, 6e-8, 1e-12])])
    up, down = round_up_fp16(x), round_down_fp16(x)
    assert up.dtype == down.dtype == torch.float32
    for r in (up, down):
        assert torch.equal(r.half().float(), r)          # representable in float16
    assert (up >= x).all() and (down <= x).all()
    # ... and the closest such value: the next float16 towards x lies on the other side of it
    inf = torch.tensor(float("inf"), dtype=torch.float16)
    assert (torch.nextafter(up.half(), -inf).float() < x).all()
    assert (torch.nextafter(down.half(), inf).float() > x).all()
    exact = torch.tensor([0.0, 0.25, 1.0, -3.5])         # float16 values stay as they are
    assert torch.equal(round_up_fp16(exact), exact) and torch.equal(round_down_fp16(exact), exact)
    assert round_up_fp16(torch.tensor([1e-12])).item() > 0   # never rounds a positive step to zero


# ----------------------------------------------------------------------------------------------
# int8


@pytest.mark.parametrize("group_size", [None, 32, 64], ids=["per-channel", "g32", "g64"])
@pytest.mark.parametrize("kind", ["random", "adversarial"])
def test_int8_error_within_half_a_step(group_size, kind):
    w = random_weight() if kind == "random" else adversarial_weight()
    q, scale, w_hat = int8_roundtrip(w, group_size)
    groups = 1 if group_size is None else w.size(1) // group_size
    assert q.dtype == torch.int8 and q.shape == w.shape and int(q.abs().max()) <= 127 and int(q.min()) >= -127
    assert scale.dtype == torch.float16 and scale.shape == (w.size(0), groups)
    bound = int8_error_bound(scale, w.size(1))
    assert bound.shape == w.shape
    err = (w - w_hat).abs()
    assert within(err, bound, w)
    if kind == "random":   # the bound is tight: some weight is almost half a step off
        assert float((err / bound).max()) > 0.9


@pytest.mark.parametrize("group_size", [None, 32])
def test_int8_scales_are_rounded_up_so_no_code_is_clipped(group_size):
    w = adversarial_weight()
    q, scale = quantize_int8(w, group_size)
    gs = group_size or w.size(1)
    groups = w.view(w.size(0), -1, gs)
    assert (scale.float() >= groups.abs().amax(-1) / 127).all()
    unclamped = torch.round(groups / torch.where(scale > 0, scale.float(), 1.0)[..., None])
    assert float(unclamped.abs().max()) <= 127
    assert torch.equal(unclamped.reshape(w.shape).to(torch.int8), q)


def test_int8_adversarial_rows_stay_local():
    w = adversarial_weight()
    for group_size in (None, 32):
        q, scale, w_hat = int8_roundtrip(w, group_size)
        alone, _, _ = int8_roundtrip(w[2:], group_size)
        assert torch.equal(q[2:], alone)                  # the outlier row changes no other row's codes
        assert torch.equal(w_hat[1], torch.zeros_like(w_hat[1])) and not w_hat.isnan().any()
        assert torch.equal(scale[1].float(), torch.zeros_like(scale[1].float()))
    _, _, w_hat = int8_roundtrip(w, 32)
    # grouped, the outlier costs only its own group: the rest of row 0 keeps a small step
    assert float((w[0, 32:] - w_hat[0, 32:]).abs().max()) < 2e-3
    _, _, w_hat = int8_roundtrip(w, None)
    assert float((w[0, 32:] - w_hat[0, 32:]).abs().max()) > 0.05   # per channel it costs the whole row


def test_int8_layer_storage_and_forward():
    lin = nn.Linear(192, 40, bias=True)
    layer = Int8Linear.from_linear(lin)
    q, scale = quantize_int8(lin.weight)
    assert torch.equal(layer.qweight, q) and torch.equal(layer.scales, scale)
    assert torch.equal(layer.bias, lin.bias.detach())
    assert layer.bits_per_weight() == pytest.approx(8 + 16 / 192)
    assert Int8Linear.from_linear(lin, 32).bits_per_weight() == pytest.approx(8.5)   # GGUF's Q8_0
    rows = torch.tensor([3, 0, 3, 39])
    assert torch.equal(layer.dequantize_rows(rows), layer.dequantize()[rows])
    x = torch.randn(20, 192)   # more than 8 rows: dequantize + one GEMM
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + lin.bias, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# int4


@pytest.mark.parametrize("group_size", [32, 64, 192])
@pytest.mark.parametrize("kind", ["random", "adversarial"])
def test_int4_error_within_half_a_step(group_size, kind):
    w = random_weight() if kind == "random" else adversarial_weight()
    q, scale, low, w_hat = int4_roundtrip(w, group_size)
    groups = w.size(1) // group_size
    assert q.dtype == torch.uint8 and q.shape == w.shape and int(q.max()) <= 15
    assert scale.dtype == low.dtype == torch.float16 and scale.shape == low.shape == (w.size(0), groups)
    bound = int4_error_bound(scale, w.size(1))
    err = (w - w_hat).abs()
    assert within(err, bound, w)
    if kind == "random":
        assert float((err / bound).max()) > 0.9


def test_int4_grid_covers_each_group_so_no_code_is_clipped():
    w = adversarial_weight()
    q, scale, low = quantize_int4(w, 32)
    groups = w.view(w.size(0), -1, 32).double()
    s, lo = scale.double(), low.double()
    assert (lo <= groups.amin(-1)).all()                             # the minimum rounded down
    top = groups.amax(-1)
    assert (lo + 15 * s >= top - 1e-6 * top.abs()).all()              # the step rounded up
    unclamped = torch.round((groups.float() - low.float()[..., None]) / torch.where(scale > 0, scale.float(), 1.0)[..., None])
    assert float(unclamped.min()) >= 0 and float(unclamped.max()) <= 15


def test_int4_adversarial_groups():
    w = adversarial_weight()
    _, _, _, w_hat = int4_roundtrip(w, 32)
    assert not w_hat.isnan().any()
    assert torch.equal(w_hat[1], torch.zeros(w.size(1)))            # all-zero row: exactly zero
    assert torch.equal(w_hat[3, :32], torch.full((32,), 0.25))       # a float16 constant: exact
    assert float((w_hat[2, :32] - 0.3).abs().max()) < 1e-3           # otherwise within a tiny step
    assert float((w_hat[3, 32:64] + 0.7).abs().max()) < 1e-3
    assert float((w[0, 32:] - w_hat[0, 32:]).abs().max()) < 0.02     # the outlier stays in its group


def test_pack_unpack_int4_roundtrip_and_nibble_order():
    codes = torch.randint(0, 16, (7, 64), generator=G().manual_seed(3), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 32)
    assert torch.equal(unpack_int4(packed), codes)
    # element 2j in the low nibble of byte j, 2j + 1 in the high nibble
    assert pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist() == [[0x21, 0x0F]]
    assert unpack_int4(torch.tensor([[0xA5]], dtype=torch.uint8)).tolist() == [[5, 10]]


def test_int4_layer_from_codes_storage_and_dtype_casts():
    lin = nn.Linear(128, 48, bias=True)
    layer = Int4Linear.from_linear(lin, 64)
    q, scale, low = quantize_int4(lin.weight, 64)
    assert torch.equal(layer.qweight, pack_int4(q)) and layer.qweight.shape == (48, 64)
    assert layer.bits_per_weight() == 4.5
    again = Int4Linear.from_codes(layer.qweight, layer.scales, layer.mins, packed=True)
    assert torch.equal(again.dequantize(), layer.dequantize()) and again.bias is None
    rows = torch.tensor([47, 1, 1])
    assert torch.equal(layer.dequantize_rows(rows), layer.dequantize()[rows])
    # model.to(bfloat16) casts the bias, never the float16 constants that are part of the format
    layer.to(torch.bfloat16)
    assert layer.scales.dtype == layer.mins.dtype == torch.float16 and layer.qweight.dtype == torch.uint8
    assert layer.bias.dtype == torch.bfloat16
    x = torch.randn(12, 128, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


def test_group_sizes_that_do_not_fit_are_refused_with_the_ones_that_do():
    w = random_weight(4, 96)
    with pytest.raises(LLMLabError, match=r"group size 64 does not divide the layer's 96 inputs.*32, 96"):
        quantize_int8(w, 64)
    with pytest.raises(LLMLabError, match="int4 group size 64"):
        quantize_int4(w, 64)
    with pytest.raises(LLMLabError, match="must be even"):
        Int4Linear(30, 8, group_size=15)


# ----------------------------------------------------------------------------------------------
# quantize_model on a tiny Transformer


def tiny(n_embd=64, tie=True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=96, block_size=32, n_layer=1, n_head=2, n_embd=n_embd,
                                   tie_embeddings=tie)).eval()


def test_quantize_model_refuses_a_group_size_that_does_not_divide_a_width():
    model = tiny()   # widths 64 (attention, head, w_up) and 192 (w_down)
    with pytest.raises(LLMLabError, match=r"--group-size 128 does not divide the input widths \[64, 192\].*: 32, 64"):
        quantize_model(model, None, QuantizeConfig(method="int4", group_size=128), progress=False)
    with pytest.raises(LLMLabError, match="--group-size 128"):
        quantize_model(model, None, QuantizeConfig(method="int8", int8_groups=True, group_size=128), progress=False)
    assert all(type(m) is not Int4Linear for m in model.modules())   # refused before anything changed
    with pytest.raises(LLMLabError, match="--method 'int3'"):
        quantize_model(model, None, QuantizeConfig(method="int3"))
    with pytest.raises(LLMLabError, match="no layer to quantize"):
        quantize_model(model, None, QuantizeConfig(method="int4", skip=["*"]))
    # per-channel int8 has no groups: any --group-size is fine
    quantize_model(model, None, QuantizeConfig(method="int8", group_size=128), progress=False)
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.group_size == 64


def test_int4_g64_is_4_5_bits_per_weight_and_the_head_serves_the_embedding():
    model = tiny()
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    report = quantize_model(model, None, QuantizeConfig(method="int4", group_size=64), progress=False)
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 8 and all(m.bits_per_weight() == 4.5 for m in layers)   # 7 per block + the head
    assert report["quantized_weights"] == n_linear and report["float_linear_weights"] == 0
    linear_bytes = sum(m.storage_bytes() for m in layers)
    assert linear_bytes * 8 / n_linear == 4.5
    norms = sum(p.numel() * 4 for p in model.parameters())                      # the rest stays float32
    assert report["bytes"] == linear_bytes + norms
    assert report["method"] == "int4 4-bit g64" and 4.5 < report["bits_per_weight"] < 5
    assert model.tok_emb.table is model.lm_head                                   # one copy of the table


def test_skip_patterns_comma_separated_globs_and_typos():
    model = tiny()
    quantize_model(model, None, QuantizeConfig(method="int4", group_size=32, skip=["lm_head,attn.w[qk]", "w_down"]),
                   progress=False)
    kept = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear)
    assert kept == ["blocks.0.attn.wk", "blocks.0.attn.wq", "blocks.0.mlp.w_down", "lm_head"]
    assert model.lm_head.weight is model.tok_emb.weight and model.config.tie_embeddings   # a float head stays tied
    with pytest.raises(LLMLabError, match="--skip lm_hed matches no linear layer"):
        quantize_model(tiny(), None, QuantizeConfig(method="int4", skip=["lm_hed"]))
