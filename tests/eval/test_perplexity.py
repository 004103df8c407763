"""Perplexity over sliding windows, and KL divergence / top-1 agreement against a reference,
each checked against a by-hand computation, token by token, on tiny random Transformers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.eval import ReferenceLogprobs, compare, perplexity, reference_logprobs, windows
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

VOCAB, BLOCK = 23, 16


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():   # unit-variance activations: predictions that depend clearly on the context
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def perturbed(model: Transformer, scale: float = 0.1, seed: int = 1) -> Transformer:
    """A copy with noise on every weight: a stand-in for a quantized model."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())
    return other


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return torch.randint(0, VOCAB, (50,), generator=torch.Generator().manual_seed(3)).tolist()


def context_start(t: int, ctx: int, stride: int) -> int:
    """Where the context of target ids[t] starts: the first window start k * stride that still
    covers t (window k predicts ids[k*stride + 1 .. k*stride + ctx])."""
    return max(0, math.ceil((t - ctx) / stride)) * stride


def next_logprobs(model: Transformer, context: list[int]) -> list[float]:
    """log p(. | context) by a fresh forward pass over just that context, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([context]))["logits"][0, -1].double()
    return torch.log_softmax(logits, -1).tolist()


def by_hand(model, ids, ctx, stride, reference=None) -> dict:
    nlls, klds, agree = [], [], 0
    for t in range(1, len(ids)):
        context = ids[context_start(t, ctx, stride):t]
        assert 1 <= len(context) <= ctx
        lq = next_logprobs(model, context)
        nlls.append(-lq[ids[t]])
        if reference is not None:
            lp = next_logprobs(reference, context)
            klds.append(sum(math.exp(a) * (a - b) for a, b in zip(lp, lq)))
            agree += max(range(VOCAB), key=lp.__getitem__) == max(range(VOCAB), key=lq.__getitem__)
    return {"perplexity": math.exp(sum(nlls) / len(nlls)), "tokens": len(nlls), "nll_sum": sum(nlls),
            "klds": klds, "top1": agree / len(nlls)}


@pytest.mark.parametrize("ctx, stride", [(16, 16), (16, 5), (7, 7), (9, 1)])
def test_perplexity_is_exp_mean_nll_token_by_token(ids, ctx, stride):
    model = tiny_model()
    hand = by_hand(model, ids, ctx, stride)
    got = perplexity(model, ids, ctx, stride, text_bytes=100)
    assert got["tokens"] == hand["tokens"] == len(ids) - 1
    assert got["perplexity"] == pytest.approx(hand["perplexity"], rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(hand["nll_sum"] / math.log(2) / 100, rel=1e-5)


def test_a_smaller_stride_gives_more_context_and_other_numbers(ids):
    model = tiny_model()
    assert perplexity(model, ids, 16, 4)["perplexity"] != pytest.approx(perplexity(model, ids, 16, 16)["perplexity"])


def test_windows_score_every_token_once():
    for n, ctx, stride in [(2, 1, 1), (10, 3, 2), (50, 16, 16), (50, 16, 5), (17, 16, 16), (18, 16, 16)]:
        scored = []
        for start, end, first_new in windows(n, ctx, stride):
            assert end - start - 1 <= ctx and first_new < end - start - 1
            scored += range(start + first_new, end - 1)
        assert scored == list(range(n - 1)), (n, ctx, stride)


@pytest.mark.parametrize("bad", [dict(ctx=0, stride=None), dict(ctx=8, stride=9), dict(ctx=8, stride=0)])
def test_bad_windows_are_refused(bad):
    with pytest.raises(LLMLabError):
        list(windows(20, **bad))
    with pytest.raises(LLMLabError, match="at least 2"):
        list(windows(1, 8, 8))


def test_kld_of_a_model_against_itself_is_zero(ids, tmp_path):
    model = tiny_model()
    live = compare(model, ids, 16, 5, model)
    assert live["mean_kld"] == pytest.approx(0, abs=1e-7) and live["kld_max"] == pytest.approx(0, abs=1e-6)
    assert live["top1_agreement"] == 1.0 and live["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)
    stored = compare(model, ids, 16, 5, reference_logprobs(model, ids, 16, 5))
    assert stored["top1_agreement"] == 1.0                    # the reference's argmax is kept in float32
    assert 0 <= stored["kld_max"] < 1e-4                       # only float16 storage rounding is left
    assert stored["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)  # the reference's NLL is summed in float32


@pytest.mark.parametrize("ctx, stride", [(16, 16), (16, 6)])
def test_kld_against_a_perturbed_copy_matches_a_by_hand_computation(ids, ctx, stride):
    reference, model = tiny_model(), perturbed(tiny_model())
    hand = by_hand(model, ids, ctx, stride, reference=reference)
    ref_hand = by_hand(reference, ids, ctx, stride)
    got = compare(model, ids, ctx, stride, reference)
    assert got["mean_kld"] > 1e-3
    assert got["mean_kld"] == pytest.approx(np.mean(hand["klds"]), rel=1e-4)
    assert got["kld_max"] == pytest.approx(max(hand["klds"]), rel=1e-4)
    assert got["kld_p99"] == pytest.approx(np.percentile(hand["klds"], 99), rel=1e-4)
    assert got["top1_agreement"] == pytest.approx(hand["top1"]) and 0 < got["top1_agreement"] < 1
    assert got["perplexity"] == pytest.approx(hand["perplexity"], rel=1e-5)
    assert got["reference_perplexity"] == pytest.approx(ref_hand["perplexity"], rel=1e-5)
    assert got["ppl_ratio"] == pytest.approx(hand["perplexity"] / ref_hand["perplexity"], rel=1e-5)
    assert got["delta_ppl_percent"] == pytest.approx((got["ppl_ratio"] - 1) * 100)
    stored = compare(model, ids, ctx, stride, reference_logprobs(reference, ids, ctx, stride))
    assert stored["mean_kld"] == pytest.approx(got["mean_kld"], rel=1e-2)   # float16 log-probs: close, not equal
    assert stored["top1_agreement"] == got["top1_agreement"]


def test_a_reference_in_a_file_gives_the_numbers_kept_in_memory(ids, tmp_path):
    reference, model = tiny_model(), perturbed(tiny_model())
    in_memory = reference_logprobs(reference, ids, 16, 6)
    path = tmp_path / "ref.npy"
    on_disk = reference_logprobs(reference, ids, 16, 6, path=path, name="tiny")
    assert isinstance(on_disk.logprobs, np.memmap) and path.stat().st_size > (len(ids) - 1) * VOCAB * 2
    reopened = ReferenceLogprobs.open(path)
    assert reopened.model == "tiny" and reopened.tokens == len(ids) - 1
    np.testing.assert_array_equal(np.asarray(reopened.logprobs), in_memory.logprobs)
    expected = compare(model, ids, 16, 6, in_memory)
    assert compare(model, ids, 16, 6, on_disk) == expected
    assert compare(model, ids, 16, 6, reopened) == expected


def test_a_stored_reference_is_only_used_on_its_own_ids_and_windows(ids):
    model = tiny_model()
    reference = reference_logprobs(model, ids, 16, 6)
    with pytest.raises(LLMLabError, match="ctx 16, stride 6"):
        compare(model, ids, 16, 16, reference)
    with pytest.raises(LLMLabError, match="other token ids"):
        compare(model, ids[::-1], 16, 6, reference)


def test_a_reference_with_another_vocabulary_is_refused(ids):
    other = Transformer(ModelConfig(vocab_size=VOCAB + 5, block_size=BLOCK, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(LLMLabError, match="same vocabulary"):
        compare(tiny_model(), ids, 16, 16, other)


def test_grad_mode_is_left_as_it_was(ids):
    model = tiny_model()
    compare(model, ids, 8, 3, perturbed(model))
    assert torch.is_grad_enabled()
