"""KV-cached generation on small random models: cache == no cache, batch == alone, sampling rules."""

from __future__ import annotations

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import StreamState, decode_steps, fit_prompts
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import SamplingConfig, apply_penalties, filter_logits, sample_next
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

LLAMA = ModelConfig(vocab_size=64, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
GPT2 = ModelConfig(vocab_size=64, block_size=48, n_layer=2, n_head=4, n_embd=32, position="learned",
                   norm="layernorm", mlp="gelu", bias=True)
FAMILIES = pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0.0)


def model_for(config):
    torch.manual_seed(0)
    return Transformer(config).eval()


def greedy_without_cache(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))["logits"][0, -1].argmax()))
    return ids[len(prompt):]


@FAMILIES
def test_cached_decoding_equals_full_recomputation(config):
    model = model_for(config)
    prompt = [5, 9, 3, 17, 42, 8, 1]
    cached = [int(s.ids[0]) for s in decode_steps(model, [prompt], GREEDY)]
    assert cached == greedy_without_cache(model, prompt, 12)


def test_cache_logits_match_step_by_step():
    model = model_for(LLAMA)
    ids = torch.randint(0, 64, (1, 20))
    full = model(ids)["logits"]
    cache = KVCache(2, 1, 2, 20, 8)
    out = []
    for t in range(20):
        positions = cache.begin(1)
        out.append(model(ids[:, t:t + 1], positions=positions, kv_cache=cache, attn_mask=cache.attention_mask())["logits"])
        cache.advance(1)
    torch.testing.assert_close(torch.cat(out, dim=1), full, atol=1e-5, rtol=1e-5)


def chunked_logits(model, rows, chunk, cache_mask=True):
    """Prefill each row's first tokens (right-padded), then feed `chunk` more tokens per row at once,
    with the cache's mask, or (cache_mask=False, one row) none: the model's own causal default."""
    cache = KVCache(model.config.n_layer, len(rows), model.config.n_kv_head, 40, model.config.head_dim)
    L = max(len(r) for r in rows)
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
    cache.begin(L)
    model(ids, positions=cache.positions, kv_cache=cache, attn_mask=cache.attention_mask())
    cache.advance(lengths)
    positions = cache.begin(chunk.size(1))
    mask = cache.attention_mask() if cache_mask else None
    return model(chunk, positions=positions, kv_cache=cache, attn_mask=mask)["logits"]


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_new_tokens_against_a_filled_cache_see_all_of_it(attention):
    # T = 4 new queries against S = 9 keys: SDPA's is_causal would align its triangle to the top
    # left and hide most of the cache from them. Both attention paths must give the logits of a
    # full recomputation, for one row and for a batch whose rows hold different lengths.
    model = model_for(LLAMA.replace(attention=attention))
    chunk = torch.tensor([[7, 3, 9, 11], [4, 4, 2, 8]])
    rows = [[5, 9, 3, 17, 42], [2, 7]]
    got = chunked_logits(model, rows, chunk)
    for b, row in enumerate(rows):
        full = model(torch.tensor([row + chunk[b].tolist()]))["logits"][0, -4:]
        torch.testing.assert_close(got[b], full, atol=1e-5, rtol=1e-5)
    for cache_mask in (True, False):
        one = chunked_logits(model, rows[:1], chunk[:1], cache_mask)
        torch.testing.assert_close(one[0], model(torch.tensor([rows[0] + chunk[0].tolist()]))["logits"][0, -4:],
                                   atol=1e-5, rtol=1e-5)


def test_sdpa_equals_explicit_attention_with_a_filled_cache():
    sdpa, explicit = model_for(LLAMA), model_for(LLAMA.replace(attention="explicit"))
    chunk, rows = torch.tensor([[7, 3, 9], [1, 2, 3]]), [[5, 9, 3, 17, 42, 8], [6]]
    torch.testing.assert_close(chunked_logits(sdpa, rows, chunk), chunked_logits(explicit, rows, chunk),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_logits(sdpa, rows[:1], chunk[:1], cache_mask=False),
                               chunked_logits(explicit, rows[:1], chunk[:1], cache_mask=False), atol=1e-5, rtol=1e-5)


@FAMILIES
def test_batched_equals_unbatched(config):
    model = model_for(config)
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7], [1, 8, 2, 8, 1]]
    alone = [[int(s.ids[0]) for s in decode_steps(model, [p], GREEDY)] for p in prompts]
    batched = [[] for _ in prompts]
    for step in decode_steps(model, prompts, GREEDY):
        for b, t in enumerate(step.ids.tolist()):
            batched[b].append(t)
    assert batched == alone


def test_shift_policy_generates_past_the_context():
    model = model_for(LLAMA)
    steps = list(decode_steps(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=100, temperature=0), overflow="shift"))
    assert len(steps) == 100
    with pytest.raises(LLMLabError, match="exceeds the model's context"):
        list(decode_steps(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=100)))
    assert fit_prompts([list(range(40))], 20, 48, "truncate") == [list(range(12, 40))]


def test_filters_and_penalties():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    probs = logits.softmax(-1)[0]                       # 0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False, False]] and probs[:2].sum() >= 0.8
    kept = ~torch.isinf(filter_logits(logits, min_p=0.1))
    assert kept.tolist() == [[True, True, True, False, False]]  # 0.09 >= 0.1 * 0.64
    history = torch.tensor([[0, 0, 3]])
    cfg = SamplingConfig(repetition_penalty=2.0, frequency_penalty=0.5)
    out = apply_penalties(logits, history, cfg)
    assert out[0, 0] == pytest.approx(4.0 / 2 - 1.0) and out[0, 3] == pytest.approx(1.0 / 2 - 0.5)
    assert out[0, 1] == 3.0
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draws1 = [int(sample_next(logits, SamplingConfig(temperature=1.0), None, g1)[0]) for _ in range(20)]
    draws2 = [int(sample_next(logits, SamplingConfig(temperature=1.0), None, g2)[0]) for _ in range(20)]
    assert draws1 == draws2 and len(set(draws1)) > 1


def test_stream_never_splits_characters_and_hides_stop_strings():
    state = StreamState(stop=["\nUser:"])
    shown = []
    for piece in [b"caf", b"\xc3", b"\xa9 \xf0\x9f", b"\x98\x80 ok", b"\nUs", b"er: more"]:
        delta, hit = state.feed(piece)
        shown.append(delta)
        assert "\ufffd" not in delta
        if hit:
            break
    assert "".join(shown) == "café 😀 ok" and hit
