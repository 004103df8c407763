# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. Serving — notebook
#
# The runnable companion of [docs/08-serving.md](../docs/08-serving.md). The HTTP server is a thin
# layer; the decisions that make serving fast are in three small classes, and here we drive them
# by hand. The **block manager** lends KV-cache blocks and shares them by prefix. The
# **scheduler** decides, before every step, which sequences run and how many tokens each. The
# **simulator** runs that same scheduler on a virtual clock, so two policies can be compared on
# a hundred requests in a fraction of a second. At the end a `ContinuousEngine` serves a few
# requests on a tiny model, and we check that batching did not change a single greedy token.

# %%
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import torch

from llmlab.infer.block_manager import BlockManager
from llmlab.infer.continuous import ContinuousEngine
from llmlab.infer.engine import Engine
from llmlab.infer.sampling import SamplingConfig
from llmlab.infer.scheduler import Scheduler, SchedulerConfig, Sequence
from llmlab.infer.simulator import poisson_trace, simulate, table
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import CharTokenizer

torch.set_num_threads(1)   # the model at the end is tiny: one thread is fastest, and robust on a busy machine

# %% [markdown]
# ## The block manager: a pool of KV blocks
#
# Ten blocks of four positions each (vLLM uses 16; four keeps the printout readable). A sequence
# takes a block whenever its next token needs one; its *block table* lists them in order, so
# position p lives in block `table[p // 4]` at offset `p % 4`.

# %%
bm = BlockManager(num_blocks=10, block_size=4)

def show(label: str) -> None:
    print(f"{label:<44} refs {bm.refs}  free {list(bm.free)}")

A = list(range(100, 110))                                # 10 tokens -> 3 blocks
table_a = [bm.allocate() for _ in range(3)]
show(f"A allocates {table_a}")
B = list(range(200, 207))                                # 7 tokens -> 2 blocks
table_b = [bm.allocate() for _ in range(2)]
show(f"B allocates {table_b}")
print("A's position 9 is in block", table_a[9 // 4], "at offset", 9 % 4)

# %% [markdown]
# A block becomes shareable when it is full: `register` names it by a hash of its tokens,
# chained with the hash of the block before it (equal hashes mean equal *prefixes*, not just
# equal blocks). A new sequence C that starts with A's first eight tokens finds those two blocks
# with `lookup_prefix` and takes a reference to each instead of computing them again. (The caller
# passes `tokens[:-1]`: the last prompt token is always recomputed, since its logits give the
# first reply token.)

# %%
parent = None
for i in range(len(A) // 4):                             # A's two full blocks
    parent = bm.register(table_a[i], parent, A[i * 4:(i + 1) * 4])

C = A[:8] + [300, 301, 302]
shared, hashes = bm.lookup_prefix(C[:-1])
print(f"C finds {len(shared)} cached blocks {shared}: {len(shared) * 4} of its {len(C)} prompt tokens need no prefill")
table_c = shared + [bm.allocate()]
show(f"C's table {table_c}")

# %% [markdown]
# Releasing counts down. When A finishes, its shared blocks stay with C; its own last block goes
# to the **end** of the free list. When C finishes too, the shared blocks are free but keep their
# contents and hashes, so a later request with the same prefix still finds them; `allocate`
# takes from the **front** of the free list, so the least recently freed block is overwritten
# first (LRU eviction).

# %%
bm.release(table_a)
show("A finishes")
bm.release(table_b)
show("B finishes")
bm.release(table_c)
show("C finishes")
again, _ = bm.lookup_prefix(C[:-1])
show(f"D, same prefix as C, finds {again} again")
bm.release(again)

# %% [markdown]
# ## The scheduler, one step at a time
#
# `Scheduler.schedule()` returns a plan: a list of `Chunk(sequence, start, length)`. We play the
# model: after each step we `advance` every chunk, append a made-up token to every chunk that
# reached its sequence's last token (`chunk.sample`), and `finish` the sequences that have all
# their tokens. A token budget of 16 per step forces the 30-token prompt to be prefilled in
# pieces (chunked prefill) while the others keep decoding.

# %%
sched = Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=16, block_size=4), num_blocks=24)
for name, prompt_len, out_len in [("short", 5, 4), ("medium", 9, 3), ("long", 30, 2)]:
    sched.add(Sequence(name, list(range(prompt_len)), out_len))

step = 0
while sched.has_work():
    plan = sched.schedule()
    step += 1
    described = [f"{c.sequence.request_id}[{c.start}:{c.start + c.length}]{'*' if c.sample else ''}" for c in plan]
    for chunk in plan:
        sched.advance(chunk)
        if chunk.sample:
            seq = chunk.sequence
            seq.output.append(1000 + len(seq.output))
            if len(seq.output) == seq.max_tokens:
                sched.finish(seq)
    print(f"step {step}: {sum(c.length for c in plan):2d} tokens  {'  '.join(described):<44} "
          f"blocks used {sched.blocks.num_used:2d}")
print("(* = the chunk ends at the sequence's last token: the step samples its next token)")

# %% [markdown]
# Decode-first: every running sequence decodes one token, then prompt chunks fill the rest of
# the budget. The long prompt takes several steps, and the two short replies never stop for it.
#
# ## The simulator: two policies on a virtual clock
#
# `simulate` runs this same `Scheduler` over a trace of arrivals, with a cost model fitted to
# SmolLM2 on a 2-core CPU (about 96 ms per step plus a few ms per row) in place of the model.
# Here is the chapter's trace: 100 requests arriving as a Poisson process at 0.3 per second,
# prompts of 32-512 tokens, replies of 16-128, a 24-token system prompt every request shares, and
# a pool of 4,096 token slots. **Decode-first** (the default) puts a long prompt's chunks beside
# the running decodes; **prefill-first** gives waiting prompts steps of their own.

# %%
trace = poisson_trace(100, rate_per_s=0.3, prompt_len=(32, 512), output_len=(16, 128), seed=0, shared_prefix=24)
base = SchedulerConfig()
runs = {policy: simulate(replace(base, policy=policy), trace, num_blocks=4096 // base.block_size)
        for policy in ("decode-first", "prefill-first")}
print(table(runs))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
for name, result in runs.items():
    done = [r for r in result.records if r.finish is not None]
    itls = np.sort([gap for r in done for gap in r.itls]) * 1e3
    ttfts = np.sort([r.ttft for r in done])
    ax1.plot(itls, 1 - np.arange(len(itls)) / len(itls), label=name)
    ax2.plot(ttfts, np.arange(1, len(ttfts) + 1) / len(ttfts), label=name)
ax1.set_yscale("log")
ax1.set_xlabel("inter-token latency (ms)")
ax1.set_ylabel("fraction of gaps at least this (log)")
ax1.set_title("ITL tail: the stalls users see in a stream")
ax2.set_xlabel("time to first token (s)")
ax2.set_ylabel("fraction of requests")
ax2.set_title("TTFT")
ax1.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The table's first two rows are the chapter's. At this load both policies deliver the same
# tokens per second (the arrivals set it); they differ in whom they make wait. Prefill-first's
# TTFT mean and p95 are a little better, and its rare long gaps (a whole long prompt in a step
# of its own, with every stream waiting) are the tail of its ITL curve that runs past 2 s.
#
# The token budget `max_step_tokens` moves the same trade-off: a small budget keeps every step
# short but needs many steps per long prompt. Sweeping it traces one curve per policy.

# %%
budgets = (64, 128, 256, 512, 1024)
fig, ax = plt.subplots(figsize=(6.5, 4))
for policy in ("decode-first", "prefill-first"):
    points = []
    for n in budgets:
        s = simulate(replace(base, policy=policy, max_step_tokens=n), trace, num_blocks=4096 // base.block_size).summary
        points.append((s["itl_max_s"] * 1e3, s["ttft_p95_s"]))
    ax.plot(*zip(*points), "-o", label=policy)
    for n, (x, y) in zip(budgets, points):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_xlabel("worst inter-token gap (ms)")
ax.set_ylabel("TTFT p95 (s)")
ax.set_title("max_step_tokens: stall vs wait (labels: the budget)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Decode-first traces a clean trade-off: a budget of 64 gives the smallest worst gap and the
# longest TTFT p95, 1024 the reverse. Prefill-first's worst gap stays above 2 s at every budget,
# because its prompt-only steps stall every stream however the budget is set.
#
# ## A real engine on a tiny model
#
# `ContinuousEngine` is what `llmlab serve` runs: the scheduler above, a paged KV cache, one
# packed forward pass per step. A random 2-layer model with a character tokenizer is enough to
# watch it: four requests arrive at once, two of them starting with the same 29 characters. Each
# samples at temperature 1 with its own seed (a random model's greedy reply is one letter
# repeated, which would make the check below too easy). Each step returns a `TokenEvent` per
# sequence that got a token.

# %%
text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
tok = CharTokenizer.train(text + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ?!.")
torch.manual_seed(0)
tiny = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, n_embd=64)).eval()

prompts = ["To be, or not to be, that is the question", "To be, or not to be, that is all",
           "Whether 'tis nobler", "Suffer"]
configs = [SamplingConfig(max_new_tokens=12, temperature=1.0, seed=i) for i in range(len(prompts))]
engine = ContinuousEngine(tiny, tok, SchedulerConfig(max_batch=4, max_step_tokens=32, block_size=8))
ids = {engine.submit(tok.encode(p), c): (p, c) for p, c in zip(prompts, configs)}
replies = {rid: [] for rid in ids}
step = 0
while engine.has_work():
    events = engine.step()
    step += 1
    for e in events:
        replies[e.request_id].append(e.token_id)
    if step <= 4 or not engine.has_work():
        used = engine.stats()["kv_blocks_used"]
        print(f"step {step}: tokens for {[e.request_id for e in events]}  {used} blocks in use")
print(f"{step} steps; engine stats: {engine.stats()}")

# %% [markdown]
# Step 1 is the first prompt's first 32-token chunk alone (the budget), so nobody gets a token
# yet. `prefix_cache_hit_tokens` counts the prompt tokens served from cached blocks: the second
# prompt found the first one's full 8-token blocks, three of them inside the 29 shared
# characters, so 24 tokens. Batching, chunking and sharing must not change what any request
# gets: each reply has to equal the same prompt, with the same seed, decoded alone by the plain
# `Engine` with its own contiguous KV cache.

# %%
alone = Engine(tiny, tok, torch.device("cpu"))
for rid, (prompt, config) in ids.items():
    single = alone.generate(tok.encode(prompt), config).token_ids
    print(f"{prompt!r:<45} batched == alone: {replies[rid] == single}   {tok.decode(single)!r}")

# %% [markdown]
# ## Try this
#
# 1. Force preemptions: in the scheduler cell, shrink the pool to `num_blocks=10` and predict
#    which sequence is preempted first (the most recently admitted). Count them with
#    `sched.preemptions`, and check every sequence still finishes.
# 2. Re-run the policy comparison at `rate_per_s=0.8` (past what a batch of 16 can serve with
#    this pool). Predict before running: which policy wins on TTFT p95 now, and why do
#    preemptions appear?
# 3. In the tiny-engine cell, set `block_size=16`: how many prompt tokens does the prefix cache
#    serve now, and why? (Only whole blocks are shared, and never the last prompt token.)
