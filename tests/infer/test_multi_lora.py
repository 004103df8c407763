"""Several LoRA adapters over one shared base in one batch: each row (or token) gets exactly what a
model with its own adapter merged computes, and reading an adapter's factors leaves the base alone."""

from __future__ import annotations

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.finetune.adapter import adapter_weights, load_adapter
from llmlab.finetune.config import LoRAConfig
from llmlab.finetune.lora import apply_lora, lora_layers, merge_lora
from llmlab.finetune.peft import save_peft_adapter
from llmlab.infer.multi_lora import MultiLoRALinear, attach_adapters, detach_adapters, set_token_adapters
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

T = 10
IDS = torch.randint(0, 64, (3, T), generator=torch.Generator().manual_seed(3))


def tiny_config(n_layer: int = 2) -> ModelConfig:
    return ModelConfig(vocab_size=64, block_size=32, n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=32,
                       position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=True)


def base_model(n_layer: int = 2) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(n_layer)).eval()


def save_adapter(directory, targets: str, r: int, seed: int, method: str = "lora", n_layer: int = 2):
    """A PEFT directory holding a random adapter (B nonzero: an adapter at init computes nothing)."""
    model = base_model(n_layer)
    config = LoRAConfig(r=r, alpha=2.0 * r + seed, targets=targets, nf4_block=32)
    apply_lora(model, config, method)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
            if layer.magnitude is not None:
                layer.magnitude.mul_(1.1)
    save_peft_adapter(model, method, config, "tiny", directory)
    return directory


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two adapters on different layers and ranks; b also adapts the tied output head."""
    root = tmp_path_factory.mktemp("adapters")
    return {"a": save_adapter(root / "a", "attn.wq,attn.wv", r=4, seed=1),
            "b": save_adapter(root / "b", "attn.wo,mlp.w_up,lm_head", r=2, seed=2)}


def merged_logits(adapter_dir, **forward) -> torch.Tensor:
    model = base_model()
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
        merge_lora(model)
    with torch.no_grad():
        return model(IDS, **forward)["logits"]


def served(adapters) -> tuple[Transformer, list[str]]:
    model = base_model()
    names = attach_adapters(model, {n: adapter_weights(model, d) for n, d in adapters.items()})
    return model, names


def test_each_row_gets_its_own_adapter(adapters):
    model, names = served(adapters)
    assert names == ["a", "b"]
    set_token_adapters(model, torch.tensor([[0], [1], [-1]]))   # a, b, none
    with torch.no_grad():
        got = model(IDS)["logits"]
    want = [merged_logits(adapters["a"]), merged_logits(adapters["b"]), merged_logits(None)]
    assert not torch.allclose(want[0], want[2], atol=1e-3) and not torch.allclose(want[1], want[2], atol=1e-3)
    for row in range(3):
        torch.testing.assert_close(got[row], want[row][row], atol=1e-5, rtol=1e-5)
    # The head's tokens follow the forward pass's choice of logits (last_only, logits_index).
    with torch.no_grad():
        last = model(IDS, last_only=True)["logits"]
        picked = model(IDS, logits_index=torch.tensor([3, 9, 5]))["logits"]
    for row in range(3):
        torch.testing.assert_close(last[row, 0], want[row][row, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(picked[row, 0], want[row][row, [3, 9, 5][row]], atol=1e-5, rtol=1e-5)
    set_token_adapters(model, None)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS)["logits"], want[2], atol=1e-5, rtol=1e-5)
    detach_adapters(model)
    assert not any(isinstance(m, MultiLoRALinear) for m in model.modules())
    assert model.lm_head.weight is model.tok_emb.weight and model.config.tie_embeddings
    assert set(model.state_dict()) == set(base_model().state_dict())


def test_packed_tokens_match_per_row(adapters):
    """The continuous-batching layout: all rows' tokens in one (1, N) row, a per-token index, positions
    restarting per sequence and a block-diagonal causal mask; logits only where logits_mask says."""
    model, _ = served(adapters)
    per_row = torch.tensor([[0], [1], [-1]])
    set_token_adapters(model, per_row)
    with torch.no_grad():
        want = model(IDS)["logits"]
    N = 3 * T
    seq = torch.arange(N) // T
    mask = (seq[:, None] == seq[None, :]) & (torch.arange(N)[:, None] >= torch.arange(N)[None, :])
    set_token_adapters(model, per_row.expand(3, T).reshape(1, N))
    with torch.no_grad():
        packed = model(IDS.reshape(1, N), positions=(torch.arange(N) % T)[None], attn_mask=mask[None, None])["logits"]
        keep = torch.rand(1, N, generator=torch.Generator().manual_seed(0)) < 0.5
        some = model(IDS.reshape(1, N), positions=(torch.arange(N) % T)[None], attn_mask=mask[None, None],
                     logits_mask=keep)["logits"]
    torch.testing.assert_close(packed.view(3, T, -1), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(some, want.reshape(1, N, -1)[keep], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the same number of head tokens at other places: the head follows the new mask
        other = model(IDS.reshape(1, N), positions=(torch.arange(N) % T)[None], attn_mask=mask[None, None],
                      logits_mask=keep.flip(1))["logits"]
    assert keep.sum() == keep.flip(1).sum() and not torch.equal(keep, keep.flip(1))
    torch.testing.assert_close(other, want.reshape(1, N, -1)[keep.flip(1)], atol=1e-5, rtol=1e-5)


def test_layer_mixes_adapters_per_token():
    """One layer, 2-D input: each token's output is base + s B A x of its own adapter (or the base)."""
    base = torch.nn.Linear(8, 6)
    g = torch.Generator().manual_seed(0)
    factors = {0: (torch.randn(3, 8, generator=g), torch.randn(6, 3, generator=g), 0.5),
               2: (torch.randn(1, 8, generator=g), torch.randn(6, 1, generator=g), 2.0)}
    from llmlab.infer.multi_lora import TokenAdapters
    batch = TokenAdapters(["x", "y", "z"])
    layer = MultiLoRALinear(base, factors, batch)
    x = torch.randn(7, 8, generator=g)
    index = torch.tensor([0, -1, 2, 1, 0, 2, -1])  # y (1) does not adapt this layer
    batch.set(index)
    with torch.no_grad():
        got = layer(x)
        for t, a in enumerate(index.tolist()):
            want = base(x[t]) + (factors[a][2] * factors[a][1] @ factors[a][0] @ x[t] if a in factors else 0)
            torch.testing.assert_close(got[t], want, atol=1e-5, rtol=1e-5)
    for bad in (5, -2):
        batch.set(torch.tensor([bad]))
        with pytest.raises(LLMLabError, match=r"not all -1 \(none\) or one of the 3 adapters"):
            layer(x)
    batch.set(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(LLMLabError, match="does not broadcast"):
        layer(x)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_weights_leaves_the_model_unchanged(tmp_path, method):
    path = save_adapter(tmp_path / method, "attn.wq,mlp.w_down,lm_head", r=3, seed=4, method=method)
    model = base_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    factors = adapter_weights(model, path)
    assert sorted(factors) == ["blocks.0.attn.wq", "blocks.0.mlp.w_down", "blocks.1.attn.wq", "blocks.1.mlp.w_down",
                               "lm_head"]
    A, B, scaling = factors["lm_head"]
    assert A.shape == (3, 32) and B.shape == (64, 3) and scaling == pytest.approx((2 * 3 + 4) / 3) and B.abs().sum() > 0
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert dict(model.named_modules()) == modules               # the very same module objects
    assert model.lm_head.weight is model.tok_emb.weight and model.config.tie_embeddings
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_dora_is_refused(tmp_path):
    path = save_adapter(tmp_path / "dora", "attn.wq", r=2, seed=5, method="dora")
    model = base_model()
    with pytest.raises(LLMLabError, match=r"DoRA.*--model BASE --adapter"):
        adapter_weights(model, path)
    assert not lora_layers(model)


def test_adapter_for_another_base_is_refused(tmp_path):
    path = save_adapter(tmp_path / "deep", "attn.wq", r=2, seed=6, n_layer=3)
    model = base_model(n_layer=2)
    with pytest.raises(LLMLabError, match="lacks"):
        adapter_weights(model, path)
    assert not lora_layers(model)
    A, B = torch.zeros(2, 32), torch.zeros(32, 2)
    with pytest.raises(LLMLabError, match=r"blocks\.2\.attn\.wq, which this model lacks"):
        attach_adapters(model, {"deep": {"blocks.2.attn.wq": (A, B, 1.0)}})
    with pytest.raises(LLMLabError, match=r"needs \(r, 32\)"):
        attach_adapters(model, {"wide": {"blocks.0.attn.wq": (torch.zeros(2, 16), B, 1.0)}})
    assert getattr(model, "_multi_lora", None) is None
    with pytest.raises(LLMLabError, match="attach_adapters"):
        set_token_adapters(model, torch.tensor([[0]]))


def test_peft_adapter_with_its_own_head_weight(tmp_path):
    """PEFT may save an adapted lm_head's frozen weight; one that differs from the base's is a new
    base, refused before it is copied into the model; the base's own weight is fine."""
    from safetensors.torch import load_file, save_file

    path = save_adapter(tmp_path / "head", "lm_head", r=2, seed=7)
    model = base_model()
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    key = "base_model.model.lm_head.base_layer.weight"
    save_file({**tensors, key: model.lm_head.weight.detach().clone()}, file, metadata={"format": "pt"})
    assert list(adapter_weights(model, path)) == ["lm_head"]
    before = model.lm_head.weight.detach().clone()
    save_file({**tensors, key: before + 1}, file, metadata={"format": "pt"})
    with pytest.raises(LLMLabError, match=r"replaces the frozen weight of lm_head.*--model BASE --adapter"):
        adapter_weights(model, path)
    assert torch.equal(model.lm_head.weight, before) and model.lm_head.weight is model.tok_emb.weight
