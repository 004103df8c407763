"""Chapter 3, exercise "Size the KV cache before you allocate it": predict SmolLM2's cache bytes per
position from its config, check them against a real KVCache, then find the context length at which
one sequence's cache weighs as much as the weights, with grouped-query attention and without.

    python examples/solutions/03_kv_cache_bytes.py
"""

from llmlab.core.assets import smollm2_gguf
from llmlab.infer.kv_cache import KVCache
from llmlab.model.gguf import gguf_model_config, open_gguf

path = smollm2_gguf()
c = gguf_model_config(open_gguf(path), path)  # the config from the file's metadata, no weights read
print(f"SmolLM2-135M: {c.n_layer} layers, {c.n_head} query heads, {c.n_kv_head} key/value heads of {c.head_dim}")

# Prediction: keys and values (2) x layers x kv heads x head_dim x 4 bytes (float32), per position.
per_position = 2 * c.n_layer * c.n_kv_head * c.head_dim * 4
print(f"predicted: {per_position:,} bytes per position")
cache = KVCache(c.n_layer, 1, c.n_kv_head, 1000, c.head_dim)
assert cache.nbytes() == 1000 * per_position, (cache.nbytes(), per_position)
print(f"KVCache(max_len=1000).nbytes() = {cache.nbytes():,} bytes: as predicted")

# The weights a decode step reads, from the same config: embedding (tied to the head, read once),
# per block q/o (d x d), k/v (d x kv_heads*head_dim), the SwiGLU MLP's three d x hidden matrices, two norms.
d, kv = c.n_embd, c.n_kv_head * c.head_dim
params = c.vocab_size * d + c.n_layer * (2 * d * d + 2 * d * kv + 3 * d * c.mlp_hidden + 2 * d) + d
assert abs(params - 134.5e6) < 0.1e6, params  # the 134.5M parameters of the chapter
weights = params * 4  # float32
for kv_heads, name in ((c.n_kv_head, "grouped-query (as shipped)"), (c.n_head, "one K/V head per query head")):
    per = 2 * c.n_layer * kv_heads * c.head_dim * 4
    even = weights / per
    print(f"{name:29s}: {per / 1e3:6.1f} KB per position, {c.block_size} positions = "
          f"{per * c.block_size / 2**20:6.0f} MiB; the cache outweighs the weights past {even:,.0f} positions")
assert 2 * c.n_layer * c.n_head * c.head_dim * 4 == 3 * per_position  # 9 heads instead of 3: 3x the cache
# In a decode step at context length p, attention reads p cached positions besides the weights:
for p in (128, 2048, 8192):
    print(f"bytes read per decoded token at context {p:5d}: weights {weights / 1e6:.0f} MB + cache "
          f"{p * per_position / 1e6:5.0f} MB")
