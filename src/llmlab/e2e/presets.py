"""The named recipes: tiny (tests), cpu-small (two CPU cores, ~30 min), gpu-1b (documented only).

Timings in the comments were measured on the 2-core development machine (AMD EPYC, float32,
2 torch threads, nothing else running). Each function builds a fresh Recipe, so callers may
change what they get.
"""

from __future__ import annotations

from llmlab.e2e.recipe import DataSection, EvalSection, Recipe, SFTSection, SweepSection, TokenizerSection
from llmlab.model.config import ModelConfig
from llmlab.train.config import TrainConfig


def _tiny() -> Recipe:
    # For tests: every stage runs, on ~0.6 MB of text, in ~35 s on 2 cores (no reference model:
    # loading SmolLM2 alone takes ~6 s; the tests add it with --set eval.reference=smollm2).
    quick = dict(tensorboard=False, diag_every=0, log_every=5, sample_tokens=0, warmup_iters=5)
    return Recipe(
        "tiny",
        DataSection(shakespeare_plays=2, stdlib_max_files=24, stdlib_max_file_bytes=30_000, heldout_fraction=0.2,
                    decontam_items=10),
        TokenizerSection(vocab_size=512, val_fraction=0.1),
        ModelConfig(block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64),
        TrainConfig(batch_size=8, lr=3e-3, min_lr=3e-4, max_iters=30, eval_every=15, eval_iters=2, ckpt_every=15,
                    **quick),
        SFTSection(examples=120, batch_size=8, lr=1e-3, min_lr=1e-4, max_iters=12, eval_every=6, eval_iters=2,
                   ckpt_every=6, seq_len=128, weight_decay=0.0, **quick),
        EvalSection(limit=10, indomain_items=20, bpb_bytes=8_000, reference="", samples=2, sample_tokens=12),
        SweepSection(tokens_per_param=0.5, min_steps=4, max_steps=12),
    )


def _cpu_small() -> Recipe:
    # Sized at ~40 min on 2 free CPU cores from short runs, per stage: curate ~1 min; tokenizer
    # ~0.5 min (the whole built-in corpus, ~13 MB = 3.7M tokens at vocab 4096); pretraining ~16 min (a 4.0M-parameter
    # Llama: GQA, RoPE, RMSNorm, SwiGLU, context 256; 1.35 s per step of 4,096 tokens, 700 steps =
    # 2.9M tokens); SFT ~2 min; eval ~20 min, of which SmolLM2 ~17 (3-5 items/s; cached, so a rerun
    # skips it) and our two models ~3 (~40 items/s). 500 items per benchmark and per in-domain task.
    # The sweep trains width-32 models (the 4096-token head and embedding dominate the cost at such
    # sizes): --sweep model.n_layer=1,2,3 at 20 tokens/parameter is 76-302 steps per size.
    # Measured (AMD EPYC, 2 cores, with the sweep and eval.limit=300): 36 min in all; curate 32 s,
    # tokenizer 20 s, sweep 6 min, pretrain 16.5 min, SFT 1.7 min, eval 11 min.
    quick = dict(tensorboard=False, diag_every=0, sample_tokens=0)
    return Recipe(
        "cpu-small",
        DataSection(workers=2),
        TokenizerSection(vocab_size=4096, workers=1, val_fraction=0.03),
        ModelConfig(block_size=256, n_layer=4, n_head=4, n_kv_head=2, n_embd=256),
        TrainConfig(batch_size=16, lr=2e-3, min_lr=2e-4, warmup_iters=50, max_iters=700, eval_every=100,
                    eval_iters=10, ckpt_every=50, log_every=10, **quick),
        SFTSection(examples=3000, batch_size=8, lr=5e-4, min_lr=5e-5, warmup_iters=10, max_iters=150, eval_every=50,
                   eval_iters=10, ckpt_every=50, log_every=5, seq_len=256, weight_decay=0.0, **quick),
        EvalSection(limit=500, indomain_items=500, bpb_bytes=50_000),
        SweepSection(tokens_per_param=20.0, model=["n_embd=32"], min_steps=30),
    )


def _gpu_1b() -> Recipe:
    # Documented, never run here: a 1.04B-parameter Llama (Llama-3.2-1B's shape with a 32k vocabulary)
    # on one large GPU in bf16, 24,000 steps x 1M tokens = 25B tokens (~24 per parameter; Chinchilla's ~20).
    # That is far beyond the built-in corpus (~4M tokens): bring a real corpus with --input. The BPE
    # is trained on its first 100 MB (the pure-Python trainer). The pipeline runs its stages in one
    # process: on a cluster, run one recipe per GPU (e.g. the sweep's sizes); a multi-GPU pretraining run
    # is `torchrun -m llmlab train` (chapter 9) outside the pipeline.
    gpu = dict(device="cuda", dtype="bfloat16", compile=True, tensorboard=True, diag_every=500)
    return Recipe(
        "gpu-1b",
        DataSection(workers=16, heldout_fraction=0.01),
        TokenizerSection(vocab_size=32_000, workers=16, val_fraction=0.005, train_bytes=100_000_000),
        ModelConfig(block_size=2048, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, mlp_hidden=8192,
                    rope_theta=500_000.0),
        TrainConfig(batch_size=8, grad_accum=64, lr=3e-4, min_lr=3e-5, warmup_iters=2000, beta2=0.95,
                    max_iters=24_000, eval_every=1000, eval_iters=50, ckpt_every=500, log_every=10, **gpu),
        SFTSection(examples=20_000, batch_size=16, lr=2e-5, min_lr=2e-6, warmup_iters=100, max_iters=2000,
                   eval_every=200, eval_iters=20, ckpt_every=200, seq_len=2048, weight_decay=0.01, **gpu),
        # contamination off: checking every item against a multi-GB corpus in Python would take hours.
        EvalSection(limit=0, indomain_items=2000, bpb_bytes=2_000_000, contamination=False, device="cuda"),
        SweepSection(tokens_per_param=20.0, min_steps=200),
    )


PRESETS = {"tiny": _tiny, "cpu-small": _cpu_small, "gpu-1b": _gpu_1b}
