"""The compiled decode path (static cache, reduction-form linears, explicit attention, torch.compile)
gives the same tokens as the eager path, one step at a time and in padded batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from llmlab.infer.compiled_decode import (CompiledDecode, MatvecLinear, compile_decode_step, inductor_cache_dir,
                                          prepare_for_compiled_decode, reduction_matvec)
from llmlab.infer.generate import cache_length, decode_steps, run_model
from llmlab.infer.sampling import SamplingConfig
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

# Biased q/k/v (Qwen2 style) so the bias path of MatvecLinear is exercised too.
LLAMA = ModelConfig(vocab_size=96, block_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, qkv_bias=True)
GPT2 = ModelConfig(vocab_size=96, block_size=300, n_layer=2, n_head=4, n_embd=32, position="learned",
                   norm="layernorm", mlp="gelu", bias=True)
FAMILIES = pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
GREEDY = SamplingConfig(max_new_tokens=10, temperature=0.0)
PROMPTS = [[3, 14, 15, 92, 65, 35], [2, 7], [1, 8, 2, 8, 1, 8, 2]]


def model_for(config: ModelConfig) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config).eval()


def tokens(model, prompts, decode_fn=None) -> list[list[int]]:
    out = [[] for _ in prompts]
    for step in decode_steps(model, prompts, GREEDY, decode_fn=decode_fn):
        for b, t in enumerate(step.ids.tolist()):
            out[b].append(t)
    return out


def test_reduction_form_is_the_matrix_vector_product():
    torch.manual_seed(0)
    x, w = torch.randn(1, 48), torch.randn(80, 48)
    torch.testing.assert_close(reduction_matvec(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    exact = xb.float() @ wb.float().T        # bf16 inputs, accumulated exactly in float32
    assert (reduction_matvec(xb, wb).float() - exact).abs().max() <= exact.abs().max() * 2 ** -7


def test_static_cache_sizes_are_powers_of_two_within_the_context():
    assert cache_length(100, 300, static=False) == 100
    assert [cache_length(n, 8192, static=True) for n in (1, 256, 257, 640, 5000)] == [256, 256, 512, 1024, 8192]
    assert cache_length(260, 300, static=True) == 300


@FAMILIES
def test_static_cache_decodes_like_the_dynamic_one(config):
    # Eager run_model with the static cache: attention over all slots, the mask hiding unwritten ones.
    model = model_for(config)
    assert tokens(model, PROMPTS, decode_fn=run_model) == tokens(model, PROMPTS)
    assert tokens(model, PROMPTS[:1], decode_fn=run_model) == tokens(model, PROMPTS[:1])


def test_prepared_model_keeps_weights_outputs_and_gradients():
    model = model_for(LLAMA)
    keys = list(model.state_dict())
    prompt = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        full = model(prompt)["logits"]
    assert prepare_for_compiled_decode(model) == 2 * 7 + 1
    assert isinstance(model.lm_head, MatvecLinear) and model.lm_head.weight is model.tok_emb.weight
    assert list(model.state_dict()) == keys and all(b.attn.explicit_decode for b in model.blocks)
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.no_grad():  # eagerly (the prefill) every row count takes the GEMM: same logits
        torch.testing.assert_close(model(prompt)["logits"], full, rtol=1e-5, atol=1e-5)
    model.train()
    model(prompt[:, :-1], targets=prompt[:, 1:])["loss"].backward()
    assert model.tok_emb.weight.grad is not None and model.blocks[0].mlp.w_up.weight.grad is not None


@pytest.mark.slow
def test_compiled_decode_matches_eager_and_compiles_only_in_prepare(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # cold: an empty cache
    torch._dynamo.reset()  # start from an empty compile cache whatever ran before
    model = model_for(LLAMA)
    expected_batch, expected_one = tokens(model, PROMPTS), tokens(model, PROMPTS[:1])
    step = CompiledDecode(model)
    needed = max(map(len, PROMPTS)) + GREEDY.max_new_tokens
    assert step.prepare(1, needed) > 0 and step.prepare(len(PROMPTS), needed) > 0
    assert step.prepare(1, needed) == 0.0 and step.compile_s > 0   # compiled once, remembered
    graphs = counters["stats"]["unique_graphs"]
    # The users' generations run the graphs the warm-up compiled: nothing is compiled inside them.
    assert tokens(model, PROMPTS, step) == expected_batch
    assert tokens(model, PROMPTS[:1], step) == expected_one
    assert counters["stats"]["unique_graphs"] == graphs
    assert any((tmp_path / "inductor").iterdir())   # kernels went to the cache directory asked for


def test_compile_cache_is_a_stable_per_user_directory(tmp_path, monkeypatch):
    # Not inductor's /tmp default: a second process (after a reboot, too) finds the kernels.
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    assert inductor_cache_dir() == tmp_path / "cache" / "inductor"
    compile_decode_step(model_for(LLAMA))  # sets inductor's variable before anything compiles
    assert (tmp_path / "cache" / "inductor").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the standard override wins
    assert inductor_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LLMLAB_CACHE")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert inductor_cache_dir() == Path.home() / ".cache" / "llmlab" / "inductor"


def test_missing_cpp_compiler_is_a_clear_error(monkeypatch):
    from llmlab.core.errors import LLMLabError
    from llmlab.infer import compiled_decode

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiled_decode.shutil, "which", lambda name: None)
    with pytest.raises(LLMLabError, match="needs a C\\+\\+ compiler"):
        compile_decode_step(model_for(LLAMA))
