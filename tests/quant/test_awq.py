"""AWQ (llmlab.quant.awq): scale folding keeps the float model, the searches never lose to RTN,
and the whole-model function."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.surgery import replace_linears, select_linears
from llmlab.model.transformer import Transformer
from llmlab.quant.awq import awq_quantize, can_fold, clip_weight, fold_scales, scale_groups, search_scales
from llmlab.quant.calibration import block_inputs
from llmlab.quant.gptq import rtn_dequantized
from llmlab.quant.int4 import Int4Linear

G = torch.Generator
BASE = dict(vocab_size=64, n_layer=2, n_head=4, n_embd=64, block_size=32, position="rope", norm="rmsnorm",
            mlp="swiglu")


def tiny_model(outliers: bool = False, **overrides) -> Transformer:
    """A random model; with outliers, a few channels of each norm's output are 20x larger and the
    weights reading them 20x smaller (the same function): the activation pattern AWQ exploits."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**BASE, **overrides})).eval()
    if outliers:
        with torch.no_grad():
            for block in model.blocks:
                for norm, readers in ((block.attn_norm, (block.attn.wq, block.attn.wk, block.attn.wv)),
                                      (block.mlp_norm, (block.mlp.w_gate, block.mlp.w_up))):
                    norm.weight[:4] *= 20
                    for linear in readers:
                        linear.weight[:, :4] /= 20
    return model


def rtn_model(model: Transformer, group_size: int) -> Transformer:
    rtn = copy.deepcopy(model)
    replace_linears(rtn, select_linears(rtn, ["all-linear"]), lambda _n, lin: Int4Linear.from_linear(lin, group_size))
    return rtn


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (n, 32), generator=G().manual_seed(seed))


@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2}, {"mlp": "gelu", "norm": "layernorm", "bias": True}])
def test_folding_scales_keeps_the_float_model(overrides):
    model = tiny_model(**overrides)
    test = ids(3, 0)
    with torch.no_grad():
        reference = model(test)["logits"]
        embedding = model.tok_emb.weight.clone()
        names = []
        for block in model.blocks:
            for group in scale_groups(block, model.config):
                assert can_fold(block, group)
                width = block.get_submodule(group.linears[0]).in_features
                fold_scales(block, group, torch.rand(width, generator=G().manual_seed(len(names))) * 4 + 0.25)
                names.append(group.name)
        torch.testing.assert_close(model(test)["logits"], reference, atol=1e-5, rtol=1e-4)
        assert torch.equal(model.tok_emb.weight, embedding)
    expected = {"attn_in", "mlp_in"} | ({"attn_out"} if "n_kv_head" not in overrides else set()) \
        | ({"mlp_hidden"} if "mlp" not in overrides else set())
    assert set(names) == expected


def test_scale_search_never_loses_to_rtn():
    x = torch.randn(512, 128, generator=G().manual_seed(0)) * (torch.rand(128, generator=G().manual_seed(1)) * 5)
    W = torch.randn(48, 128, generator=G().manual_seed(2)) * 0.05
    s, alpha, err, rtn = search_scales(W, x.abs().mean(0), x.T @ x, group_size=32)
    diff = W - rtn_dequantized(W, 32)
    assert rtn == pytest.approx(float(((diff @ (x.T @ x)) * diff).sum()), rel=1e-4)   # alpha 0 is RTN
    assert err <= rtn and 0 <= alpha < 1 and s.shape == (128,)
    assert err < 0.9 * rtn   # uneven channels: scaling helps


def test_clipping_lowers_each_groups_error():
    x = torch.randn(1024, 64, generator=G().manual_seed(3))
    W = torch.randn(16, 64, generator=G().manual_seed(4))
    W[0, 3] = 8.0   # one outlier stretches its group's grid, on an input that is nearly always ~0:
    x[:, 3] *= 0.01  # clipping it costs little, a finer grid for the rest of the group gains much
    gram = x.T @ x
    clipped, ratio = clip_weight(W, gram, group_size=32)
    assert ratio < 1 and float(clipped.abs().max()) < 8.0
    def group_errors(approx):
        d = (W - approx).view(16, 2, 32)
        return torch.stack([torch.einsum("oi,ij,oj->o", d[:, g], gram[32 * g:32 * g + 32, 32 * g:32 * g + 32], d[:, g])
                            for g in range(2)], 1)
    assert bool((group_errors(rtn_dequantized(clipped, 32)) <= group_errors(rtn_dequantized(W, 32)) + 1e-6).all())
    unchanged, one = clip_weight(W, gram, 32, ratios=(1.0,))
    assert torch.equal(unchanged, W) and one == 1.0


@pytest.mark.parametrize("clip", [True, False])
def test_quantized_block_beats_rtn(clip):
    model = tiny_model(outliers=True)
    calib = ids(16, 0)
    rtn = rtn_model(model, 32)
    hidden, rope = block_inputs(model, ids(4, 1))
    with torch.no_grad():
        reference, _ = model.blocks[0](hidden, rope)
        rtn_out, _ = rtn.blocks[0](hidden, rope)
    report = awq_quantize(model, calib, group_size=32, clip=clip, progress=False)
    with torch.no_grad():
        awq_out, _ = model.blocks[0](hidden, rope)
    awq_error, rtn_error = (awq_out - reference).norm(), (rtn_out - reference).norm()
    assert awq_error < 0.5 * rtn_error
    assert all(layer["error"] <= layer["rtn_error"] for layer in report["layers"].values())
    assert report["groups"]["blocks.0.attn_in"]["alpha"] > 0


def test_whole_model():
    model = tiny_model(outliers=True, n_kv_head=2)
    test = ids(4, 1)
    with torch.no_grad():
        reference = model(test)["logits"]
        rtn_logits = rtn_model(model, 32)(test)["logits"]
    embedding = model.tok_emb.weight.detach().clone()
    report = awq_quantize(model, ids(16, 0), group_size=32, progress=False)
    for i in range(2):
        for name in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w_gate", "mlp.w_up", "mlp.w_down"):
            assert isinstance(model.get_submodule(f"blocks.{i}.{name}"), Int4Linear)
    assert "blocks.0.attn_out" not in report["groups"]   # GQA: wo is left unscaled
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.tok_emb.weight
    assert torch.equal(model.tok_emb.weight, embedding) and not model.training
    with torch.no_grad():
        logits = model(test)["logits"]
    error = float((logits - reference).norm() / reference.norm())
    assert error < 0.05 and error < float((rtn_logits - reference).norm() / reference.norm())
