"""Masks built from positions, attention weights on request, and the FLOP count."""

from __future__ import annotations

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.masks import causal_mask, document_mask
from llmlab.model.transformer import Transformer

CONFIG = ModelConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=16)


def model(config: ModelConfig = CONFIG) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config).eval()


def test_causal_mask_is_aligned_to_each_rows_length():
    mask = causal_mask(torch.tensor([0, 3]), new_tokens=2, key_len=5)[:, 0]
    assert mask[0].tolist() == [[True, False, False, False, False], [True, True, False, False, False]]
    assert mask[1].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_a_packed_sequence_computes_each_document_as_if_alone():
    m = model()
    docs = [[5, 9, 3, 17], [2, 7, 7], [11, 4, 30, 1, 8]]
    packed = torch.tensor([sum(docs, [])])
    doc_ids = torch.tensor([[i for i, d in enumerate(docs) for _ in d]])
    positions = torch.tensor([[p for d in docs for p in range(len(d))]])
    out = m(packed, positions=positions, attn_mask=document_mask(doc_ids))["logits"][0]
    start = 0
    for d in docs:
        alone = m(torch.tensor([d]))["logits"][0]
        torch.testing.assert_close(out[start:start + len(d)], alone, atol=1e-5, rtol=1e-5)
        start += len(d)


def test_attention_weights_on_request():
    m = model()
    ids = torch.randint(0, 40, (2, 6))
    plain = m(ids)["logits"]
    out = m(ids, return_attention=True)
    torch.testing.assert_close(out["logits"], plain, atol=1e-5, rtol=1e-5)   # same result, explicit path
    weights = out["attentions"]
    assert len(weights) == 2 and weights[0].shape == (2, 2, 6, 6)
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(2, 2, 6))
    assert torch.all(weights[0].triu(diagonal=1) == 0)                         # nothing from the future


def test_flops_count_the_output_head_once():
    tied, untied = model(), model(CONFIG.replace(tie_embeddings=False))
    head = CONFIG.vocab_size * CONFIG.n_embd
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True) + head
    assert untied.flops_per_token(8) == tied.flops_per_token(8)                 # the same matmuls
    attention = 12 * CONFIG.n_layer * 8 * CONFIG.n_head * CONFIG.head_dim
    assert tied.flops_per_token(8) == 6 * (tied.num_params(non_embedding=True) + head) + attention
