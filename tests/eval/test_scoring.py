"""The scorer against sums computed by hand: a continuation's log-likelihood is the sum of its
tokens' log-probabilities given everything before them, whether requests are scored alone, packed
as a tree that shares the context, batched with others, or truncated to the model's context."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.eval.scoring import Request, encode_pair, loglikelihoods, rolling_loglikelihoods
from llmlab.model.config import ModelConfig
from llmlab.tokenizer.bpe import train_bpe

TEXT = ("Question: Which gas do plants take in? Answer: carbon dioxide. The cat sat on the mat. "
        "A man is sitting on a roof. He starts pulling up roofing. Paris is the capital of France. ") * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXT, 300)


@pytest.fixture(scope="module")
def model(tokenizer, varied_model):
    return varied_model(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=4,
                                    n_kv_head=2, n_embd=32), seed=1)


def by_hand(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """Sum of log p(token) over the last n_cont tokens of ids, from one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))["logits"][0].float()
    lp = F.log_softmax(logits, dim=-1)[-n_cont:]
    target = torch.tensor(ids[-n_cont:])
    return float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


REQUESTS = [Request("Question: Which gas do plants take in? Answer:", c)
            for c in (" carbon dioxide", " the mat", " roofing", " Paris is the capital")] + [
            Request("A man is sitting on a roof. He", " starts pulling up roofing."),
            Request("The cat sat on the ", "mat."),       # a trailing space moves to the continuation
            Request("", "The cat sat on the mat.")]       # empty context: the end-of-text token


def test_loglikelihood_is_the_sum_over_the_continuations_tokens(model, tokenizer):
    got = loglikelihoods(model, tokenizer, REQUESTS)
    for request, result in zip(REQUESTS, got):
        ctx, cont = encode_pair(tokenizer, request.context, request.continuation)
        want, greedy = by_hand(model, ctx + cont, len(cont))
        assert result.tokens == len(cont)
        assert result.logprob == pytest.approx(want, abs=1e-4)
        assert result.is_greedy == greedy


def test_tokenization_follows_lm_eval(tokenizer):
    ctx, cont = encode_pair(tokenizer, "The cat sat on the ", "mat.")
    assert ctx == tokenizer.encode("The cat sat on the")
    assert cont == tokenizer.encode("The cat sat on the mat.")[len(ctx):]
    assert encode_pair(tokenizer, "", "mat.") == ([tokenizer.eos_id], tokenizer.encode("mat."))


def test_batching_and_context_sharing_change_nothing(model, tokenizer):
    alone = [loglikelihoods(model, tokenizer, [r])[0] for r in REQUESTS]
    for max_batch_tokens in (16, 64, 4096):   # 16: one row per batch; 4096: everything in one batch
        batched = loglikelihoods(model, tokenizer, REQUESTS, max_batch_tokens=max_batch_tokens)
        for a, b in zip(alone, batched):
            assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
            assert (b.is_greedy, b.tokens) == (a.is_greedy, a.tokens)


def test_a_request_longer_than_the_context_keeps_its_last_tokens(model, tokenizer):
    long = Request(TEXT[:400], " The cat sat on the mat.")
    result = loglikelihoods(model, tokenizer, [long])[0]
    ctx, cont = encode_pair(tokenizer, long.context, long.continuation)
    kept = (ctx + cont)[-(model.config.block_size + 1):]
    want, _ = by_hand(model, kept, len(cont))
    assert result.logprob == pytest.approx(want, abs=1e-4)


def test_rolling_loglikelihood_scores_every_token_after_end_of_text(model, tokenizer):
    short, long = "The cat sat on the mat.", TEXT[:300]
    (lp_short, n_short), (lp_long, n_long) = rolling_loglikelihoods(model, tokenizer, [short, long])
    ids = [tokenizer.eos_id] + tokenizer.encode(short)
    assert n_short == len(ids) - 1
    assert lp_short == pytest.approx(by_hand(model, ids, len(ids) - 1)[0], abs=1e-4)
    ids = [tokenizer.eos_id] + tokenizer.encode(long)     # longer than the context: windows of block_size
    block, want = model.config.block_size, 0.0            # predictions, the last one with a full context too
    for first in range(1, len(ids), block):
        last = min(first + block, len(ids))
        window = ids[max(0, last - block - 1):last]
        want += by_hand(model, window, last - first)[0]
    assert n_long == len(ids) - 1 and lp_long == pytest.approx(want, abs=1e-3)


def test_an_empty_continuation_is_refused(model, tokenizer):
    with pytest.raises(LLMLabError, match="empty continuation"):
        loglikelihoods(model, tokenizer, [Request("The cat", "")])


def test_a_continuation_longer_than_the_context_scores_its_last_tokens(model, tokenizer):
    long = Request("Answer:", " " + TEXT[:600])
    ctx, cont = encode_pair(tokenizer, long.context, long.continuation)
    assert len(cont) > model.config.block_size
    result = loglikelihoods(model, tokenizer, [long])[0]
    kept = (ctx + cont)[-(model.config.block_size + 1):]
    want, _ = by_hand(model, kept, len(kept) - 1)
    assert result.tokens == model.config.block_size and result.logprob == pytest.approx(want, abs=1e-4)
