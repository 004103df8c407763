"""Training: configs and presets, the loop, checkpoints, metrics, diagnostics, run comparison.

    config.py       DataConfig, TrainConfig, RunConfig and the named presets
    run.py          start (from scratch or --init MODEL) / resume a run directory
    trainer.py      the training loop
    loss.py         batch dicts and the loss over target tokens
    optim.py        AdamW parameter groups and the warmup + cosine schedule
    checkpoint.py   atomic checkpoints with every RNG state
    metrics.py      metrics.jsonl, loss.png, TensorBoard / W&B
    diagnostics.py  grad norms, update/weight ratios, loss spikes
    compare.py      `llmlab runs compare`
"""
