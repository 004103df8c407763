"""LoRALinear and applying it by name: unchanged at init, merge == unmerged, only adapters train."""

from __future__ import annotations

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.finetune.config import LoRAConfig
from llmlab.finetune.lora import LoRALinear, adapter_record, apply_lora, count_parameters, lora_layers, merge_lora, \
    rebuild_adapter
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def tiny_llama(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=tie)
    return Transformer(config).eval()


def randomize_b(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
            if layer.magnitude is not None:
                layer.magnitude.mul_(1 + 0.1 * torch.rand(layer.magnitude.shape, generator=g))


IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_adapter_at_init_leaves_the_output_unchanged(method):
    model = tiny_llama()
    before = model(IDS)["logits"]
    if method == "qlora":  # the reference is the NF4 base itself: LoRA adds exactly nothing on top
        from llmlab.finetune.lora import quantize_frozen_base
        quantize_frozen_base(model, 32, True)
        before = model(IDS)["logits"]
        model = tiny_llama()
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, nf4_block=32), method)
    assert torch.allclose(model(IDS)["logits"], before, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_merged_model_gives_the_same_logits(method):
    model = tiny_llama()
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, nf4_block=32), method)
    randomize_b(model)
    adapted = model(IDS)["logits"]
    assert not torch.allclose(adapted, tiny_llama()(IDS)["logits"], atol=1e-3)  # the adapter does something
    if method != "qlora":  # in place, and back
        for layer in lora_layers(model).values():
            layer.merge()
        assert torch.allclose(model(IDS)["logits"], adapted, atol=1e-5)
        for layer in lora_layers(model).values():
            layer.unmerge()
        assert torch.allclose(model(IDS)["logits"], adapted, atol=1e-5)
    merge_lora(model)
    assert not lora_layers(model)
    assert torch.allclose(model(IDS)["logits"], adapted, atol=1e-5)
    assert "blocks.0.attn.wq.weight" in model.state_dict()  # the base model's names again


def test_only_adapter_parameters_get_gradients_and_change():
    model = tiny_llama()
    names = apply_lora(model, LoRAConfig(r=2, alpha=4, targets="attn.wq,attn.wv", dropout=0.0), "lora")
    assert names == ["blocks.0.attn.wq", "blocks.0.attn.wv", "blocks.1.attn.wq", "blocks.1.attn.wv"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(IDS[:, :-1], IDS[:, 1:])["loss"]
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in n), n
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != ("lora_" in n), n  # adapters moved, nothing else did
    trainable, total = count_parameters(model)
    assert trainable == 2 * (2 * (32 + 32) + 2 * (32 + 16)) and total > trainable  # wq 32->32, wv 32->16 (GQA)


def test_rebuild_from_the_record_restores_the_same_model():
    model = tiny_llama()
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, targets="mlp.*")
    names = apply_lora(model, config, "dora")
    randomize_b(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    record = adapter_record(config, "dora", names)
    fresh = tiny_llama()
    rebuild_adapter(fresh, record)
    fresh.load_state_dict(weights, strict=False)
    assert torch.allclose(fresh(IDS)["logits"], model(IDS)["logits"], atol=1e-6)
    with pytest.raises(LLMLabError, match="version"):
        rebuild_adapter(tiny_llama(), {**record, "version": 99})


def test_rslora_scaling_and_bad_targets():
    layer = LoRALinear(torch.nn.Linear(8, 8), r=16, alpha=16, rslora=True)
    assert layer.scaling == pytest.approx(16 / 4)
    with pytest.raises(LLMLabError, match="matches no linear layer"):
        apply_lora(tiny_llama(), LoRAConfig(targets="attn.q_proj"))


def test_merging_a_qlora_subset_leaves_no_nf4_layer():
    model = tiny_llama()
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets="attn.wq", nf4_block=32), "qlora")
    randomize_b(model)
    adapted = model(IDS)["logits"]
    merge_lora(model)
    assert all(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n.endswith(("wq", "wk", "w_up")))
    assert torch.allclose(model(IDS)["logits"], adapted, atol=1e-5)
