"""The optimizer on CPU takes the multi-tensor (foreach) AdamW, not torch's per-tensor default loop."""

from __future__ import annotations

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.train.optim import make_optimizer


def test_cpu_adamw_is_foreach_and_steps_like_the_loop():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16))
    reference = Transformer(model.config)
    reference.load_state_dict(model.state_dict())
    opt = make_optimizer(model, 1e-2, 0.1, (0.9, 0.99), torch.device("cpu"))
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    loop = torch.optim.AdamW(make_optimizer(reference, 1e-2, 0.1, (0.9, 0.99), torch.device("cpu")).param_groups,
                             lr=1e-2, betas=(0.9, 0.99), foreach=False)
    ids = torch.randint(32, (2, 16))
    for m, o in ((model, opt), (reference, loop)):
        for _ in range(3):
            m(ids[:, :-1], targets=ids[:, 1:])["loss"].backward()
            o.step()
            o.zero_grad()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)   # the same update, only batched
