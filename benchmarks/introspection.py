"""What looking inside costs, and whether it sees what transformers sees: SmolLM2-135M on one prompt.

    .venv/bin/python benchmarks/introspection.py                    # prompts of 128 and 512 tokens
    .venv/bin/python benchmarks/introspection.py --lengths 256 --repeats 5 --json

Ours: `load_model("smollm2")` (the Q4_1 GGUF dequantized to float32). The peer: transformers'
LlamaForCausalLM on the same weights (exported with `llmlab export smollm2 --to hf`), whose
`output_attentions=True` needs its eager attention (SDPA cannot return the weights), which is also
what TransformerLens-style tools read. Rows, each the median of --repeats forward passes, timed round-robin:
    plain                 our forward as every other command runs it (SDPA)
    plain, after probes   the same, after a trace, an ablation and a recording have come and gone:
                          the hooks-off case, which must cost nothing
    + residual stream     return_hidden_states=True
    + attention, 3 layers what `llmlab inspect attention` computes by default
    + everything          hidden states and every layer's attention (what HF eager returns)
    HF plain / HF eager + outputs   the peer, same threads, same prompt
Parity: the largest |difference| between our and HF's attention weights and hidden states.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="128,512", help="prompt lengths in tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=7, help="timed forward passes per row (the median is shown)")
    p.add_argument("--hf-dir", type=Path, help="the Hugging Face export (kept, reused when present); default: temp")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both sides")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


def interleaved_medians(configs: dict, repeats: int) -> dict[str, float]:
    """Median seconds per config, timed round-robin (one pass of each per round) so that drift in
    the machine's load, which 2 shared cores have plenty of, falls on every row alike. A config is
    (setup, timed): setup runs untimed right before each timed call."""
    for setup, timed in configs.values():      # warm-up: allocator, oneDNN primitives
        setup()
        timed()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (setup, timed) in configs.items():
            setup()
            t0 = time.perf_counter()
            timed()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def run(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from llmlab.core.assets import pydocs_topics
    from llmlab.inspect.trace import ablated_heads, recording_inputs, trace
    from llmlab.model.export import export_model
    from llmlab.model.source import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model("smollm2")
    model.eval()
    with tempfile.TemporaryDirectory() as scratch:
        hf_dir = args.hf_dir or Path(scratch) / "hf"
        if not (hf_dir / "config.json").is_file():
            export_model("smollm2", "hf", hf_dir)
        hf_plain = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        hf_eager = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                                     attn_implementation="eager").eval()
    topics = pydocs_topics()
    text = "\n\n".join(topics[k] for k in sorted(topics))
    all_ids = tokenizer.encode(text)
    rows = []
    for length in (int(v) for v in args.lengths.split(",")):
        ids = torch.tensor([all_ids[:length]])

        def nothing():
            pass

        def probe_session():               # a trace, an ablation and a recording come and go
            trace(model, ids[0].tolist(), attention_layers=[0, 15, 29], mlp=True)
            with ablated_heads(model, {3: [1]}), recording_inputs(model, ["blocks.0.attn.wo"]):
                model(ids)

        with torch.no_grad():
            t = interleaved_medians({
                "plain": (nothing, lambda: model(ids)),
                "after_probes": (probe_session, lambda: model(ids)),
                "residual": (nothing, lambda: model(ids, return_hidden_states=True)),
                "three": (nothing, lambda: model(ids, return_hidden_states=True, return_attention=[0, 15, 29])),
                "everything": (nothing, lambda: model(ids, return_hidden_states=True, return_attention=True)),
                "hf_plain": (nothing, lambda: hf_plain(ids)),
                "hf_outputs": (nothing, lambda: hf_eager(ids, output_attentions=True, output_hidden_states=True)),
            }, args.repeats)
            plain, after, residual, three, everything, hf_fwd, hf_out = t.values()
            ours = model(ids, return_hidden_states=True, return_attention=True)
            ref = hf_eager(ids, output_attentions=True, output_hidden_states=True)
        attention_diff = max(float((a[0] - b[0]).abs().max()) for a, b in zip(ours["attentions"], ref.attentions))
        hidden_diff = max(float((a[0] - b[0]).abs().max() / b[0].abs().max())
                          for a, b in zip(ours["hidden_states"][:-1], ref.hidden_states[:-1]))
        rows.append({"tokens": length, "plain_s": plain, "plain_after_probes_s": after, "residual_s": residual,
                     "attention_3_layers_s": three, "everything_s": everything, "hf_plain_s": hf_fwd,
                     "hf_eager_outputs_s": hf_out, "max_attention_diff": attention_diff,
                     "max_hidden_rel_diff": hidden_diff})
    return {"machine": describe(args.threads), "torch": torch.__version__,
            "transformers": transformers.__version__, "rows": rows}


def print_tables(result: dict) -> None:
    print(f"# {result['machine']}; torch {result['torch']}, transformers {result['transformers']}")
    names = [("plain", "plain_s"), ("plain, after probes", "plain_after_probes_s"),
             ("+ residual stream", "residual_s"), ("+ attention, 3 layers", "attention_3_layers_s"),
             ("+ everything", "everything_s"), ("HF plain (sdpa)", "hf_plain_s"),
             ("HF eager + outputs", "hf_eager_outputs_s")]
    for row in result["rows"]:
        print(f"\nprompt of {row['tokens']} tokens          ms    x ours plain")
        for label, key in names:
            print(f"  {label:<24} {1000 * row[key]:8.1f}  {row[key] / row['plain_s']:6.2f}")
        print(f"  HF eager + outputs / ours + everything: {row['hf_eager_outputs_s'] / row['everything_s']:.2f} "
              f"(above 1: ours is faster); max |attention diff| {row['max_attention_diff']:.1e}, "
              f"max relative hidden-state diff {row['max_hidden_rel_diff']:.1e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
