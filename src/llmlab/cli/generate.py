"""`llmlab generate`: one completion for a prompt, as streamed text or one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults=None, skip: tuple[str, ...] = ()) -> None:
    """One flag per SamplingConfig field (--temperature, --top-p, --repetition-penalty, ...), for every verb
    that generates. defaults: the SamplingConfig this verb starts from (`sampling_from(args, defaults)`);
    --help shows its values, so the help says what the verb really does."""
    from llmlab.core.config import add_config_flags
    from llmlab.infer.sampling import SamplingConfig

    add_config_flags(parser, SamplingConfig, "sampling (SamplingConfig)", skip=skip, shown=defaults)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2", help="smollm2, a .gguf file, a Hugging Face model directory, an llmlab run directory, "
                                                        "or a `llmlab quantize` directory")
    parser.add_argument("--adapter", help="a LoRA adapter to put on --model (merged at load): a `llmlab finetune` "
                                          "run directory or a PEFT adapter directory")
    parser.add_argument("--native-gguf", action="store_true",
                        help="run a GGUF's own Q8_0/Q4_0/Q4_1 blocks as int8/int4 layers (the file's exact values, "
                             "4.5-8.5 bits per weight in memory) instead of dequantizing them to --dtype")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 weights (and activations)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decode step (static KV cache, fused matrix-vector loops) at load: about a "
                             "minute the first time, seconds once inductor's on-disk cache is warm; then 2.5-3x the "
                             "eager decode speed on AMD EPYC, less on Intel Xeon (docs/03-inference.md)")
    add_sampling_arguments(parser)
    spec = parser.add_argument_group("speculative decoding (llmlab.infer.speculative; single prompts, same output "
                                     "distribution, greedy text token-identical)")
    spec.add_argument("--speculative", choices=["prompt-lookup", "draft"],
                      help="draft tokens by matching the context's last n-gram earlier in the context (prompt-lookup, "
                           "no second model), or with a draft model (draft, see --draft); the target checks them "
                           "all in one forward pass")
    spec.add_argument("--draft", metavar="MODEL", help="the draft model (implies --speculative draft): any --model "
                                                       "source with the target's vocabulary, e.g. a quantized copy")
    spec.add_argument("--draft-dtype", help="float32 or bfloat16 for the draft model (None: --dtype)")
    spec.add_argument("--draft-native-gguf", action="store_true",
                      help="run a GGUF draft's own Q8_0/Q4_0/Q4_1 blocks as int8/int4 layers (as --native-gguf)")
    spec.add_argument("--num-draft", type=int, default=5, metavar="K", help="tokens drafted per target pass")
    spec.add_argument("--ngram", type=int, default=3, metavar="N", help="prompt-lookup: longest n-gram matched")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="the prompt text")
    parser.add_argument("--prompt-file", type=Path, help="read the prompt from this file")
    parser.add_argument("--prompts", type=Path, metavar="FILE",
                        help="many prompts, one per line (or a .jsonl of {\"prompt\": ...} objects), generated "
                             "together by the continuous-batching scheduler; prints each reply (--json: one JSON "
                             "line per prompt)")
    parser.add_argument("--max-batch", type=int, default=64, help="with --prompts: sequences decoded at once")
    parser.add_argument("--raw", action="store_true",
                        help="send the prompt as plain text, without the chat template (models without a "
                             "template, e.g. base models and our own runs, always get plain text)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, finish_reason, usage, timings")
    parser.add_argument("--overflow", default="error", choices=["error", "truncate", "shift"],
                        help="when prompt + --max-new-tokens exceed the model's context: error (a message with the "
                             "numbers); truncate (drop the oldest prompt tokens); shift (generate past the context: "
                             "when it is full, keep its newest half and go on, as `llmlab sample` does for small "
                             "models; one --prompt at a time, no --speculative)")
    add_model_arguments(parser)


def sampling_from(args: argparse.Namespace, defaults=None):
    """The SamplingConfig the flags ask for: `defaults` (None: SamplingConfig()) with every given flag applied."""
    from llmlab.core.config import apply_flags
    from llmlab.infer.sampling import SamplingConfig

    return apply_flags(defaults if defaults is not None else SamplingConfig(), args)


def speculative_from(args: argparse.Namespace):
    """The SpeculativeConfig the flags ask for, or None (plain decoding)."""
    from llmlab.core.errors import LLMLabError
    from llmlab.infer.speculative import SpeculativeConfig

    method = args.speculative or ("draft" if args.draft else None)
    if method is None:
        return None
    if method == "prompt-lookup" and args.draft:
        raise LLMLabError("--draft MODEL goes with --speculative draft, not prompt-lookup: drop one of them")
    if method == "draft" and not args.draft:
        raise LLMLabError("--speculative draft needs --draft MODEL (e.g. a quantized copy of --model)")
    return SpeculativeConfig(method, num_draft=args.num_draft, ngram=args.ngram, draft=args.draft,
                             draft_dtype=args.draft_dtype, draft_native_gguf=args.draft_native_gguf)


def speculative_summary(timings: dict) -> str:
    """'; prompt-lookup: 40/60 drafts accepted (67%), 21 target passes (2.9 tokens each)', or ''."""
    s = timings.get("speculative")
    if not s:
        return ""
    return (f"; {s['method']}: {s['accepted']}/{s['drafted']} drafts accepted ({s['acceptance_rate']:.0%}), "
            f"{s['target_passes']} target passes ({s['tokens_per_pass']:.2f} tokens each)")


def run(args: argparse.Namespace) -> int:
    from llmlab.core.errors import LLMLabError
    from llmlab.infer import Engine

    if args.prompts:
        return run_many(args)
    if args.prompt_file:
        if not args.prompt_file.is_file():
            raise LLMLabError(f"--prompt-file {args.prompt_file}: no such file")
        prompt = args.prompt_file.read_text(encoding="utf-8")
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise LLMLabError("give --prompt TEXT or --prompt-file PATH")
    speculative = speculative_from(args)
    engine = Engine.load(args.model, args.device, args.dtype, compile=args.compile, adapter=args.adapter,
                         native_gguf=args.native_gguf, speculative=speculative)
    config = sampling_from(args)
    result: dict = {}
    for delta in engine.stream(prompt, config, raw=True if args.raw else None, overflow=args.overflow, result=result):
        if not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    completion = result["completion"]
    if args.json:
        print(json.dumps(completion.as_dict(), ensure_ascii=False))
    else:
        t = completion.timings
        compiled = f"; compile {t['compile_s']:.1f} s (not in decode)" if args.compile else ""
        print(f"\n[{len(completion.token_ids)} tokens, {completion.finish_reason}; prefill {t['prefill_tok_s']:.0f} tok/s, "
              f"decode {t['decode_tok_s']:.1f} tok/s{compiled}{speculative_summary(t)}]", file=sys.stderr)
    return 0


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line, or the "prompt" field of each line of a .jsonl file."""
    from llmlab.core.errors import LLMLabError

    if not path.is_file():
        raise LLMLabError(f"--prompts {path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError as e:
            raise LLMLabError(f"--prompts {path}, line {n}: not JSON ({e}); write one {{\"prompt\": ...}} per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise LLMLabError(f"--prompts {path}, line {n}: needs a string field \"prompt\"")
        prompts.append(record["prompt"])
    return prompts


def run_many(args: argparse.Namespace) -> int:
    """--prompts FILE: every prompt through Engine.generate_batch (the continuous-batching scheduler)."""
    import time

    from llmlab.core.errors import LLMLabError
    from llmlab.infer import Engine

    prompts = read_prompts(args.prompts)
    if not prompts:
        raise LLMLabError(f"--prompts {args.prompts}: no prompts in it")
    if args.max_batch < 1:
        raise LLMLabError(f"--max-batch {args.max_batch}: must be at least 1")
    if speculative_from(args) is not None:
        raise LLMLabError("speculative decoding works on one prompt at a time: drop --speculative/--draft with --prompts")
    if args.overflow == "shift":
        raise LLMLabError("--overflow shift works on one prompt at a time: use --prompt, or drop --overflow with --prompts")
    engine = Engine.load(args.model, args.device, args.dtype, adapter=args.adapter, native_gguf=args.native_gguf)
    t0 = time.perf_counter()
    completions = engine.generate_batch(prompts, sampling_from(args), raw=True if args.raw else None,
                                        max_batch=args.max_batch)
    elapsed = time.perf_counter() - t0
    for prompt, completion in zip(prompts, completions):
        if args.json:
            print(json.dumps({"prompt": prompt, **completion.as_dict()}, ensure_ascii=False))
        else:
            print(f"### {prompt}\n{completion.text}\n")
    tokens = sum(len(c.token_ids) for c in completions)
    print(f"[{len(prompts)} prompts, {tokens} tokens in {elapsed:.1f} s: {tokens / elapsed:.1f} tok/s, "
          f"batches of up to {args.max_batch}]", file=sys.stderr)
    return 0
