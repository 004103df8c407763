"""The Transformer's defining properties, each checked directly."""

import dataclasses

import pytest
import torch

from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer, apply_rotary, rope_frequencies

GPT2 = ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, position="learned",
                   norm="layernorm", mlp="gelu", bias=True)
LLAMA = ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
FAMILIES = pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])


def model_for(config: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config).eval()


@FAMILIES
def test_causal_mask_later_tokens_never_change_earlier_logits(config):
    model = model_for(config)
    x = torch.randint(0, 50, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 50, (2, 8))  # change only positions 12..19
    a, b = model(x)["logits"], model(y)["logits"]
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@FAMILIES
def test_explicit_attention_equals_sdpa(config):
    model = model_for(config)
    explicit = Transformer(dataclasses.replace(config, attention="explicit")).eval()
    explicit.load_state_dict(model.state_dict())
    x = torch.randint(0, 50, (3, 25))
    torch.testing.assert_close(model(x)["logits"], explicit(x)["logits"], atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    cos, sin = rope_frequencies(16, 64, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q.view(1, 1, 1, 16), cos[m].view(1, 1, 1, 8), sin[m].view(1, 1, 1, 8))
        kn = apply_rotary(k.view(1, 1, 1, 16), cos[n].view(1, 1, 1, 8), sin[n].view(1, 1, 1, 8))
        return float((qm * kn).sum())

    assert score(5, 3) == pytest.approx(score(40, 38), abs=1e-4)
    assert score(10, 0) == pytest.approx(score(30, 20), abs=1e-4)
    assert score(5, 3) != pytest.approx(score(5, 4), abs=1e-3)
    # A rotation preserves the vector's norm.
    rotated = apply_rotary(q.view(1, 1, 1, 16), cos[7].view(1, 1, 1, 8), sin[7].view(1, 1, 1, 8))
    assert float(rotated.norm()) == pytest.approx(float(q.norm()), rel=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = model_for(LLAMA)
    mha = Transformer(dataclasses.replace(LLAMA, n_kv_head=LLAMA.n_head)).eval()
    state = gqa.state_dict()
    repeat = LLAMA.n_head // LLAMA.n_kv_head
    for name, tensor in list(state.items()):
        if name.endswith("attn.wk.weight") or name.endswith("attn.wv.weight"):
            # (K*D, C) -> (K, D, C) -> each kv head repeated for its group of query heads -> (H*D, C)
            heads = tensor.view(LLAMA.n_kv_head, LLAMA.head_dim, -1)
            state[name] = heads.repeat_interleave(repeat, dim=0).reshape(-1, tensor.size(-1))
    mha.load_state_dict(state)
    x = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(gqa(x)["logits"], mha(x)["logits"], atol=1e-5, rtol=1e-5)


def expected_params(c: ModelConfig) -> int:
    C, H, K, D, F, V, L = c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.mlp_hidden, c.vocab_size, c.n_layer
    norm = C * (2 if c.norm == "layernorm" and c.bias else 1)
    attn = C * H * D + 2 * C * K * D + H * D * C + ((H + 2 * K) * D if c.qkv_bias else 0) + (C if c.bias else 0)
    mlp = (3 if c.mlp == "swiglu" else 2) * C * F + ((F * (2 if c.mlp == "swiglu" else 1) + C) if c.bias else 0)
    total = V * C + L * (attn + mlp + 2 * norm) + norm
    total += c.block_size * C if c.position == "learned" else 0
    total += 0 if c.tie_embeddings else V * C
    return total


@FAMILIES
def test_parameter_count_formula(config):
    assert model_for(config).num_params() == expected_params(config)


def test_nanogpt_cpu_configuration_has_nanogpts_parameter_count():
    from llmlab.model.config import MODEL_PRESETS
    config = dataclasses.replace(MODEL_PRESETS["nanogpt-cpu"], vocab_size=65)
    model = Transformer(config)
    # nanoGPT reports 0.80M: it excludes position embeddings (64 x 128 = 8,192) from its count.
    assert model.num_params() - 64 * 128 == pytest.approx(0.80e6, rel=0.01)
    assert model.flops_per_token() > 6 * model.num_params(non_embedding=True)


@FAMILIES
def test_tiny_model_overfits_one_batch(config):
    model = model_for(config).train()
    x = torch.randint(0, 50, (4, 32))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05


def test_hidden_states_on_request_and_ignore_index():
    model = model_for(LLAMA)
    x = torch.randint(0, 50, (1, 10))
    out = model(x, return_hidden_states=True)
    assert len(out["hidden_states"]) == LLAMA.n_layer + 1
    targets = torch.full((1, 10), -100)
    targets[0, 0] = 3
    lone = model(x, targets)["loss"]
    expected = torch.nn.functional.cross_entropy(out["logits"][0, :1], torch.tensor([3]))
    torch.testing.assert_close(lone, expected)
