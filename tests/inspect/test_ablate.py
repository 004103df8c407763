"""Head ablation changes exactly what it should, and nothing when it ablates nothing."""

import torch

from llmlab.inspect.ablate import ablation_effect, next_token_logprobs, scan_heads
from llmlab.inspect.heads import ranked
from llmlab.inspect.trace import ablated_heads, recording_inputs
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

CONFIG = ModelConfig(vocab_size=26, block_size=24, n_layer=3, n_head=4, n_kv_head=2, n_embd=32)
TOKENIZER = CharTokenizer([chr(ord("a") + i) for i in range(26)])


def model_and_ids(seed=0):
    torch.manual_seed(seed)
    model = Transformer(CONFIG).eval()
    with torch.no_grad():                      # weights large enough that every head matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model, torch.randint(0, 26, (1, 14))


def run(model, ids):
    names = [f"blocks.{i}.attn.wo" for i in range(CONFIG.n_layer)]
    outputs = {}
    handles = [model.blocks[i].attn.wo.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
               for i in range(CONFIG.n_layer)]
    try:
        with torch.no_grad(), recording_inputs(model, names) as inputs:
            out = model(ids, return_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, {int(k.split(".")[1]): v for k, v in inputs.items()}, outputs


def test_ablating_nothing_is_the_plain_forward():
    model, ids = model_and_ids()
    plain = model(ids)["logits"]
    with ablated_heads(model, {}):
        assert torch.equal(model(ids)["logits"], plain)
    effect = ablation_effect(model, TOKENIZER, ids[0].tolist(), {})
    assert effect["kl_nats"] == 0 and effect["top_token"]["prob_before"] == effect["top_token"]["prob_after"]


def test_zero_ablation_removes_one_head_and_only_it():
    model, ids = model_and_ids()
    plain, plain_in, _ = run(model, ids)
    with ablated_heads(model, {1: [2]}):
        ablated, ablated_in, ablated_out = run(model, ids)
    D = CONFIG.head_dim
    # layers before the ablated one see exactly the same residual stream
    for i in range(2):
        assert torch.equal(ablated["hidden_states"][i], plain["hidden_states"][i])
    # at layer 1, the output projection reads the three other heads unchanged and head 2 as zeros
    # (recorded after the ablation hook ran, so this is what wo really multiplied) ...
    y = plain_in[1].clone()
    y[..., 2 * D:3 * D] = 0
    torch.testing.assert_close(ablated_in[1], y)
    # ... so the layer's attention output is the plain one minus head 2's own contribution
    wo = model.blocks[1].attn.wo.weight
    contribution = plain_in[1][..., 2 * D:3 * D] @ wo[:, 2 * D:3 * D].T
    torch.testing.assert_close(ablated_out[1], model.blocks[1].attn.wo(plain_in[1]) - contribution,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ablated["logits"], plain["logits"])     # and the change reaches the output


def test_mean_ablation_keeps_the_head_mean_over_positions():
    model, ids = model_and_ids()
    _, plain_in, _ = run(model, ids)
    with ablated_heads(model, {0: [1]}, "mean"):
        _, ablated_in, _ = run(model, ids)
    D = CONFIG.head_dim
    head = ablated_in[0][..., D:2 * D]
    torch.testing.assert_close(head, plain_in[0][..., D:2 * D].mean(dim=1, keepdim=True).expand_as(head))
    torch.testing.assert_close(ablated_in[0][..., 2 * D:], plain_in[0][..., 2 * D:])


def test_scan_ranks_heads_by_the_kl_their_ablation_causes():
    model, ids = model_and_ids()
    prompt = ids[0].tolist()
    scores = scan_heads(model, prompt)
    assert scores.shape == (3, 4) and torch.all(scores >= 0)
    best = ranked(scores)[0]
    effect = ablation_effect(model, TOKENIZER, prompt, {best["layer"]: [best["index"]]})
    assert abs(effect["kl_nats"] - best["score"]) < 1e-4
    assert effect["kl_nats"] > 0
    before = next_token_logprobs(model, prompt)
    assert abs(effect["top_token"]["prob_before"] - float(before.max().exp())) < 1e-6
