"""Inference: a KV cache, the decode loop, sampling, and the `Engine` facade.

    kv_cache.py   preallocated keys/values per layer, a length per sequence, dynamic or static shapes
    sampling.py   SamplingConfig and per-row RowSampling; penalties, temperature, top-k/top-p/min-p
    generate.py   prefill + decode steps for a right-padded batch; UTF-8-safe streaming with stop strings
    engine.py     Engine.load("smollm2" | .gguf | run dir): generate, stream, chat, batches
    compiled_decode.py  opt-in (--compile): the decode step as one torch.compile graph
    speculative.py  draft + verify in one pass (prompt lookup, draft model): same greedy output, fewer passes
"""

from llmlab.infer.engine import Completion, Engine, load_model
from llmlab.infer.sampling import SamplingConfig
from llmlab.infer.speculative import SpeculativeConfig

__all__ = ["Engine", "Completion", "SamplingConfig", "SpeculativeConfig", "load_model"]
