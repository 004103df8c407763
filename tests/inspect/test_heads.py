"""The head probes: their sequences, and a real induction head found in a model that learned to copy."""

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.inspect.heads import copy_loss, head_scores, plot_scores, probe_tokens, ranked, token_pool
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

VOCAB = 32
TOKENIZER = CharTokenizer([chr(ord("0") + i) for i in range(VOCAB)])
CONFIG = ModelConfig(vocab_size=VOCAB, block_size=30, n_layer=2, n_head=2, n_embd=32, position="rope",
                     norm="layernorm", mlp="gelu")


def test_probe_sequences_repeat_once_without_repeats_inside():
    ids = probe_tokens(list(range(5, 45)), length=12, batch=3, seed=0, bos=1)
    assert ids.shape == (3, 25) and torch.all(ids[:, 0] == 1)
    assert torch.equal(ids[:, 1:13], ids[:, 13:])
    assert all(len(set(row[1:13].tolist())) == 12 for row in ids)     # one right answer per copy
    assert torch.equal(ids, probe_tokens(list(range(5, 45)), 12, 3, 0, 1))   # seeded


def test_token_pool_leaves_out_special_tokens():
    class WithSpecials(CharTokenizer):
        bos_id, eos_id, special_tokens = 0, 1, {"<pad>": 2}
    assert token_pool(WithSpecials(list("abcdef")), 6) == [3, 4, 5]


def train_to_copy(steps: int) -> Transformer:
    """Random tokens followed by themselves, the period changing every step (so no head can copy by a
    fixed offset): the loss on the second copy can only fall by matching content, which is what an
    induction head does (Olsson et al. 2022 trained small attention models on the same task)."""
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        n = int(torch.randint(6, 15, (1,), generator=generator))
        first = torch.stack([torch.randperm(VOCAB, generator=generator)[:n] for _ in range(64)])
        x = torch.cat([first, first], dim=1)
        targets = x[:, 1:].clone()
        targets[:, :n - 1] = -100                        # the first copy is unpredictable: not scored
        for group in optimizer.param_groups:
            group["lr"] = 5e-3 * min(1.0, (step + 1) / 50)
        loss = model(x[:, :-1], targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_induction_head_is_found_after_training_and_not_at_init(tmp_path):
    torch.manual_seed(0)
    at_init = head_scores(Transformer(CONFIG).eval(), TOKENIZER, "induction", length=14)
    assert float(at_init.max()) < 0.15                          # attention spread over ~20 keys
    model = train_to_copy(steps=500)
    scores = head_scores(model, TOKENIZER, "induction", length=14)
    best = ranked(scores)[0]
    assert best["score"] > 0.6 and best["layer"] == 1           # it needs a layer before it to compose with
    previous = head_scores(model, TOKENIZER, "previous-token", length=14)
    assert float(previous[0].max()) > 0.5                       # ... that layer's previous-token head
    assert plot_scores(scores, "induction", tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"
    # the causal check: removing that head breaks copying, removing the other head of its layer far less
    other = 1 - best["index"]
    intact = copy_loss(model, TOKENIZER, length=14)
    without_best = copy_loss(model, TOKENIZER, {1: [best["index"]]}, length=14)
    without_other = copy_loss(model, TOKENIZER, {1: [other]}, length=14)
    assert intact < 0.5 and without_best > intact + 1.0 and without_best > 2 * without_other
    # and removing the previous-token head it composes with breaks copying too (Elhage et al. 2021)
    previous_head = int(previous[0].argmax())
    assert copy_loss(model, TOKENIZER, {0: [previous_head]}, length=14) > intact + 1.0


def test_bad_probe_is_a_clear_error():
    model = Transformer(CONFIG).eval()
    with pytest.raises(LLMLabError, match="induction, previous-token"):
        head_scores(model, TOKENIZER, "copying")
    with pytest.raises(LLMLabError, match="block_size"):
        head_scores(Transformer(CONFIG.replace(block_size=3)).eval(), TOKENIZER)
