"""Prefill, then decode one token at a time through the KV cache; batches of prompts of any length.

    prefill   the whole (right-padded) prompt batch in one forward pass: fills the cache, gives the
              logits for the first new token. Compute-bound: big matrix-matrix products.
    decode    one token per sequence per step: each step reads every weight once for a handful of
              FLOPs per byte, so it is memory-bandwidth-bound (docs/03-inference.md).

Batches are right-padded: each sequence's tokens sit at cache positions 0, 1, 2, ... of its own
row, the cache keeps a length per row, and each row's logits are read at its own last token, so a
sequence gets the same logits in a batch as alone (`test_batched_equals_unbatched`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import RowSampling, SamplingConfig, sample_next

OVERFLOW = ("error", "truncate", "shift")


@dataclass
class Step:
    """One decode step: the next id of every sequence and its log-probability."""

    ids: torch.Tensor
    logprobs: torch.Tensor


@dataclass
class Timings:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    compile_s: float = 0.0     # compiling the decode step (--compile), never inside decode_s

    def as_dict(self) -> dict:
        return {"prefill_tok_s": self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0,
                "decode_tok_s": self.decode_tokens / self.decode_s if self.decode_s else 0.0,
                "prefill_s": self.prefill_s, "decode_s": self.decode_s, "compile_s": self.compile_s}


def run_model(model: torch.nn.Module, ids: torch.Tensor, cache: KVCache,
              last_index: torch.Tensor | None = None) -> torch.Tensor:
    """The model on new tokens ids (B, T) whose cache positions are set (`cache.begin`): the logits
    (B, V) of each row's last real token, at `last_index[b]` (right-padded rows end at different
    places), or at T - 1. This is the function `llmlab.infer.compiled_decode` compiles for decode steps."""
    out = model(ids, positions=cache.positions, kv_cache=cache, attn_mask=cache.attention_mask(),
                last_only=last_index is None, logits_index=last_index)
    return out["logits"][:, -1]


def forward_step(model: torch.nn.Module, ids: torch.Tensor, cache: KVCache, lengths: torch.Tensor | None = None,
                 step_fn: Callable[..., torch.Tensor] = run_model) -> torch.Tensor:
    """Run new tokens through the model, filling the next cache slots; return each row's last logits.
    lengths (B,): how many of the T tokens of each row are real (right padding); None: all T."""
    cache.begin(ids.size(1))
    if lengths is None:
        logits = step_fn(model, ids, cache)
        cache.advance(ids.size(1))
    else:
        logits = step_fn(model, ids, cache, lengths - 1)
        cache.advance(lengths)
    return logits


def cache_length(needed: int, context: int, static: bool) -> int:
    """Slots to allocate. A static cache is read whole at every step, so it is rounded up to a
    power of two (>= 256) rather than to the context: few distinct shapes (one compiled graph
    each), at most 2x the slots needed."""
    if not static:
        return min(context, needed)
    return min(context, max(256, 1 << (needed - 1).bit_length()))


def fit_prompts(prompts: list[list[int]], max_new_tokens: int, context: int, overflow: str) -> list[list[int]]:
    """Apply the context-overflow policy: error, truncate (drop the oldest prompt tokens), or shift."""
    if overflow not in OVERFLOW:
        raise LLMLabError(f"overflow policy {overflow!r}: choose one of {', '.join(OVERFLOW)}")
    longest = max(len(p) for p in prompts)
    if any(len(p) == 0 for p in prompts):
        raise LLMLabError("a prompt encodes to no tokens; give a non-empty prompt")
    budget = longest + (max_new_tokens if overflow != "shift" else 0)
    if budget <= context:
        return prompts
    if overflow == "error":
        raise LLMLabError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                          f"context of {context} tokens; shorten the prompt, lower --max-new-tokens, or pass "
                          "--overflow truncate (drop the oldest prompt tokens) or --overflow shift (one prompt: generate "
                          "past the context, keeping its newest half when it fills)")
    keep = context - (max_new_tokens if overflow == "truncate" else 0)
    if keep < 1:
        raise LLMLabError(f"max_new_tokens ({max_new_tokens}) alone exceeds the context of {context} tokens")
    return [p[-keep:] for p in prompts]


@torch.no_grad()
def decode_steps(model: torch.nn.Module, prompts: list[list[int]], config: SamplingConfig | list[SamplingConfig],
                 overflow: str = "error", timings: Timings | None = None,
                 cache_dtype: torch.dtype | None = None,
                 decode_fn: Callable[..., torch.Tensor] | None = None) -> Iterator[Step]:
    """Yield the next token of every sequence, step after step, up to max_new_tokens.
    The caller stops early (break) when every sequence has finished.

    config: one SamplingConfig for all prompts, or one per prompt (the batch then runs for the
    largest max_new_tokens; a caller cuts each row at its own).
    decode_fn: a compiled `run_model` (llmlab.infer.compiled_decode) for the one-token steps;
    it needs the static cache. The prefill always runs eagerly (prompt lengths vary)."""
    model.eval()
    c = model.config
    device = next(model.parameters()).device
    configs = config if isinstance(config, list) else [config] * len(prompts)
    if len(configs) != len(prompts):
        raise LLMLabError(f"{len(configs)} sampling configs for {len(prompts)} prompts: give one per prompt")
    max_new_tokens = max(cfg.max_new_tokens for cfg in configs)
    prompts = fit_prompts(prompts, max_new_tokens, c.block_size, overflow)
    if overflow == "shift" and len(prompts) > 1:
        raise LLMLabError("the shift overflow policy works on one sequence at a time")
    B, L = len(prompts), max(len(p) for p in prompts)
    # Right padding: row b's prompt takes cache positions 0 .. len-1 and its new tokens follow
    # directly (llmlab.infer.kv_cache explains why the pad slots need no mask).
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.tensor([p + [0] * (L - len(p)) for p in prompts], device=device)
    history = torch.tensor([p + [-1] * (L - len(p)) for p in prompts], device=device)
    static = decode_fn is not None
    cache = KVCache(c.n_layer, B, c.n_kv_head, cache_length(L + max_new_tokens, c.block_size, static),
                    c.head_dim, cache_dtype or next(model.parameters()).dtype, device, static=static)
    if isinstance(config, list):
        sampling = RowSampling.for_rows(configs, device)
    else:  # one generator drawn by every row in turn, as a batch of one request expects
        generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        sampling = RowSampling.for_rows(configs, device, [generator] * B)
    timings = timings if timings is not None else Timings()

    t0 = time.perf_counter()
    logits = forward_step(model, ids, cache, lengths if B > 1 else None)  # prefill
    timings.prefill_tokens, timings.prefill_s = int(lengths.sum()), time.perf_counter() - t0
    for step in range(max_new_tokens):
        next_ids, logprobs = sample_next(logits, sampling, history, prompt_len=L)
        yield Step(next_ids, logprobs)
        if step == max_new_tokens - 1:
            break  # the last token needs no forward pass of its own
        history = torch.cat([history, next_ids[:, None]], dim=1)
        t0 = time.perf_counter()
        if cache.filled == cache.max_len:
            # "shift": the context is full. Keep the newest half and prefill it again (positions
            # restart at 0), trading one re-prefill for unbounded generation in a small model.
            keep = history[0, -(c.block_size // 2):].tolist()
            cache.reset()
            logits = forward_step(model, torch.tensor([keep], device=device), cache)
        else:
            logits = forward_step(model, next_ids[:, None], cache, step_fn=decode_fn or run_model)  # decode
        timings.decode_tokens += B
        timings.decode_s += time.perf_counter() - t0


@dataclass
class StreamState:
    """Turns token bytes into text deltas that never split a UTF-8 character and never show a
    stop string (text that could still become one is held back until it cannot)."""

    stop: list[str] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    _pending: bytes = b""

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """Add a token's bytes; return (text safe to show now, whether a stop string was hit)."""
        data = self._pending + piece
        # Keep an incomplete multi-byte character at the end for the next token.
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 == 0x80:
                continue  # continuation byte: look further back for the lead byte
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            if need > back:
                cut = len(data) - back
            break
        self._pending = data[cut:]
        self.text += data[:cut].decode("utf-8", errors="replace")
        for s in self.stop:
            at = self.text.find(s)
            if at != -1:
                self.text = self.text[:at]
                return self._take(len(self.text)), True
        hold = max((len(s) - 1 for s in self.stop), default=0)
        return self._take(max(self.emitted, len(self.text) - hold)), False

    def finish(self) -> str:
        self.text += self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out, self.emitted = self.text[self.emitted:upto], max(self.emitted, upto)
        return out


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str                      # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    logprobs: list[float] | None = None
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason,
               "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.token_ids),
                         "total_tokens": self.prompt_tokens + len(self.token_ids)},
               "timings": self.timings}
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        return out


@dataclass
class Reply:
    """One sequence's reply as its tokens arrive: stop tokens, stop strings, text deltas."""

    stop_ids: set[int]
    state: StreamState
    max_tokens: int
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = ""                       # "" while running, then "stop" or "length"

    def add(self, token: int, logprob: float, token_bytes: bytes) -> str:
        """Take the next token; return the text it makes safe to show."""
        if token in self.stop_ids:
            self.finish = "stop"
            return self.state.finish()     # nothing can become a stop string any more
        self.ids.append(token)
        self.logprobs.append(logprob)
        delta, hit = self.state.feed(token_bytes)
        if hit:
            self.finish = "stop"           # the text up to the stop string is already out
            return delta
        if len(self.ids) >= self.max_tokens:
            self.finish = "length"
            return delta + self.state.finish()
        return delta

    @classmethod
    def for_config(cls, config: SamplingConfig, eos_id: int | None) -> "Reply":
        """A reply that stops at the config's stop ids and strings, at EOS (unless ignore_eos), and
        at max_new_tokens."""
        stop_ids = set(config.stop_token_ids)
        if not config.ignore_eos and eos_id is not None:
            stop_ids.add(eos_id)
        return cls(stop_ids, StreamState(list(config.stop)), config.max_new_tokens)

    def completion(self, prompt_tokens: int, with_logprobs: bool, timings: dict) -> Completion:
        return Completion(self.state.text, self.ids, self.finish or "length", prompt_tokens,
                          self.logprobs if with_logprobs else None, timings)
