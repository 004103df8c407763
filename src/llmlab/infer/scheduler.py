"""The continuous-batching scheduler: which sequences run in the next forward pass, and how many tokens each.

Static batching runs a batch until its longest member ends, so finished rows idle and new requests
wait for the whole batch. Continuous (iteration-level) batching (Orca, Yu et al. OSDI 2022)
decides again before every step: a request joins as soon as there is room and leaves the step it
finishes. Decode is memory-bound (every step reads all weights for one token per sequence), so
16 sequences per step cost little more than one: that is where the throughput comes from.

Each step has a token budget (`max_step_tokens`). With the "decode-first" policy a step holds
  1. one token for every running sequence that is decoding,
  2. then prompt chunks of sequences still prefilling, then of newly admitted ones, up to the budget.
A long prompt is thus prefilled a chunk per step (chunked prefill, Agrawal et al. 2023, Sarathi,
arXiv:2308.16369) while the others keep decoding, instead of stalling them for its whole prefill.
"prefill-first" (vLLM's original policy) runs a step of prompts alone whenever one is waiting:
better time to first token, worse inter-token latency for everyone else.

Memory is the other limit: KV blocks (llmlab.infer.block_manager). A decoding sequence whose next
token starts a new block takes one; when none is free, the most recently admitted running sequence
is preempted: its blocks go back to the pool and it rejoins the front of the queue, to be
recomputed from its tokens later (vLLM's recompute preemption; cheaper than swapping to host memory
for a small model, and it never fails a request).

This file knows nothing of models or tensors: `schedule()` returns a plan, the caller runs it and
reports back with `advance()`/`finish()`. The same class drives the real engine
(llmlab.infer.continuous) and the virtual-clock simulator (llmlab.infer.simulator).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmlab.infer.block_manager import BlockManager

POLICIES = ("decode-first", "prefill-first")


@dataclass
class SchedulerConfig:
    max_batch: int = field(default=16, metadata={"help": "sequences in a step at most (1: one request at a time)"})
    max_step_tokens: int = field(default=256, metadata={
        "help": "token budget of one step: its decodes plus prompt chunks (chunked prefill)"})
    block_size: int = field(default=16, metadata={"help": "token positions per KV cache block"})
    num_blocks: int = field(default=0, metadata={
        "help": "KV blocks in the pool (0: room for max-batch sequences of min(context, 1024) tokens)"})
    prefix_cache: bool = field(default=True, metadata={"help": "reuse the KV blocks of identical prompt prefixes"})
    policy: str = field(default="decode-first", metadata={
        "help": "decode-first (decodes, then prompt chunks fill the budget) or prefill-first (waiting prompts get "
                "steps of their own)"})
    max_queue: int = field(default=256, metadata={"help": "requests waiting at most; more are refused (HTTP 429)"})

    def __post_init__(self) -> None:
        from llmlab.core.config import check, check_fields

        check_fields(self)
        check(self, "max_batch", self.max_batch >= 1, "must be at least 1")
        check(self, "max_step_tokens", self.max_step_tokens >= 1, "must be at least 1")
        check(self, "block_size", self.block_size >= 1, "must be at least 1")
        check(self, "num_blocks", self.num_blocks >= 0, "must be 0 (automatic) or more")
        check(self, "policy", self.policy in POLICIES, f"must be one of {', '.join(POLICIES)}")
        check(self, "max_queue", self.max_queue >= 1, "must be at least 1")

    def pool_blocks(self, context: int) -> int:
        """num_blocks, or its automatic value for a model with this context length."""
        return self.num_blocks or self.max_batch * math.ceil(min(context, 1024) / self.block_size)


@dataclass(eq=False)   # compared by identity: the scheduler's `in` and remove() look for this very object
class Sequence:
    """One request as the scheduler sees it: its tokens, which of them are in the KV cache, its blocks."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    adapter: Any = None                  # part of every block hash: an adapter changes the keys
    payload: Any = None                  # the caller's per-request state (sampling, reply, ...)
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)      # the block table
    hashes: list[int] = field(default_factory=list)      # hash of each full block, in order
    computed: int = 0                    # tokens whose keys/values are in the blocks
    cached_tokens: int = 0               # prompt tokens the prefix cache served at first admission
    preemptions: int = 0
    admitted: bool = False               # was ever admitted (cached_tokens counted once)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass
class Chunk:
    """Part of a step: `sequence` feeds its tokens [start, start + length) through the model.
    `sample` when that reaches its last token, so the step's logits there give its next token."""

    sequence: Sequence
    start: int
    length: int

    @property
    def sample(self) -> bool:
        return self.start + self.length == self.sequence.num_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, num_blocks: int):
        self.config = config
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_cache)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []         # in the order they were (last) admitted
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        need = math.ceil((seq.num_tokens + seq.max_tokens) / self.config.block_size)
        if need > self.blocks.num_blocks:
            raise ValueError(f"a sequence of up to {seq.num_tokens + seq.max_tokens} tokens needs {need} KV blocks; "
                             f"the pool has {self.blocks.num_blocks}")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ planning a step

    def schedule(self) -> list[Chunk]:
        budget = self.config.max_step_tokens
        if self.config.policy == "prefill-first" and self.waiting and len(self.running) < self.config.max_batch:
            # Prompts only, and never by preempting: a prompt that preempted the decodes holding the
            # blocks would be preempted in turn, and the queue would never drain (a livelock).
            plan = self._continue_prefills(budget, preempt=False)
            plan += self._admit(budget - sum(c.length for c in plan))
            if plan:
                return [c for c in plan if c.sequence in self.running]
        plan = self._decodes(budget)
        plan += self._continue_prefills(budget - len(plan))
        plan += self._admit(budget - sum(c.length for c in plan))
        # A prompt chunk that needed blocks may have preempted a sequence planned before it.
        return [c for c in plan if c.sequence in self.running]

    def _decodes(self, budget: int) -> list[Chunk]:
        plan: list[Chunk] = []
        for seq in list(self.running):
            if len(plan) == budget:
                break
            if seq not in self.running or seq.computed != seq.num_tokens - 1:
                continue                                  # preempted meanwhile, or still prefilling
            if self._grow(seq, seq.num_tokens):
                plan.append(Chunk(seq, seq.computed, 1))
        return plan

    def _continue_prefills(self, budget: int, preempt: bool = True) -> list[Chunk]:
        plan = []
        for seq in list(self.running):
            left = seq.num_tokens - 1 - seq.computed      # a sequence in its prefill, beyond its first chunk
            if budget <= 0 or left <= 0 or seq not in self.running:
                continue
            length = min(left + 1, budget)
            if self._grow(seq, seq.computed + length) if preempt else self._allocate_upto(seq, seq.computed + length):
                plan.append(Chunk(seq, seq.computed, length))
                budget -= length
        return plan

    def _admit(self, budget: int) -> list[Chunk]:
        """Take waiting sequences, oldest first, while the batch, the budget and the pool allow."""
        plan = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_batch:
            seq = self.waiting[0]
            # The cache may hold a prefix of its tokens (never the last one: its logits are needed).
            seq.blocks, seq.hashes = self.blocks.lookup_prefix(seq.tokens[:-1], seq.adapter)
            seq.computed = len(seq.blocks) * self.config.block_size
            length = min(seq.num_tokens - seq.computed, budget)
            if not self._allocate_upto(seq, seq.computed + length):
                self._drop_blocks(seq)
                break                                     # no room now: wait for running ones to finish
            if not seq.admitted:
                seq.cached_tokens, seq.admitted = seq.computed, True
            self.waiting.popleft()
            self.running.append(seq)
            plan.append(Chunk(seq, seq.computed, length))
            budget -= length
        return plan

    def _grow(self, seq: Sequence, upto: int) -> bool:
        """Give seq the blocks for positions < upto, preempting the newest others if the pool is
        short; False if seq itself had to be preempted."""
        while not self._allocate_upto(seq, upto):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def _allocate_upto(self, seq: Sequence, upto: int) -> bool:
        need = math.ceil(upto / self.config.block_size) - len(seq.blocks)
        if need > self.blocks.num_free:
            return False
        seq.blocks += [self.blocks.allocate() for _ in range(need)]
        return True

    # ------------------------------------------------------------------ after a step

    def advance(self, chunk: Chunk) -> None:
        """The step ran: chunk's tokens are in the cache; blocks it filled become shareable."""
        seq, bs = chunk.sequence, self.config.block_size
        seq.computed = chunk.start + chunk.length
        tokens = seq.tokens
        for i in range(len(seq.hashes), seq.computed // bs):
            parent = seq.hashes[-1] if seq.hashes else None
            seq.hashes.append(self.blocks.register(seq.blocks[i], parent, tokens[i * bs:(i + 1) * bs], seq.adapter))

    def finish(self, seq: Sequence) -> None:
        """seq is done (finished or cancelled), wherever it is: its blocks go back to the pool."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._drop_blocks(seq)

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._drop_blocks(seq)
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def _drop_blocks(self, seq: Sequence) -> None:
        self.blocks.release(seq.blocks)
        seq.blocks, seq.hashes, seq.computed = [], [], 0
