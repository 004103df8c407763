"""Chapter 1, exercise: a freshly initialised model's loss is close to ln V.

Before training, a well-initialised model should be unsure about everything: it spreads its
probability evenly over the V tokens of the vocabulary, so the cross-entropy of the true next token
is -ln(1/V) = ln V nats. A first loss far above ln V means the initial logits are large and
confidently wrong (too large an init scale, a missing 1/sqrt(d), an untied head with a big init),
which wastes the first hundreds of steps undoing it. This script measures the first loss of the
`shakespeare-char` model on the built-in `shakespeare-tiny` data, then breaks the init on purpose.

Run: python examples/solutions/01_initial_loss.py    (a few seconds; exits non-zero if a check fails)
"""

from __future__ import annotations

import math

import torch

from llmlab.data.sources import prepare_dataset
from llmlab.model import MODEL_PRESETS, Transformer


def mean_loss(model: Transformer, batches: list[dict]) -> float:
    with torch.no_grad():
        return sum(float(model(b["input_ids"], b["labels"])["loss"]) for b in batches) / len(batches)


def main() -> None:
    torch.manual_seed(0)
    data = prepare_dataset("shakespeare-tiny", None, "char")      # tokenized once, then cached
    vocab = data.tokenizer.vocab_size
    config = MODEL_PRESETS["shakespeare-char"].replace(vocab_size=vocab)
    generator = torch.Generator().manual_seed(0)
    batches = [data.get_batch("train", 8, config.block_size, generator) for _ in range(4)]

    fresh = Transformer(config).eval()
    loss = mean_loss(fresh, batches)
    print(f"vocabulary V = {vocab}: ln V = {math.log(vocab):.3f} nats")
    print(f"fresh shakespeare-char model: loss {loss:.3f} nats ({loss - math.log(vocab):+.3f} vs ln V)")
    assert abs(loss - math.log(vocab)) < 0.15, "a fresh model should be near-uniform over the vocabulary"

    # Break the init: scale the (tied) embedding/output matrix by 10, so initial logits are 10x larger.
    broken = Transformer(config).eval()
    with torch.no_grad():
        broken.tok_emb.weight.mul_(10.0)
    bad = mean_loss(broken, batches)
    print(f"same model, embedding x 10:   loss {bad:.3f} nats ({bad - math.log(vocab):+.3f} vs ln V)")
    assert bad > math.log(vocab) + 0.5, "large initial logits should make the first loss clearly worse than ln V"
    print("OK: the fresh model starts near ln V; a 10x init starts far above it")


if __name__ == "__main__":
    main()
