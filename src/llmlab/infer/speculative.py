"""Speculative decoding: guess k tokens cheaply, check all k in one pass of the big model.

Leviathan et al. 2023 (arXiv:2211.17192) and Chen et al. 2023 (arXiv:2302.01318). One round:

    1. draft      a cheap drafter proposes d_1 .. d_k after the context x
    2. verify     ONE target forward pass over [x_last, d_1, .., d_k] (k + 1 tokens, through the KV
                  cache) gives the target's distributions p_1 .. p_{k+1} at every drafted position
    3. accept     the longest prefix of drafts the rule below keeps, then one more token: a
                  correction where a draft was rejected, or a bonus from p_{k+1} if all k were kept
    4. roll back  the target's cache (and the draft model's) to the accepted length: setting its
                  lengths back is enough, the stale slots are overwritten before any query sees them

The rule (Leviathan et al. sec. 2.3): keep d_i ~ q_i with probability min(1, p_i(d_i) / q_i(d_i));
on the first rejection sample from normalize(max(0, p_i - q_i)) and stop. Every emitted token then
has exactly the target's distribution p, whatever q is: a bad drafter costs speed, never quality.
p and q are the distributions after penalties, temperature, top-k/top-p/min-p (llmlab.infer.sampling).
Greedy (temperature 0) is the special case p = one-hot(argmax): keep d_i iff it is the target's
argmax, so the output is token-identical to plain greedy decoding.

Two drafters:
    prompt-lookup  (Saxena 2023, "prompt lookup decoding") no second model: find the latest earlier
                   occurrence of the context's last n tokens (n = ngram .. 1) and propose the k tokens
                   that followed it. Free, and strong when the answer copies from the prompt (RAG,
                   code editing, summaries). Its q is one-hot, so it is accepted with probability p(d).
    draft          any model llmlab loads with the target's vocabulary, e.g. a quantized copy of it,
                   run k times one token at a time with its own KV cache.

Arithmetic. If each draft is accepted with probability a (independently), one verification pass
yields on average (1 - a^(k+1)) / (1 - a) tokens (Leviathan et al. eq. 1): between 1 (a = 0, only
the correction) and k + 1 (a = 1). `expected_tokens_per_pass` computes it. With a draft model whose
step costs c target steps, the wall-clock gain is that number divided by (1 + c k).

Why verifying k tokens costs about one decode step: a decode step on a CPU is memory-bound, it
streams every weight once (SmolLM2-135M: 540 MB in float32) to do 2 FLOPs per weight per token.
A (k+1)-token pass streams the same weights once and does (k+1)x the FLOPs on them, which is still
far below the FLOPs the cores can do per byte read, so in the bandwidth limit it takes about as long
as one token until k + 1 approaches that ratio (tens of tokens on a CPU). What grows is attention
over the cache for k + 1 queries and the 49,152-wide output head on k + 1 rows. In eager PyTorch
the library's few-row GEMMs stream weights less well than its one-row path: a rough check on a
shared AMD EPYC (AVX2, 1 thread, 500-token cache) put a 6-token pass at ~1.5-1.7x a one-token step.
A round that drafts and is rejected therefore costs more than a plain step; speculation pays when
the tokens per pass exceed that ratio (benchmarks/speculative.py measures it).

Scope: one sequence (batch 1); `Engine.generate_batch` keeps plain batched decoding. Verification
and the draft model's steps run eagerly; with `--compile`, only the target's plain one-token steps
(rounds with nothing drafted) use the compiled graph. Greedy equality holds up to float rounding:
a multi-token pass sums in a different order than a one-token step, so an exact tie between two
logits could in principle break differently (tested identical on SmolLM2 in float32).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import Step, Timings, cache_length, fit_prompts, forward_step
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import RowSampling, SamplingConfig, apply_penalties, filter_logits

METHODS = ("prompt-lookup", "draft")


@dataclass
class SpeculativeConfig:
    method: str = "prompt-lookup"           # "prompt-lookup" or "draft"
    num_draft: int = 5                      # k: tokens drafted per round
    ngram: int = 3                          # prompt-lookup: longest n-gram matched
    draft: str | None = None                # draft model: any spec Engine.load takes
    draft_dtype: str | None = None          # its dtype (None: the target's)
    draft_native_gguf: bool = False         # a GGUF draft's own int8/int4 blocks

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LLMLabError(f"speculative method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.num_draft < 1:
            raise LLMLabError(f"num_draft (--num-draft) {self.num_draft}: draft at least 1 token per round")
        if self.ngram < 1:
            raise LLMLabError(f"ngram (--ngram) {self.ngram}: match n-grams of at least 1 token")


@dataclass
class SpeculativeStats:
    """What speculation did in one generation. target_passes counts every target forward pass, the
    prefill included (plain decoding makes one per token); tokens_per_pass is per pass after the
    prefill, (tokens - 1) / (target_passes - 1), the figure eq. 1 predicts (plain decoding: 1).
    tokens: tokens yielded, a final stop token included. draft_s: time spent drafting, the draft
    model's prefill included (also inside the timings)."""

    method: str = ""
    drafted: int = 0
    accepted: int = 0
    target_passes: int = 0
    tokens: int = 0
    draft_s: float = 0.0

    def as_dict(self) -> dict:
        return {"method": self.method, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
                "target_passes": self.target_passes,
                "tokens_per_pass": (self.tokens - 1) / (self.target_passes - 1) if self.target_passes > 1 else 1.0,
                "draft_s": self.draft_s}


def expected_tokens_per_pass(acceptance: float, k: int) -> float:
    """Leviathan et al. eq. 1: tokens per verification pass, (1 - a^(k+1)) / (1 - a)."""
    return float(k + 1) if acceptance >= 1.0 else (1 - acceptance ** (k + 1)) / (1 - acceptance)


# ----------------------------------------------------------------------------- drafters


def lookup_draft(tokens: list[int], k: int, max_ngram: int) -> list[int]:
    """Prompt lookup: the (up to) k tokens that followed the latest earlier occurrence of the
    context's last n tokens, trying n = max_ngram first and shorter n-grams after; [] if none."""
    L = len(tokens)
    for n in range(min(max_ngram, L - 1), 0, -1):
        tail = tokens[L - n:]
        for start in range(L - n - 1, -1, -1):         # latest first; start + n < L leaves a follower
            if tokens[start] == tail[0] and tokens[start:start + n] == tail:
                return tokens[start + n:start + n + k]
    return []


def truncate_cache(cache: KVCache, length: int) -> None:
    """Forget everything past `length` tokens (batch 1). Slots past it hold stale keys, but the
    next pass writes its tokens there before its queries attend (llmlab.infer.kv_cache)."""
    cache.lengths.fill_(length)
    cache.filled = length


class DraftModel:
    """A draft model with its own KV cache, which holds a prefix of the context between rounds."""

    def __init__(self, model: torch.nn.Module, max_len: int, device: torch.device):
        c = model.config
        self.model, self.device = model.eval(), device
        self.cache = KVCache(c.n_layer, 1, c.n_kv_head, min(max_len, c.block_size), c.head_dim,
                             next(model.parameters()).dtype, device)

    def room(self, context_len: int) -> int:
        """Drafts it can make after context_len tokens: it feeds the context and d_1 .. d_{k-1}."""
        return self.cache.max_len - context_len + 1

    def prefill(self, tokens: list[int]) -> None:
        """Read the prompt beside the target's prefill (so the first round feeds one token)."""
        if len(tokens) <= self.cache.max_len:
            forward_step(self.model, torch.tensor([tokens], device=self.device), self.cache)

    def propose(self, tokens: list[int], k: int, distributions, generator) -> tuple[list[int], torch.Tensor]:
        """k drafted ids, each sampled from q (argmax when greedy), and q itself, (k, V)."""
        new = tokens[self.cache.filled:]              # what it has not seen: usually 1 or 2 tokens
        logits = forward_step(self.model, torch.tensor([new], device=self.device), self.cache)
        drafts, qs = [], []
        for i in range(k):
            q, _ = distributions(logits, [tokens + drafts])
            drafts.append(pick(q[0], generator))
            qs.append(q[0])
            if i < k - 1:
                logits = forward_step(self.model, torch.tensor([[drafts[-1]]], device=self.device), self.cache)
        return drafts, torch.stack(qs)

    def rollback(self, length: int) -> None:
        truncate_cache(self.cache, min(length, self.cache.filled))


def check_vocab(target: torch.nn.Module, draft: torch.nn.Module) -> None:
    t, d = target.config.vocab_size, draft.config.vocab_size
    if t != d:
        raise LLMLabError(f"the draft model's vocabulary has {d} tokens and the target's {t}: speculative decoding "
                          "compares token ids, so the draft must share the target's tokenizer (e.g. a quantized "
                          "copy of the target, or a smaller model of the same family)")


def load_draft_model(config: SpeculativeConfig, target: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The draft model named by config.draft, on the target's device, checked against its vocabulary."""
    from llmlab.core.device import pick_dtype
    from llmlab.model.source import load_model

    if not config.draft:
        raise LLMLabError("speculative method 'draft' needs a draft model: pass --draft MODEL "
                          "(e.g. a quantized copy of the target)")
    model, _, _ = load_model(config.draft, merge_adapters=True, native_gguf=config.draft_native_gguf)
    dtype = pick_dtype(config.draft_dtype) if config.draft_dtype else next(target.parameters()).dtype
    model = model.to(device=device, dtype=dtype).eval()
    check_vocab(target, model)
    return model


# ----------------------------------------------------------------------------- the rule


def pick(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Sample one id from a (V,) distribution (a one-hot one gives its id)."""
    return int(torch.multinomial(probs.float().cpu(), 1, generator=generator))


def accept_drafts(p: torch.Tensor, drafts: list[int], q: torch.Tensor | None, greedy: bool,
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """(how many drafts to keep, the token after them). p (k+1, V): the target's distributions at
    each drafted position and one past; q (k, V): the draft's, or None for a deterministic drafter
    (one-hot q, prompt lookup). greedy: p and q are argmaxes, keep d_i iff it is p_i's argmax."""
    if greedy:
        target = p.argmax(-1).tolist()
        n = next((i for i, d in enumerate(drafts) if d != target[i]), len(drafts))
        return n, target[n]
    p = p.float().cpu()
    for i, d in enumerate(drafts):
        q_d = 1.0 if q is None else float(q[i, d])
        # keep with probability min(1, p/q); u * q < p is the same test without dividing by q
        if float(torch.rand((), generator=generator)) * q_d < float(p[i, d]):
            continue
        q_i = torch.zeros_like(p[i]).index_fill_(0, torch.tensor([d]), 1.0) if q is None else q[i].float().cpu()
        residual = (p[i] - q_i).clamp(min=0)
        total = float(residual.sum())
        # total is 0 only when p == q, where rejection has probability 0: float dust, take p
        return i, pick(residual / total if total > 0 else p[i], generator)
    return len(drafts), pick(p[len(drafts)], generator)


# ----------------------------------------------------------------------------- the loop


@torch.no_grad()
def speculative_steps(model: torch.nn.Module, prompt: list[int], config: SamplingConfig, spec: SpeculativeConfig,
                      draft_model: torch.nn.Module | None = None, overflow: str = "error",
                      timings: Timings | None = None, stats: SpeculativeStats | None = None,
                      decode_fn=None) -> Iterator[Step]:
    """Yield the tokens of one sequence (Step with batch 1), as `decode_steps` does, up to
    config.max_new_tokens; the caller stops at EOS / stop strings (break) as with plain decoding.
    Tokens are yielded one at a time, so a caller that breaks never sees a token past its stop.

    Never drafts past max_new_tokens or the context: a round drafts at most
    min(k, tokens still wanted - 1, slots left), and rounds with 0 drafts are plain one-token steps
    (through decode_fn, the compiled step, when given). A seed makes the output reproducible; the
    sampled text differs from plain decoding's with the same seed (other random draws, same
    distribution). overflow: "error" or "truncate" as in decode_steps; "shift" is not supported.
    timings: the draft model's prefill counts in prefill_s, drafting in decode_s (and stats.draft_s)."""
    if overflow == "shift":
        raise LLMLabError("speculative decoding does not support the shift overflow policy: use error or truncate")
    if spec.method == "draft" and draft_model is None:
        raise LLMLabError("speculative method 'draft' needs a draft model (Engine.load(..., speculative="
                          "SpeculativeConfig('draft', draft=MODEL)) or --draft MODEL)")
    model.eval()
    c, device = model.config, next(model.parameters()).device
    timings = timings if timings is not None else Timings()
    stats = stats if stats is not None else SpeculativeStats(spec.method)
    max_new = config.max_new_tokens
    tokens = list(fit_prompts([prompt], max_new, c.block_size, overflow)[0])
    cache = KVCache(c.n_layer, 1, c.n_kv_head, cache_length(len(tokens) + max_new, c.block_size, decode_fn is not None),
                    c.head_dim, next(model.parameters()).dtype, device, static=decode_fn is not None)
    drafter = DraftModel(draft_model, len(tokens) + max_new, device) if spec.method == "draft" else None
    if drafter is not None:
        check_vocab(model, draft_model)
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    sampling = RowSampling.for_rows([config], device, [generator])   # (1,) columns broadcast over rows
    greedy = "sample" not in sampling.uses

    def distributions(logits: torch.Tensor, contexts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, V) logits after contexts[i] -> (probs, logprobs) of what sample_next draws from:
        one-hot argmax when greedy (logprobs then of the penalised logits, as sample_next reports)."""
        logits = logits.float()
        if "penalty" in sampling.uses:             # each row's own history: context + earlier drafts
            width = max(map(len, contexts))
            history = torch.tensor([h + [-1] * (width - len(h)) for h in contexts], device=logits.device)
            logits = apply_penalties(logits, history, sampling)
        if greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float(), logits.log_softmax(-1)
        scaled = logits / sampling.temperature.to(logits.device)[:, None]
        if sampling.uses & {"top_k", "top_p", "min_p"}:
            scaled = filter_logits(scaled, sampling.top_k, sampling.top_p, sampling.min_p)
        logprobs = scaled.log_softmax(-1)
        return logprobs.exp(), logprobs

    t0 = time.perf_counter()
    logits = forward_step(model, torch.tensor([tokens], device=device), cache)    # prefill, as plain decoding
    if drafter is not None:                                                       # the draft's, counted here
        t1 = time.perf_counter()
        drafter.prefill(tokens)
        stats.draft_s += time.perf_counter() - t1
    timings.prefill_tokens, timings.prefill_s = len(tokens), time.perf_counter() - t0
    stats.target_passes, stats.tokens = 1, 1
    p, logp = distributions(logits, [tokens])
    first = pick(p[0], generator) if not greedy else int(p[0].argmax())
    yield Step(torch.tensor([first]), logp[0, first].reshape(1))
    tokens.append(first)
    produced = 1
    # Invariant between rounds: the target's cache holds every token but the last, which is
    # "pending": it goes first into the next pass, whose first logits predict the token after it.
    while produced < max_new:
        t0 = time.perf_counter()
        k = min(spec.num_draft, max_new - produced - 1, cache.max_len - len(tokens))
        if drafter is not None:
            k = min(k, drafter.room(len(tokens)))
        drafts, q = [], None
        if k > 0 and drafter is not None:
            drafts, q = drafter.propose(tokens, k, distributions, generator)
        elif k > 0:
            drafts = lookup_draft(tokens, k, spec.ngram)
        stats.draft_s += time.perf_counter() - t0

        ids = torch.tensor([[tokens[-1]] + drafts], device=device)
        cache.begin(ids.size(1))
        if drafts or decode_fn is None:     # verification: k + 1 logits in one eager pass
            logits = model(ids, positions=cache.positions, kv_cache=cache, attn_mask=cache.attention_mask())["logits"][0]
        else:                               # nothing drafted: a plain (compiled) decode step
            logits = decode_fn(model, ids, cache)
        cache.advance(ids.size(1))
        p, logp = distributions(logits, [tokens + drafts[:i] for i in range(len(drafts) + 1)])
        n, following = accept_drafts(p, drafts, q, greedy, generator)
        truncate_cache(cache, len(tokens) + n)    # the pending token and the n kept drafts
        if drafter is not None:
            drafter.rollback(len(tokens) + n)
        stats.drafted += len(drafts)
        stats.accepted += n
        stats.target_passes += 1
        timings.decode_s += time.perf_counter() - t0
        for i, token in enumerate(drafts[:n] + [following]):
            tokens.append(token)
            produced += 1
            stats.tokens += 1
            timings.decode_tokens += 1
            yield Step(torch.tensor([token]), logp[i, token].reshape(1))
