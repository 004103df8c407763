"""Chapter 3, exercise "Decode without a cache": greedy decoding that re-runs the model over the
whole text for every token (chapter 1's sampler) must give the same tokens as the KV-cache loop,
`decode_steps`; then time both and see the cost of the cache-less loop grow with the length.

    python examples/solutions/03_no_cache_equals_cache.py
"""

import time

import torch

from llmlab.infer import SamplingConfig
from llmlab.infer.generate import decode_steps
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

torch.set_num_threads(1)  # a small model: threads would only add overhead
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=256, block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)).eval()
with torch.no_grad():
    for p in model.parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.2)
prompt = [int(t) for t in torch.randint(0, 256, (16,))]


@torch.no_grad()
def without_cache(ids: list[int], n: int) -> list[int]:
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids + out]))["logits"][0, -1]  # the whole text, every step
        out.append(int(logits.argmax()))
    return out


def with_cache(ids: list[int], n: int) -> list[int]:
    return [int(s.ids[0]) for s in decode_steps(model, [ids], SamplingConfig(max_new_tokens=n, temperature=0))]


for n in (40, 160):
    t0 = time.perf_counter()
    slow = without_cache(prompt, n)
    t1 = time.perf_counter()
    fast = with_cache(prompt, n)
    t2 = time.perf_counter()
    print(f"{n:3d} tokens: without a cache {t1 - t0:5.2f} s, with the KV cache {t2 - t1:5.2f} s "
          f"({(t1 - t0) / (t2 - t1):.1f}x)")
    assert slow == fast, f"the cache changed the tokens: first difference at {next(i for i, (a, b) in enumerate(zip(slow, fast)) if a != b)}"
print("greedy without a cache == greedy with the KV cache: OK")
