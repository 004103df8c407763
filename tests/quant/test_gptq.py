"""GPTQ (llmlab.quant.gptq): the single-layer algorithm against RTN, its invariants, and the whole model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.quant.gptq import dequantized, gptq_layer, gptq_quantize, rtn_dequantized
from llmlab.quant.int4 import Int4Linear, quantize_int4
from llmlab.quant.int8 import Int8Linear

G = torch.Generator


def correlated_layer(n=2048, inp=256, out=96, rank=24, seed=0):
    """Inputs that live near a low-dimensional subspace (as real activations do), and a weight."""
    g = G().manual_seed(seed)
    X = torch.randn(n, rank, generator=g) @ torch.randn(rank, inp, generator=g) + 0.1 * torch.randn(n, inp, generator=g)
    W = torch.randn(out, inp, generator=g) * 0.05
    return X, W, 2 * X.T @ X / n


def rel_error(X, W, approx):
    return float((X @ W.T - X @ approx.T).norm() / (X @ W.T).norm())


@pytest.mark.parametrize("act_order", [False, True])
def test_output_error_is_well_below_rtn(act_order):
    X, W, H = correlated_layer()
    q, scale, low = gptq_layer(W, H, group_size=64, act_order=act_order)
    assert q.dtype == torch.uint8 and q.shape == W.shape and int(q.max()) <= 15
    assert scale.dtype == low.dtype == torch.float16 and scale.shape == (96, 4)
    gptq, rtn = rel_error(X, W, dequantized(q, scale, low)), rel_error(X, W, rtn_dequantized(W, 64))
    assert gptq < 0.5 * rtn
    # The codes and constants are exactly an Int4Linear's.
    layer = Int4Linear.from_codes(q, scale, low)
    torch.testing.assert_close(layer.dequantize(), dequantized(q, scale, low), atol=0, rtol=0)


def test_uncorrelated_inputs_give_rtn():
    # With a diagonal H no column's error can be compensated by another: GPTQ is RTN exactly.
    W = torch.randn(32, 128, generator=G().manual_seed(1))
    H = torch.diag(torch.rand(128, generator=G().manual_seed(2)) + 0.5)
    q, scale, low = gptq_layer(W, H, group_size=32)
    q_rtn, scale_rtn, low_rtn = quantize_int4(W, 32)
    assert torch.equal(q, q_rtn) and torch.equal(scale, scale_rtn) and torch.equal(low, low_rtn)


def test_grids_follow_the_updated_weights_unless_act_order():
    X, W, H = correlated_layer(inp=128, out=32)
    _, scale_rtn, low_rtn = quantize_int4(W, 32)
    _, scale, low = gptq_layer(W, H, group_size=32)
    assert torch.equal(scale[:, 0], scale_rtn[:, 0])      # the first group sees the original weights
    assert not torch.equal(scale[:, 1:], scale_rtn[:, 1:])  # later groups: the error-compensated ones
    _, scale_ao, low_ao = gptq_layer(W, H, group_size=32, act_order=True)
    assert torch.equal(scale_ao, scale_rtn) and torch.equal(low_ao, low_rtn)   # static groups


def test_dead_inputs_and_int8():
    X, W, _ = correlated_layer(inp=128, out=32)
    X[:, 5] = 0
    H = 2 * X.T @ X / X.size(0)
    q, scale, low = gptq_layer(W, H, group_size=64, act_order=True)
    approx = dequantized(q, scale, low)
    assert bool(torch.isfinite(approx).all()) and rel_error(X, W, approx) < rel_error(X, W, rtn_dequantized(W, 64))
    q8, scale8, low8 = gptq_layer(W, H, group_size=128, bits=8)
    assert q8.dtype == torch.int8 and low8 is None and scale8.shape == (32, 1)
    approx8 = Int8Linear.from_codes(q8, scale8).dequantize()
    assert rel_error(X, W, approx8) < rel_error(X, W, rtn_dequantized(W, 128, bits=8)) < 0.01


def test_bad_arguments():
    W, H = torch.randn(8, 64), torch.eye(64)
    with pytest.raises(LLMLabError, match="bits 4"):
        gptq_layer(W, H, bits=3)
    with pytest.raises(LLMLabError, match="does not divide"):
        gptq_layer(W, H, group_size=48)
    with pytest.raises(LLMLabError, match="Hessian"):
        gptq_layer(W, torch.eye(32))


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=64, n_layer=2, n_head=4, n_embd=64, block_size=32, position="rope",
                  norm="rmsnorm", mlp="swiglu")
    return Transformer(ModelConfig(**{**config, **overrides})).eval()


def logits_error(model, reference, ids):
    with torch.no_grad():
        return float((model(ids)["logits"] - reference).norm() / reference.norm())


def test_whole_model_int4():
    model = tiny_model()
    ids = torch.randint(0, 64, (16, 32), generator=G().manual_seed(0))
    test = torch.randint(0, 64, (4, 32), generator=G().manual_seed(1))
    with torch.no_grad():
        reference = model(test)["logits"]
    embedding = model.tok_emb.weight.detach().clone()
    report = gptq_quantize(model, ids, group_size=32, progress=False)
    for i in range(2):
        for name in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w_gate", "mlp.w_up", "mlp.w_down"):
            assert isinstance(model.get_submodule(f"blocks.{i}.{name}"), Int4Linear)
            layer = report["layers"][f"blocks.{i}.{name}"]
            assert layer["error"] < layer["rtn_error"]
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.tok_emb.weight
    assert torch.equal(model.tok_emb.weight, embedding) and not model.training
    assert logits_error(model, reference, test) < 0.05


def test_whole_model_head_int8_and_skip():
    model = tiny_model(n_kv_head=2)
    ids = torch.randint(0, 64, (8, 32), generator=G().manual_seed(0))
    embedding = model.tok_emb.weight.detach().clone()
    rtn = copy.deepcopy(model)
    report = gptq_quantize(model, ids, bits=8, group_size=64, skip=("mlp.w_down",), act_order=True, progress=False)
    assert isinstance(model.lm_head, Int8Linear) and not model.config.tie_embeddings
    assert torch.equal(model.tok_emb.weight, embedding)            # the embedding keeps its float table
    assert type(model.blocks[0].mlp.w_down) is nn.Linear and isinstance(model.blocks[1].attn.wk, Int8Linear)
    assert "lm_head" in report["layers"] and "blocks.0.mlp.w_down" not in report["layers"]
    test = torch.randint(0, 64, (4, 32), generator=G().manual_seed(1))
    with torch.no_grad():
        assert logits_error(model, rtn(test)["logits"], test) < 0.01


def test_block_inputs_come_from_the_quantized_previous_block():
    from llmlab.quant.calibration import block_inputs
    from llmlab.quant.gptq import output_error

    model = tiny_model()
    float_model = copy.deepcopy(model)
    calib = torch.randint(0, 64, (8, 32), generator=G().manual_seed(0))
    report = gptq_quantize(model, calib, group_size=32, progress=False)
    weight = float_model.blocks[1].attn.wq.weight.detach()
    expected = {}
    for name, source in (("quantized", model), ("float", float_model)):
        hidden, rope = block_inputs(source, calib)
        with torch.no_grad():
            x = source.blocks[1].attn_norm(source.blocks[0](hidden, rope)[0]).reshape(-1, 64)
        expected[name] = output_error(weight, rtn_dequantized(weight, 32), 2 * x.T @ x / x.size(0))
    got = report["layers"]["blocks.1.attn.wq"]["rtn_error"]
    assert abs(got - expected["quantized"]) < 0.05 * abs(got - expected["float"])
