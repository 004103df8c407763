"""Exporting SmolLM2-135M: file size, export and load time, and how close the exported model's
logits stay to the original (docs/03-inference.md, "Importing and exporting checkpoints").

    python benchmarks/export.py                       # GGUF F32 / F16 / Q8_0 and an HF directory
    python benchmarks/export.py --formats gguf-q8_0 hf

Each format is exported with `llmlab.model.export.export_model` (what `llmlab export` runs), loaded
back with `llmlab.model.source.load_model` (what `Engine.load` runs), and run on a fixed 64-token
prompt beside the reference: our model loaded from the original Q4_1 file. Export and load times
come from one run each and move with machine load; sizes, logit differences and top-1 agreement
do not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe

from llmlab.model.export import export_model
from llmlab.model.source import load_model

FORMATS = {"gguf-f32": ("gguf", "f32", "m-f32.gguf"), "gguf-f16": ("gguf", "f16", "m-f16.gguf"),
           "gguf-q8_0": ("gguf", "q8_0", "m-q8_0.gguf"), "hf": ("hf", "f16", "hf_dir")}
TEXT = ("The theatre companies of the sixteenth century travelled between towns with their costumes, "
        "their plays and a cart, and performed wherever a crowd could gather. ") * 3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ref_model, tokenizer, _ = load_model("smollm2")
    ids = torch.tensor([tokenizer.encode(TEXT)[:64]])
    with torch.no_grad():
        ref = ref_model(ids)["logits"][0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.formats:
            to, dtype, target = FORMATS[name]
            out = Path(tmp) / target
            t0 = time.perf_counter()
            summary = export_model("smollm2", to, out, dtype=dtype)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            model, _, _ = load_model(out)
            load_s = time.perf_counter() - t0
            with torch.no_grad():
                logits = model(ids)["logits"][0].float()
            diff = (logits - ref).abs().max().item()
            top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
            rows.append((name, summary["bytes"] / 2**20, export_s, load_s, diff, top1))
            print(f"{name}: {rows[-1]}", file=sys.stderr)
    print(f"\n## SmolLM2-135M-Instruct exported (source: the Q4_1 GGUF dequantized to float32), "
          f"64-token prompt\n\n{describe(args.threads)}\n")
    print("| export | size MiB | export s | load s | max abs logit diff | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, mib, export_s, load_s, diff, top1 in rows:
        print(f"| {name} | {mib:.0f} | {export_s:.1f} | {load_s:.1f} | {diff:.2g} | {100 * top1:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
