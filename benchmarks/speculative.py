"""Speculative decoding on SmolLM2-135M: plain greedy decoding vs prompt lookup vs a draft model.

    python benchmarks/speculative.py                                  # 128 new tokens; draft: smollm2 in bfloat16
    python benchmarks/speculative.py --draft smollm2 --draft-native-gguf   # the GGUF's own int4 blocks as draft
    python benchmarks/speculative.py --draft none                     # no draft-model rows
    python benchmarks/speculative.py --new 8 --rounds 1               # a quick check that it runs

Two prompts, greedy, SmolLM2's chat template:
  rag   Python's own documentation of the `for` statement (llmlab.core.assets.pydocs_topics, ~450
        tokens) and a question whose answer quotes it: prompt lookup finds the quoted n-grams;
  chat  a free request with nothing to copy from: prompt lookup rarely fires, a draft model still can.

Per row: new tokens, decode tokens/s (the tokens after the first over the time after the prefill,
drafting included; a draft model reads the prompt inside the prefill, which is not in this figure),
acceptance rate (kept / drafted), tokens per target forward pass after the prefill (plain: 1.00), what
Leviathan et al.'s eq. 1 predicts for that acceptance, (1 - a^(k+1)) / (1 - a), the speed-up over
plain decoding of the same prompt, and whether the tokens are identical to plain decoding's (they
must be: greedy speculation only ever keeps the target's own argmax). Rounds interleave the rows
(ABCABC) and the table shows medians; one warm-up generation runs first.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _machine import describe

QUESTION = ("What happens when a \"break\" statement is executed in the first suite of a for loop? "
            "Answer by quoting the documentation above word for word.")
CHAT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def prompts() -> dict[str, list[dict]]:
    from llmlab.core.assets import pydocs_topics

    doc = pydocs_topics()["for"]
    return {"rag": [{"role": "user", "content": f"Documentation:\n\n{doc}\n\n{QUESTION}"}],
            "chat": [{"role": "user", "content": CHAT}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=128, help="max new tokens per generation (stops at EOS)")
    parser.add_argument("--num-draft", type=int, default=5, help="k: tokens drafted per target pass")
    parser.add_argument("--ngram", type=int, default=3, help="prompt lookup's longest n-gram")
    parser.add_argument("--draft", default="smollm2", help="draft model spec, or 'none' to skip its rows")
    parser.add_argument("--draft-dtype", default="bfloat16", help="the draft model's dtype")
    parser.add_argument("--draft-native-gguf", action="store_true", help="a GGUF draft's own int8/int4 blocks")
    parser.add_argument("--dtype", default="float32", help="the target's dtype")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llmlab.infer import Engine, SamplingConfig
    from llmlab.infer.speculative import SpeculativeConfig, expected_tokens_per_pass, load_draft_model

    print(f"# speculative decoding, SmolLM2-135M ({args.dtype}), greedy, up to {args.new} new tokens, "
          f"k = {args.num_draft}, ngram = {args.ngram}")
    print(f"# {describe(args.threads)}")
    engine = Engine.load("smollm2", device="cpu", dtype=args.dtype)
    modes: dict[str, tuple[SpeculativeConfig | None, torch.nn.Module | None]] = {
        "plain": (None, None),
        "prompt-lookup": (SpeculativeConfig("prompt-lookup", num_draft=args.num_draft, ngram=args.ngram), None)}
    if args.draft.lower() != "none":
        spec = SpeculativeConfig("draft", num_draft=args.num_draft, draft=args.draft, draft_dtype=args.draft_dtype,
                                 draft_native_gguf=args.draft_native_gguf)
        kind = "native GGUF blocks" if args.draft_native_gguf else args.draft_dtype
        modes[f"draft {args.draft} ({kind})"] = (spec, load_draft_model(spec, engine.model, engine.device))
    config = SamplingConfig(max_new_tokens=args.new, temperature=0)
    engine.generate(prompts()["chat"], SamplingConfig(max_new_tokens=4, temperature=0))   # warm-up

    rows = []
    for name, messages in prompts().items():
        runs: dict[str, list] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, (spec, draft) in modes.items():
                engine.use_speculative(spec, draft)
                runs[mode].append(engine.generate(messages, config))
        plain_ids = runs["plain"][0].token_ids
        plain_speed = statistics.median(c.timings["decode_tok_s"] for c in runs["plain"])
        prompt_tokens = runs["plain"][0].prompt_tokens
        for mode, completions in runs.items():
            speed = statistics.median(c.timings["decode_tok_s"] for c in completions)
            s = completions[0].timings.get("speculative")
            rate = s["acceptance_rate"] if s else None
            rows.append([f"{name} ({prompt_tokens} tok)", mode, str(len(completions[0].token_ids)), f"{speed:.1f}",
                         f"{rate:.0%}" if s else "-", f"{s['tokens_per_pass']:.2f}" if s else "1.00",
                         f"{expected_tokens_per_pass(rate, args.num_draft):.2f}" if s else "-",
                         f"{speed / plain_speed:.2f}x" if plain_speed else "-",
                         "yes" if all(c.token_ids == plain_ids for c in completions) else "NO"])

    header = ("prompt", "mode", "tokens", "decode tok/s", "accepted", "tok/pass", "eq. 1", "speed-up", "identical")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    for r in [list(header)] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print("# tok/pass: tokens per target forward pass after the prefill (plain decoding: 1.00); eq. 1: "
          "(1 - a^(k+1)) / (1 - a) tokens per pass for acceptance rate a (Leviathan et al. 2023), if every pass drafted k")


if __name__ == "__main__":
    main()
