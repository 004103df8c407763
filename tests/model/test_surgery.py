"""replace_linears: selection by name patterns, and what happens to a tied output head."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.surgery import replace_linears, select_linears
from llmlab.model.transformer import Transformer

CONFIG = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)


class SameWeights(nn.Module):
    """Another forward over the same Parameter (as the compiled decode path's MatvecLinear)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Copied(nn.Module):
    """Weights stored anew (as a quantized or adapted layer would)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())

    def forward(self, x):
        return F.linear(x, self.weight)


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CONFIG).eval()


def test_patterns_select_by_suffix_glob_and_all_linear():
    m = model()
    assert select_linears(m, ["attn.wq", "attn.wv"]) == ["blocks.0.attn.wq", "blocks.0.attn.wv",
                                                        "blocks.1.attn.wq", "blocks.1.attn.wv"]
    assert select_linears(m, "blocks.1.mlp.*") == ["blocks.1.mlp.w_up", "blocks.1.mlp.w_gate", "blocks.1.mlp.w_down"]
    everything = select_linears(m, "all-linear")
    assert len(everything) == 2 * 7 and "lm_head" not in everything
    with pytest.raises(LLMLabError, match="matches no linear layer.*attn.wq"):
        select_linears(m, "attn.q_proj")


def test_a_replacement_over_the_same_weights_keeps_the_tie_and_the_outputs():
    m = model()
    ids = torch.randint(0, 50, (2, 8))
    before = m(ids)["logits"]
    names = replace_linears(m, select_linears(m, "*"), lambda name, lin: SameWeights(lin))
    assert "lm_head" in names and m.config.tie_embeddings and m.lm_head.weight is m.tok_emb.weight
    torch.testing.assert_close(m(ids)["logits"], before)
    assert set(m.state_dict()) == set(model().state_dict())


def test_a_head_with_its_own_weights_unties_and_round_trips():
    m = model()
    ids = torch.randint(0, 50, (2, 8))
    replace_linears(m, ["lm_head"], lambda name, lin: Copied(lin))
    assert not m.config.tie_embeddings and m.lm_head.weight is not m.tok_emb.weight
    with torch.no_grad():
        m.lm_head.weight.mul_(2.0)   # now they really differ: both must be saved
    rebuilt = Transformer.from_state_dict(m.config, m.state_dict())
    torch.testing.assert_close(rebuilt(ids)["logits"], m(ids)["logits"])
