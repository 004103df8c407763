"""llmlab: hands-on LLM engineering, every core piece written from scratch.

Areas (imports point down only):
    cli/                         one `llmlab <verb>` entry point
    rag/ data/ eval/ ...         capabilities
    train/ infer/                training loop; KV-cached generation
    model/ tokenizer/            the Transformer; tokenizers
    core/                        errors, atomic writes, devices, configs, assets, progress
"""

__version__ = "0.1.0"
