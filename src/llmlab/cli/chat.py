"""`llmlab chat`: an interactive chat with a model's own chat template, streamed.

Commands inside the chat: /reset clears the history, /system TEXT sets the system prompt,
/quit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmlab.cli.generate import add_model_arguments

    parser.add_argument("--system", help="system prompt")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from llmlab.cli.generate import sampling_from, speculative_from, speculative_summary
    from llmlab.core.errors import LLMLabError
    from llmlab.infer import Engine

    print(f"loading {args.model} ...", file=sys.stderr)
    engine = Engine.load(args.model, args.device, args.dtype, compile=args.compile, adapter=args.adapter,
                         native_gguf=args.native_gguf, speculative=speculative_from(args))
    config = sampling_from(args)
    system = args.system
    history: list[dict] = []
    print(f"chatting with {engine.name} (context {engine.max_context} tokens). /reset, /system TEXT, /quit",
          file=sys.stderr)
    if not engine.has_chat_template:
        print(f"note: {engine.name} has no chat template of its own; using ChatML, which a base model was "
              "never trained on (`llmlab generate --raw` sends plain text)", file=sys.stderr)
    if args.compile and engine.decode_fn is not None:
        print(f"--compile: compiled the decode step in {engine.decode_fn.compile_s:.0f} s (inductor caches it: the "
              "next start takes seconds); a reply that first needs a longer cache (past 256, 512, ... tokens) "
              "compiles once more before it starts", file=sys.stderr)
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            print()
            return 0
        if not line.strip():
            continue
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            history = []
            print("(history cleared)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        result: dict = {}
        try:
            # overflow="truncate": the oldest whole turns are dropped, never the system prompt
            for delta in engine.stream(messages, config, overflow="truncate", result=result):
                sys.stdout.write(delta)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
            history.pop()
            continue
        except LLMLabError as e:
            print(f"\n(error: {e})", file=sys.stderr)
            history.pop()
            continue
        completion = result["completion"]
        history.append({"role": "assistant", "content": completion.text})
        t = completion.timings
        print(f"\n[{len(completion.token_ids)} tokens, {t['decode_tok_s']:.1f} tok/s{speculative_summary(t)}]",
              file=sys.stderr)
