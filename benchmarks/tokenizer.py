"""Tokenizer training and encoding: llmlab's from-scratch BPE vs Hugging Face `tokenizers` (Rust).

    python benchmarks/tokenizer.py            # full built-in Shakespeare (train on 90%, measure on the last 10%)
    python benchmarks/tokenizer.py --quick    # a 1 MB slice

One run, same text, same regexes: training time for 4,096 and 16,384 tokens, compression (bytes per
token) on held-out text, and single-thread encode throughput of our pure-Python encoder, our
vocabulary through the `tokenizers` fast path, and `tokenizers` with its own trained vocabulary;
plus SmolLM2's real tokenizer, ours vs `tokenizers`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread for the Rust side too (set before import)

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from llmlab.data.shakespeare import shakespeare_text  # noqa: E402
from llmlab.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from llmlab.tokenizer.fast import fast_encoder  # noqa: E402
from llmlab.tokenizer.patterns import PATTERNS  # noqa: E402


def hf_train(text: str, vocab_size: int, pattern: str) -> tuple[Tokenizer, float]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PATTERNS[pattern]), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.perf_counter()
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok, time.perf_counter() - t0


def throughput(encode, text: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = len(encode(text))
    return len(text.encode()) / (time.perf_counter() - t0) / 1e6, n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 MB of text instead of 4.8 MB")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--patterns", nargs="+", default=["gpt2", "gpt4"])
    args = p.parse_args()
    text = shakespeare_text(tiny=args.quick)
    cut = int(len(text) * 0.9)
    train_text, held = text[:cut], text[cut:]
    held_bytes = len(held.encode())
    print(f"\n## BPE on Shakespeare: train {len(train_text.encode()) / 1e6:.2f} MB, held-out {held_bytes / 1e6:.2f} MB\n")
    print("| pattern | vocab | train s (llmlab) | train s (HF) | ratio | bytes/token llmlab | bytes/token HF "
          "| llmlab / HF | encode MB/s llmlab | fast path | HF |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for pattern in args.patterns:
        for size in args.sizes:
            t0 = time.perf_counter()
            ours = train_bpe(train_text, size, pattern)
            ours_s = time.perf_counter() - t0
            hf, hf_s = hf_train(train_text, size, pattern)
            ours._cache.clear()
            mbps, n_ours = throughput(ours.encode, held)
            fast_mbps, n_fast = throughput(fast_encoder(ours), held)
            assert n_fast == n_ours, "fast path disagrees with the reference encoder"
            hf_mbps, n_hf = throughput(lambda t: hf.encode(t, add_special_tokens=False).ids, held)
            print(f"| {pattern} | {size:,} | {ours_s:.1f} | {hf_s:.1f} | {ours_s / hf_s:.1f}x | "
                  f"{held_bytes / n_ours:.3f} | {held_bytes / n_hf:.3f} | {n_hf / n_ours:.3f} | "
                  f"{mbps:.2f} | {fast_mbps:.2f} | {hf_mbps:.2f} |")
    smol = load_tokenizer("smollm2")
    hf_smol = Tokenizer.from_str(__import__("json").dumps(__import__("llmlab.tokenizer.formats", fromlist=["x"])
                                                          .hf_tokenizer_json(smol)))
    mbps, n = throughput(smol.encode, held)
    hf_mbps, n_hf = throughput(lambda t: hf_smol.encode(t, add_special_tokens=False).ids, held)
    print(f"\nSmolLM2 tokenizer on the held-out text: llmlab {mbps:.2f} MB/s, HF tokenizers {hf_mbps:.2f} MB/s "
          f"(ids identical: {n == n_hf}), {held_bytes / n:.3f} bytes/token")
    print("\n'llmlab / HF' compression column: HF tokens / llmlab tokens (above 1.0: llmlab compresses better).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
