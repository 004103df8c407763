"""The optional reduction-form decode path gives the same logits and tokens as plain nn.Linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from llmlab.infer.fast_decode import MatvecLinear, disable_fast_decode, enable_fast_decode, reduction_matvec
from llmlab.infer.generate import decode_steps
from llmlab.infer.sampling import SamplingConfig
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

# Biased q/k/v (Qwen2 style) so the bias path of MatvecLinear is exercised too.
CONFIG = ModelConfig(vocab_size=96, block_size=40, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, qkv_bias=True)


def test_reduction_form_is_the_matrix_vector_product():
    torch.manual_seed(0)
    x, w = torch.randn(1, 48), torch.randn(80, 48)
    torch.testing.assert_close(reduction_matvec(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    exact = xb.float() @ wb.float().T        # bf16 inputs, accumulated exactly in float32
    assert (reduction_matvec(xb, wb).float() - exact).abs().max() <= exact.abs().max() * 2 ** -7


@pytest.mark.slow
def test_swapped_model_decodes_identically_and_swaps_back():
    torch._dynamo.reset()  # start from an empty compile cache whatever ran before
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    keys = list(model.state_dict())
    prompt, greedy = [3, 14, 15, 92, 65, 35], SamplingConfig(max_new_tokens=10, temperature=0.0)
    expected = [int(s.ids[0]) for s in decode_steps(model, [prompt], greedy)]
    with torch.no_grad():
        full_logits = model(torch.tensor([prompt]))["logits"]

    report = enable_fast_decode(model, autotune=False, min_elements=0)
    assert sum(r.modules for r in report) == 2 * 7 + 1 and all(r.chosen == "reduction" for r in report)
    assert isinstance(model.lm_head, MatvecLinear) and model.lm_head.weight is model.tok_emb.weight
    assert list(model.state_dict()) == keys
    # One token at a time through the cache exercises the compiled kernel in every layer.
    assert [int(s.ids[0]) for s in decode_steps(model, [prompt], greedy)] == expected
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([prompt]))["logits"], full_logits)  # prefill: the GEMM
        first = model(torch.tensor([prompt[:1]]))["logits"][0, 0]                    # one row: the kernel
    torch.testing.assert_close(first, full_logits[0, 0], rtol=1e-5, atol=1e-5)

    assert disable_fast_decode(model) == 15
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("wq", "w_up", "lm_head")))
    assert model.lm_head.weight is model.tok_emb.weight
    assert [int(s.ids[0]) for s in decode_steps(model, [prompt], greedy)] == expected


@pytest.mark.slow
def test_autotune_reports_every_shape_and_keeps_gradients_on_the_gemm():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    big = CONFIG.vocab_size * CONFIG.n_embd          # the output head and nothing smaller
    report = enable_fast_decode(model, autotune=True, min_elements=big, repeats=3)
    shapes = {(r.out_features, r.in_features) for r in report}
    assert shapes == {(o, i) for o, i in [(96, 32), (CONFIG.mlp_hidden, 32), (32, CONFIG.mlp_hidden)] if o * i >= big}
    assert all(r.linear_ms > 0 and r.reduction_ms > 0 and r.chosen in ("reduction", "linear") for r in report)
    # Training still works: with grad enabled every layer takes the differentiable F.linear path.
    model.train()
    loss = model(torch.tensor([[1, 2, 3]]), targets=torch.tensor([[2, 3, 4]]))["loss"]
    loss.backward()
    assert model.tok_emb.weight.grad is not None
