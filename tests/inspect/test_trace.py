"""trace.py: recording through the model's seams, leaving the model as it was; head ablation."""

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.inspect.trace import ablated_heads, parse_heads, recording_inputs, trace
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

GQA = ModelConfig(vocab_size=40, block_size=24, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=False)
GPT2 = ModelConfig(vocab_size=40, block_size=24, n_layer=3, n_head=4, n_embd=32, position="learned",
                   norm="layernorm", mlp="gelu", bias=True)
FAMILIES = pytest.mark.parametrize("config", [GQA, GPT2], ids=["llama-gqa", "gpt2"])


def model_for(config, seed=0):
    torch.manual_seed(seed)
    return Transformer(config).eval()


def no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@FAMILIES
def test_hooks_off_leave_the_model_exactly_as_it_was(config):
    model = model_for(config)
    ids = torch.randint(0, 40, (2, 17))
    plain = model(ids)["logits"]
    trace(model, ids[0].tolist(), attention_layers=[0, 2], mlp=True)
    with ablated_heads(model, {1: [0, 3]}, "mean"):
        pass
    with pytest.raises(RuntimeError):
        with recording_inputs(model, ["blocks.0.attn.wo"]):
            raise RuntimeError("a probe failing half way still removes its hooks")
    assert no_hooks(model)
    assert torch.equal(model(ids)["logits"], plain)          # bit for bit: nothing left behind


@FAMILIES
def test_attention_weights_are_causal_rows_of_probabilities(config):
    model = model_for(config)
    tr = trace(model, torch.randint(0, 40, (19,)).tolist(), attention_layers=[-1, 0])
    assert sorted(tr.attentions) == [0, 2]                    # only the layers asked for, -1 counted from the end
    for weights in tr.attentions.values():
        assert weights.shape == (4, 19, 19)
        assert torch.all(weights.triu(diagonal=1) == 0)       # no query reads a later key
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 19))
        assert torch.all(weights >= 0)


def test_chosen_layers_match_all_layers_and_the_output_is_unchanged():
    model = model_for(GQA)
    ids = torch.randint(0, 40, (1, 12))
    everything = model(ids, return_attention=True)
    some = model(ids, return_attention=[1])
    assert some["attentions"][0] is None and some["attentions"][2] is None
    torch.testing.assert_close(some["attentions"][1], everything["attentions"][1])
    torch.testing.assert_close(some["logits"], model(ids)["logits"], atol=1e-5, rtol=1e-5)


@FAMILIES
def test_residual_stream_and_mlp_hidden_are_what_the_blocks_compute(config):
    model = model_for(config)
    ids = torch.randint(0, 40, (15,)).tolist()
    tr = trace(model, ids, mlp=True)
    assert tr.n_layer == 3 and len(tr.residual) == 4
    x = torch.tensor([ids])
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            h = tr.residual[i][None]
            mid = h + block.attn(block.attn_norm(h), (model.rope_cos[:15].view(1, 1, 15, -1),
                                                      model.rope_sin[:15].view(1, 1, 15, -1))
                                 if config.position == "rope" else None)[0]
            mlp_in = block.mlp_norm(mid)
            if block.mlp.swiglu:
                hidden = torch.nn.functional.silu(block.mlp.w_gate(mlp_in)) * block.mlp.w_up(mlp_in)
            else:
                hidden = torch.nn.functional.gelu(block.mlp.w_up(mlp_in), approximate="tanh")
            torch.testing.assert_close(tr.mlp_hidden[i], hidden[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(tr.residual[i + 1], (mid + block.mlp.w_down(hidden))[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tr.logits, model(x)["logits"][0], atol=1e-5, rtol=1e-5)


def test_bad_input_is_a_clear_error():
    model = model_for(GQA)
    with pytest.raises(LLMLabError, match="empty"):
        trace(model, [])
    with pytest.raises(LLMLabError, match="block_size 24"):
        trace(model, [1] * 25)
    with pytest.raises(LLMLabError, match="layers 0..2"):
        trace(model, [1, 2], attention_layers=[3])
    assert parse_heads("2.3, 0.1,-1.0", model) == {2: [3, 0], 0: [1]}
    for bad, message in (("2", "LAYER.HEAD"), ("1.4", "heads 0..3"), ("5.0", "layers 0..2")):
        with pytest.raises(LLMLabError, match=message):
            parse_heads(bad, model)
