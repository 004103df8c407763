"""Inference: a KV cache, the decode loop, sampling, the `Engine` facade, and continuous batching.

    kv_cache.py   preallocated keys/values per layer, a length per sequence, dynamic or static shapes
    sampling.py   SamplingConfig and per-row RowSampling; penalties, temperature, top-k/top-p/min-p
    generate.py   prefill + decode steps for a right-padded batch; UTF-8-safe streaming with stop strings
    engine.py     Engine.load("smollm2" | .gguf | run dir): generate, stream, chat, batches
    compiled_decode.py  opt-in (--compile): the decode step as one torch.compile graph
    speculative.py  draft + verify in one pass (prompt lookup, draft model): same greedy output, fewer passes
    block_manager.py, scheduler.py   the KV block pool with prefix caching; continuous-batching decisions (no torch)
    paged_cache.py, continuous.py    the paged KV cache and ContinuousEngine: many sequences, one pass per step
    multi_lora.py  several LoRA adapters on one base in one batch
    simulator.py  the scheduler on a virtual clock: policies compared without a model
"""

# Imported on first use, so that the model-free parts (the scheduler and its simulator) load
# without torch.
_EXPORTS = {"Engine": "llmlab.infer.engine", "Completion": "llmlab.infer.engine", "load_model": "llmlab.infer.engine",
            "SamplingConfig": "llmlab.infer.sampling", "SpeculativeConfig": "llmlab.infer.speculative"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmlab.infer' has no attribute {name!r}")
