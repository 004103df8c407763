"""NF4 (llmlab.quant.nf4): the levels and round trip against bitsandbytes, error bounds, packing, memory,
and the NF4Linear layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.quant.nf4 import (
    NF4_LEVELS,
    NF4_MAX_HALF_GAP,
    NF4Linear,
    NF4Weight,
    _pack,
    _unpack,
    dequantize_nf4,
    nf4_error_bound,
    quantize_nf4,
)


@pytest.fixture(scope="module")
def bnb_functional():
    """bitsandbytes.functional, imported once per module (the import takes several seconds)."""
    try:
        import bitsandbytes.functional as bnb_f
    except Exception as exc:  # not installed, or fails to load its native library
        pytest.skip(f"bitsandbytes cannot be imported ({exc!r}); it is the reference for NF4")
    return bnb_f


def _weight(shape=(128, 256), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.02


def test_levels_shape_zero_and_range():
    assert NF4_LEVELS.shape == (16,) and NF4_LEVELS.dtype == torch.float32
    assert bool((NF4_LEVELS.diff() > 0).all())
    assert NF4_LEVELS[0] == -1.0 and NF4_LEVELS[-1] == 1.0 and NF4_LEVELS[7] == 0.0
    assert (NF4_LEVELS > 0).sum() == 8 and (NF4_LEVELS < 0).sum() == 7
    assert NF4_MAX_HALF_GAP == pytest.approx(float(NF4_LEVELS[1] - NF4_LEVELS[0]) / 2)


def test_levels_equal_bitsandbytes_code(bnb_functional):
    _, state = bnb_functional.quantize_4bit(_weight(), blocksize=64, quant_type="nf4", compress_statistics=False)
    torch.testing.assert_close(NF4_LEVELS, state.code.float().cpu(), atol=1e-6, rtol=0)


def test_round_trip_equals_bitsandbytes(bnb_functional):
    w = _weight()
    packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    reference = bnb_functional.dequantize_4bit(packed, state)
    q = quantize_nf4(w, block_size=64, double_quant=False)
    torch.testing.assert_close(dequantize_nf4(q), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.absmax, state.absmax)
    # Same nibble order too, so the packed bytes agree.
    assert torch.equal(q.codes, packed.flatten())


@pytest.mark.parametrize("double_quant", [False, True])
def test_round_trip_error_within_bound(double_quant):
    w = _weight((96, 128), seed=1)
    w[0, :64] = 0.0  # an all-zero block must come back exactly zero
    q = quantize_nf4(w, double_quant=double_quant)
    error = (dequantize_nf4(q) - w).abs().view(-1, 64)
    bound = nf4_error_bound(q.block_absmax(), q.absmax_error_bound())
    assert bool((error <= bound[:, None] + 1e-7).all())
    assert torch.equal(dequantize_nf4(q)[0, :64], torch.zeros(64))
    # The bound is not vacuous: the worst error uses a good part of it.
    assert float((error / bound[:, None].clamp(min=1e-12)).max()) > 0.5


def test_double_quant_absmax_within_its_bound():
    w = _weight((256, 512), seed=2)  # 2048 blocks -> 8 double-quant groups
    plain = quantize_nf4(w, double_quant=False)
    dq = quantize_nf4(w, double_quant=True)
    assert dq.double_quant and not plain.double_quant
    assert dq.absmax_codes.dtype == torch.int8 and dq.absmax_scales.shape == (8,)
    error = (dq.block_absmax() - plain.absmax).abs()
    assert bool((error <= dq.absmax_error_bound() + 1e-8).all())
    assert float(error.max()) < 0.01 * float(plain.absmax.mean())  # ~0.3% of the absmax, not more
    assert torch.equal(dq.codes, plain.codes)  # codes come from the exact absmax either way


def test_double_quant_partial_last_group():
    q = quantize_nf4(_weight((10, 64 * 30)), double_quant=True)  # 300 blocks: groups of 256 + 44
    assert q.absmax_codes.shape == (300,) and q.absmax_scales.shape == (2,)
    plain = quantize_nf4(_weight((10, 64 * 30)), double_quant=False)
    assert bool(((q.block_absmax() - plain.absmax).abs() <= q.absmax_error_bound() + 1e-8).all())


def test_pack_unpack_round_trip_and_nibble_order():
    indices = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(3))
    codes = _pack(indices)
    assert codes.dtype == torch.uint8 and codes.shape == (500,)
    assert torch.equal(_unpack(codes), indices)
    assert _pack(torch.tensor([3, 12])).item() == 0x3C  # first element in the high nibble


def test_quantized_indices_are_nearest_levels():
    w = _weight((4, 64), seed=4)
    q = quantize_nf4(w, double_quant=False)
    scaled = (w.view(-1, 64) / q.absmax[:, None]).flatten()
    nearest = (scaled[:, None] - NF4_LEVELS[None, :]).abs().argmin(dim=1)
    assert torch.equal(_unpack(q.codes), nearest)


@pytest.mark.parametrize("shape, block_size", [((3, 5), 64), ((100,), 64), ((64,), 63), ((0, 64), 64)])
def test_bad_shapes_raise(shape, block_size):
    with pytest.raises(LLMLabError, match="block_size"):
        quantize_nf4(torch.randn(shape), block_size=block_size)


def test_bad_values_and_modules_raise():
    with pytest.raises(LLMLabError, match="finite"):
        quantize_nf4(torch.full((64,), float("nan")))
    with pytest.raises(LLMLabError, match="floating"):
        quantize_nf4(torch.ones(64, dtype=torch.int64))
    with pytest.raises(LLMLabError, match=r"\(3, 5\)"):
        NF4Linear.from_linear(nn.Linear(5, 3))
    with pytest.raises(LLMLabError, match="nn.Linear"):
        NF4Linear.from_linear(nn.Conv1d(4, 4, 1))


def test_memory_bits_per_param():
    w = _weight((128, 256))
    numel = w.numel()
    dq = quantize_nf4(w, block_size=64, double_quant=True)
    # 4-bit codes + 8-bit absmax per 64 + float32 scale per 64*256 + one float32 mean.
    assert dq.nbytes() == numel // 2 + numel // 64 + 4 * 2 + 4
    assert dq.bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / numel)
    assert dq.bits_per_param() == pytest.approx(4.127, abs=2e-3)
    plain = quantize_nf4(w, block_size=64, double_quant=False)
    assert plain.bits_per_param() == pytest.approx(4.5)


def test_nf4weight_dict_round_trip():
    q = quantize_nf4(_weight((32, 64)), double_quant=True)
    state = q.to_dict()
    assert all(isinstance(v, (torch.Tensor, int, tuple)) for v in state.values())
    rebuilt = NF4Weight.from_dict(state)
    assert rebuilt.double_quant and rebuilt.shape == (32, 64)
    assert torch.equal(dequantize_nf4(rebuilt), dequantize_nf4(q))


@pytest.fixture
def linear() -> nn.Linear:
    torch.manual_seed(5)
    return nn.Linear(128, 64)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_linear_matches_dequantized_linear(linear, double_quant):
    layer = NF4Linear.from_linear(linear, double_quant=double_quant)
    assert (layer.in_features, layer.out_features) == (128, 64)
    x = torch.randn(3, 7, 128)
    q = quantize_nf4(linear.weight, double_quant=double_quant)
    expected = F.linear(x, dequantize_nf4(q), linear.bias)
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
    torch.testing.assert_close(layer.dequantize(), dequantize_nf4(q), atol=0, rtol=0)
    bits = layer.weight_nf4().bits_per_param()
    assert bits == (pytest.approx(4.133, abs=1e-3) if double_quant else 4.5)  # small layer: mean + 1 scale
    assert f"bits_per_param={bits:.3f}" in repr(layer)


def test_nf4_linear_gradients_reach_input_only(linear):
    layer = NF4Linear.from_linear(linear)
    assert all(not p.requires_grad for p in layer.parameters())
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    x = torch.randn(4, 128, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert layer.bias.grad is None


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_linear_state_dict_into_fresh_module(linear, double_quant):
    layer = NF4Linear.from_linear(linear, double_quant=double_quant)
    fresh = NF4Linear(128, 64, bias=True, double_quant=double_quant)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(5, 128)
    assert torch.equal(fresh(x), layer(x))
    assert not torch.equal(NF4Linear(128, 64, double_quant=double_quant)(x), layer(x))


def test_nf4_linear_bf16_compute(linear):
    layer = NF4Linear.from_linear(linear)
    x = torch.randn(4, 128)
    out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), atol=0.05, rtol=0.02)


def test_module_dtype_cast_keeps_constants_float32(linear):
    layer = NF4Linear.from_linear(linear)
    before = layer.dequantize()
    layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16
    assert layer.absmax_scales.dtype == torch.float32 and layer.absmax_mean.dtype == torch.float32
    assert torch.equal(layer.dequantize(), before)
    assert layer(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16
