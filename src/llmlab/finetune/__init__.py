"""Fine-tuning a pretrained model on your data: LoRA, QLoRA, DoRA and full fine-tuning.

    lora.py       LoRALinear (and DoRA), applied by layer name; merge and rebuild
    config.py     LoRAConfig, FinetuneConfig, the run config and per-method defaults
    sft_data.py   JSONL chat / Alpaca / text -> masked, packed batches for the trainer
    tasks.py      built-in tasks made by code: extract-json, facts
    run.py        start / resume a fine-tune on the shared trainer
    peft.py       PEFT adapter directories, both ways
    evaluate.py   tuned vs base: task scores and what was forgotten
"""
