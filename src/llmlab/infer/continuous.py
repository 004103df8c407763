"""`ContinuousEngine`: continuous batching over a paged KV cache, one forward pass per step.

    engine = ContinuousEngine.from_engine(Engine.load("smollm2"), SchedulerConfig(max_batch=16))
    rid = engine.submit(prompt_ids, SamplingConfig(max_new_tokens=64, temperature=0))
    while engine.has_work():
        for event in engine.step():          # a TokenEvent per sequence that got a token this step
            print(event.request_id, event.text, event.finish_reason)

One step:
    plan = scheduler.schedule()              which sequences, which of their tokens (llmlab.infer.scheduler)
    positions = cache.prepare(plan)          where each token's keys go, what each query sees (paged_cache)
    logits = model(ids (1, N), ...)          every chunk packed into one row; logits only where a chunk
                                             ends at its sequence's last token
    sample, per sequence                     its own temperature, filters, penalties, seed, stop rules
    scheduler.advance / finish               blocks filled become shareable; finished ones are freed

Not thread-safe: one thread calls everything (llmlab.serve runs it on an engine thread and talks to
it through queues). Greedy output is identical to decoding each prompt alone (tests/infer), in any
mix of arrivals, preemptions and prefix-cache hits.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import Completion, Reply, Timings
from llmlab.infer.paged_cache import PagedKVCache
from llmlab.infer.sampling import RowSampling, SamplingConfig, sample_distribution
from llmlab.infer.scheduler import Scheduler, SchedulerConfig, Sequence


class QueueFull(LLMLabError):
    """submit() found max_queue requests already waiting (a server answers 429)."""


@dataclass
class TokenEvent:
    request_id: str
    token_id: int | None            # None on a last event that adds no token (a stop token was drawn)
    text: str                       # text now safe to show: whole UTF-8 characters, no stop string
    logprob: float | None
    top_logprobs: list[tuple[int, float]]
    finish_reason: str | None       # None while running, then "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int              # prompt tokens the prefix cache served
    preemptions: int


@dataclass
class _Request:
    """The per-request state the scheduler carries for us in Sequence.payload."""

    config: SamplingConfig
    reply: Reply
    generator: torch.Generator | None
    adapter_index: int              # -1: the base model


class ContinuousEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, config: SchedulerConfig | None = None,
                 adapters: dict[str, dict] | None = None, name: str = ""):
        """adapters: {name: {layer name: (A, B, scaling)}} (llmlab.finetune.adapter.adapter_weights),
        served side by side on the one base (llmlab.infer.multi_lora)."""
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.config = config or SchedulerConfig()
        c = model.config
        first = next(model.parameters())
        self.device = first.device
        num_blocks = self.config.pool_blocks(c.block_size)
        self.cache = PagedKVCache(c.n_layer, num_blocks, self.config.block_size, c.n_kv_head, c.head_dim,
                                  first.dtype if first.is_floating_point() else torch.float32, self.device)
        self.scheduler = Scheduler(self.config, num_blocks)
        self.sequences: dict[str, Sequence] = {}
        self.adapter_names: list[str] = []
        if adapters:
            from llmlab.infer.multi_lora import attach_adapters
            self.adapter_names = attach_adapters(model, adapters)
        self._ids = itertools.count()
        self.generated_tokens = self.prompt_tokens_computed = self.prefix_hit_tokens = 0

    @classmethod
    def from_engine(cls, engine, config: SchedulerConfig | None = None,
                    adapters: dict[str, dict] | None = None) -> "ContinuousEngine":
        """From a loaded llmlab.infer.engine.Engine (its model and tokenizer)."""
        return cls(engine.model, engine.tokenizer, config, adapters, engine.name)

    @property
    def max_context(self) -> int:
        return self.model.config.block_size

    # ------------------------------------------------------------------ requests

    def submit(self, prompt_ids: list[int], config: SamplingConfig, adapter: str | None = None,
               request_id: str | None = None) -> str:
        if not prompt_ids:
            raise LLMLabError("the prompt encodes to no tokens; give a non-empty prompt")
        if len(prompt_ids) + config.max_new_tokens > self.max_context:
            raise LLMLabError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds "
                              f"the model's context of {self.max_context} tokens; shorten the prompt or ask for fewer tokens")
        if adapter is not None and adapter not in self.adapter_names:
            known = ", ".join(self.adapter_names) or "none loaded"
            raise LLMLabError(f"adapter {adapter!r} is not loaded (adapters: {known})")
        if len(self.scheduler.waiting) >= self.config.max_queue:
            raise QueueFull(f"{len(self.scheduler.waiting)} requests are already waiting (max_queue); retry later")
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.sequences:
            raise LLMLabError(f"request id {request_id!r} is already running")
        request = _Request(config, Reply.for_config(config, self.tokenizer.eos_id),
                           torch.Generator().manual_seed(config.seed) if config.seed is not None else None,
                           self.adapter_names.index(adapter) if adapter is not None else -1)
        seq = Sequence(request_id, list(prompt_ids), config.max_new_tokens, adapter, request)
        try:
            self.scheduler.add(seq)
        except ValueError as e:
            raise LLMLabError(f"{e}: raise --num-blocks or lower max_tokens") from None
        self.sequences[request_id] = seq
        return request_id

    def cancel(self, request_id: str) -> None:
        """Forget a request (client gone, timeout): its blocks are free before the next step."""
        seq = self.sequences.pop(request_id, None)
        if seq is not None:
            self.scheduler.finish(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ one step

    @torch.no_grad()
    def step(self) -> list[TokenEvent]:
        plan = self.scheduler.schedule()
        if not plan:
            return []
        positions = self.cache.prepare(plan)
        ids = [t for c in plan for t in c.sequence.tokens[c.start:c.start + c.length]]
        ends = torch.zeros(1, len(ids), dtype=torch.bool)   # logits are needed at each sampling chunk's end only
        offset = 0
        for c in plan:
            offset += c.length
            ends[0, offset - 1] = c.sample
        if self.adapter_names:
            from llmlab.infer.multi_lora import set_token_adapters
            index = [c.sequence.payload.adapter_index for c in plan for _ in range(c.length)]
            set_token_adapters(self.model, torch.tensor([index], device=self.device))
        logits = self.model(torch.tensor([ids], device=self.device), positions=positions, kv_cache=self.cache,
                            logits_mask=ends.to(self.device))["logits"]                     # (sampled, V)
        for c in plan:
            self.scheduler.advance(c)
            if c.sequence.computed <= len(c.sequence.prompt):
                self.prompt_tokens_computed += c.length
        sampled = [c.sequence for c in plan if c.sample]
        return self._sample(sampled, logits) if sampled else []

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[TokenEvent]:
        requests: list[_Request] = [s.payload for s in seqs]
        sampling = RowSampling.for_rows([r.config for r in requests], self.device, [r.generator for r in requests])
        history = None
        prompt_len = None
        if "penalty" in sampling.uses:   # (llmlab.infer.sampling.apply_penalties: which penalty sees what)
            width = max(s.num_tokens for s in seqs)
            history = torch.tensor([s.tokens + [-1] * (width - s.num_tokens) for s in seqs], device=self.device)
            prompt_len = torch.tensor([len(s.prompt) for s in seqs], device=self.device)
        next_ids, dist = sample_distribution(logits, sampling, history, prompt_len=prompt_len)
        top_k = max(r.config.top_logprobs for r in requests)
        top = dist.topk(top_k, dim=-1) if top_k else None
        events = []
        for row, (seq, request) in enumerate(zip(seqs, requests)):
            token, reply = int(next_ids[row]), request.reply
            if not seq.output:
                self.prefix_hit_tokens += seq.cached_tokens
            kept = len(reply.ids)
            delta = reply.add(token, float(dist[row, token]), self.tokenizer.decode_bytes([token]))
            added = len(reply.ids) > kept
            seq.output.append(token)
            self.generated_tokens += 1
            alternatives = []
            if top is not None and request.config.top_logprobs:
                k = request.config.top_logprobs
                alternatives = list(zip(top.indices[row, :k].tolist(), top.values[row, :k].tolist()))
            events.append(TokenEvent(seq.request_id, token if added else None, delta,
                                     float(dist[row, token]) if added else None, alternatives if added else [],
                                     reply.finish or None, len(seq.prompt), len(reply.ids), seq.cached_tokens,
                                     seq.preemptions))
            if reply.finish:
                self.scheduler.finish(seq)
                del self.sequences[seq.request_id]
        return events

    def stats(self) -> dict:
        blocks = self.scheduler.blocks
        return {"waiting": len(self.scheduler.waiting), "running": len(self.scheduler.running),
                "kv_blocks_used": blocks.num_used, "kv_blocks_total": blocks.num_blocks,
                "kv_cache_bytes": self.cache.nbytes(), "preemptions": self.scheduler.preemptions,
                "prefix_cache_hit_tokens": self.prefix_hit_tokens, "generated_tokens": self.generated_tokens,
                "prompt_tokens_computed": self.prompt_tokens_computed}

    # ------------------------------------------------------------------ a whole batch at once

    def run(self, prompts: list[list[int]], configs: list[SamplingConfig],
            adapters: list[str | None] | None = None, show_progress: bool | None = None) -> list[Completion]:
        """Submit every prompt, step until all are done; the completions in prompt order
        (`llmlab generate` over many prompts, Engine.generate_batch). A progress bar on stderr
        counts finished prompts (shown on a terminal, or as show_progress says)."""
        from llmlab.core.progress import progress

        adapters = adapters or [None] * len(prompts)
        order = [self.submit(p, c, a) for p, c, a in zip(prompts, configs, adapters)]
        requests = {rid: self.sequences[rid].payload for rid in order}
        timings = Timings()
        bar = progress(len(prompts), "generate", "prompt",
                       disable=None if show_progress is None else not show_progress or len(prompts) < 2)
        while self.has_work():
            prompt_tokens = self.prompt_tokens_computed
            t0 = time.perf_counter()
            events = self.step()
            elapsed = time.perf_counter() - t0
            if self.prompt_tokens_computed > prompt_tokens:   # a step with prompt chunks counts as prefill
                timings.prefill_tokens += self.prompt_tokens_computed - prompt_tokens
                timings.prefill_s += elapsed
            else:
                timings.decode_tokens += len(events)
                timings.decode_s += elapsed
            bar.update(sum(e.finish_reason is not None for e in events))
            bar.set_postfix(tok_s=f"{self.generated_tokens / max(bar.format_dict['elapsed'], 1e-9):.1f}", refresh=False)
        bar.close()
        return [requests[rid].reply.completion(len(p), c.logprobs, timings.as_dict())
                for rid, p, c in zip(order, prompts, configs)]
