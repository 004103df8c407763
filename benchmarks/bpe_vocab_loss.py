"""Vocabulary size vs model loss: the shakespeare-bpe preset trained at two BPE vocabulary sizes.

    python benchmarks/bpe_vocab_loss.py                              # trains both (500 steps each), then plots
    python benchmarks/bpe_vocab_loss.py --runs runs/bpe512 runs/bpe2048   # only plot existing runs

Loss per token is not comparable across vocabularies (a bigger vocabulary packs more text into a
token), so val loss is converted to bits per byte of text: loss / ln 2 / (bytes per token on val).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from llmlab.data.tokens import TokenDataset
from llmlab.train.config import PRESETS, DataConfig
from llmlab.train.metrics import read_metrics


def bytes_per_token(run_dir: Path) -> float:
    import json
    config = json.loads((run_dir / "config.json").read_text())
    ds = TokenDataset.open(config["data_dir"])
    ids = [int(i) for s in ds.shards["val"] for i in s[:200_000]]
    return len(ds.tokenizer.decode_bytes(ids)) / len(ids)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--max-iters", type=int, default=500)
    p.add_argument("--runs", type=Path, nargs="+", help="plot these finished runs instead of training")
    p.add_argument("--plot", type=Path, default=Path("docs/img/tokenizer-vocab-loss.png"))
    args = p.parse_args()
    runs = args.runs
    if not runs:
        from llmlab.core.config import apply_flags
        from llmlab.train.run import start
        runs = []
        for v in args.vocab_sizes:
            preset = PRESETS["shakespeare-bpe"]
            run = dataclasses.replace(preset, data=DataConfig(tokenizer=f"bpe:{v}:gpt4"),
                                      train=apply_flags(preset.train, argparse.Namespace(
                                          max_iters=args.max_iters, eval_every=100, tensorboard=False)))
            out = Path(__file__).parent / ".cache" / "runs" / f"bpe{v}"
            start(run, out)
            runs.append(out)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    print("| run | vocab | bytes/token (val) | val loss (nats/token) | val bits/byte |")
    print("|---|---|---|---|---|")
    for run in runs:
        bpt = bytes_per_token(run)
        rows = [r for r in read_metrics(run) if r.get("val_loss") is not None]
        steps = [r["step"] for r in rows]
        bpb = [r["val_loss"] / math.log(2) / bpt for r in rows]
        import json
        vocab = json.loads((run / "config.json").read_text())["model"]["vocab_size"]
        ax.plot(steps, bpb, marker="o", label=f"vocab {vocab} ({bpt:.2f} bytes/token)")
        print(f"| {run.name} | {vocab} | {bpt:.3f} | {rows[-1]['val_loss']:.4f} | {bpb[-1]:.4f} |")
    ax.set_xlabel("step (4,096 tokens each)")
    ax.set_ylabel("val bits per byte")
    ax.set_title("shakespeare-bpe: vocabulary size vs loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
