"""Evaluation: how good a model is, measured the ways people quote.

    perplexity.py   sliding-window perplexity and bits per byte over a text (`windows` says which
                    tokens each window scores)
    reference.py    quantization quality against a reference model: mean KL divergence, its tail,
                    top-1 agreement, perplexity ratio (llama.cpp's `llama-perplexity --kl-divergence`)

The CLI is `llmlab eval ppl` (llmlab.cli.eval).
"""

from llmlab.eval.perplexity import perplexity, scored_logits, windows
from llmlab.eval.reference import ReferenceLogprobs, compare, reference_logprobs

__all__ = ["ReferenceLogprobs", "compare", "perplexity", "reference_logprobs", "scored_logits", "windows"]
