"""`llmlab <verb>`: one entry point, one small module per verb.

Each verb module in `llmlab.cli` defines
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int
and is imported only when its verb is used, so `llmlab --help` is instant (no torch import).

Errors reach the person as one short paragraph, never a traceback (`--debug` shows it):
    LLMLabError (bad input, said where it was found)     its message, exit status 2
    OSError naming a file (missing, unreadable, ...)    "PATH: no such file or directory", status 2
    argparse's errors                                   the message and where to find --help, status 2
    anything else (a bug)                               "internal error (Type: message)", status 1
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from llmlab.core.errors import LLMLabError

# verb -> (module, one-line description). The order is the order shown in --help.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("llmlab.cli.train", "train a GPT from scratch (or resume a run)"),
    "sample": ("llmlab.cli.sample", "generate text from a trained run's checkpoint"),
    "runs": ("llmlab.cli.runs", "compare run directories: config diffs, losses, overlaid curves"),
    "finetune": ("llmlab.cli.finetune", "fine-tune a pretrained model (LoRA, QLoRA, DoRA, full) and evaluate it"),
    "chat": ("llmlab.cli.chat", "chat with a pretrained model (default: SmolLM2-135M-Instruct)"),
    "generate": ("llmlab.cli.generate", "generate a completion for a prompt (plain text or --json)"),
    "quantize": ("llmlab.cli.quantize", "quantize a model's weights (int8, int4 RTN, GPTQ, AWQ, NF4) into a model directory"),
    "eval": ("llmlab.cli.eval", "evaluate a model: benchmarks (ARC, HellaSwag, MMLU, ...), perplexity, KL divergence vs a reference"),
    "export": ("llmlab.cli.export", "export a model to a Hugging Face directory, GGUF (F16/Q8_0/Q4_0/Q4_1) or PEFT"),
    "tokenizer": ("llmlab.cli.tokenizer", "train, inspect, convert tokenizers and encode text"),
    "serve": ("llmlab.cli.serve", "serve a model over an OpenAI-compatible HTTP API, with continuous batching and a chat page"),
    "rag": ("llmlab.cli.rag", "index documents, search, answer with citations, evaluate retrieval"),
    "data": ("llmlab.cli.data", "curate raw text into clean, deduplicated, tokenized shards"),
    "e2e": ("llmlab.cli.e2e", "raw built-in text to a report card: curate, BPE, pretrain, SFT, evaluate (cached, resumable)"),
    "assistant": ("llmlab.cli.assistant", "a local documentation assistant: index your files, ask, serve, evaluate, tune"),
    "inspect": ("llmlab.cli.inspect", "look inside a model: attention maps, logit lens, surprise, activations, head probes, ablation"),
}


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in a sub-command's help, except the empty ones ("(default: None)" says nothing)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one short paragraph: argparse prints the whole usage block
    first (30 lines for `train`), which buries the one line that says what was wrong.

    `verb_argv` holds the verb's own arguments before they are parsed, for help that depends on
    them: `llmlab train --help --preset small-llama` shows that preset's values as the defaults."""

    verb_argv: list[str] = []

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nsee `{self.prog} --help` for every option\n")


_OS_REASONS = {FileNotFoundError: "no such file or directory", PermissionError: "permission denied",
               IsADirectoryError: "is a directory, where a file was expected",
               NotADirectoryError: "a part of the path is not a directory", FileExistsError: "already exists"}


def _explain(e: BaseException) -> tuple[str, int]:
    """(one-paragraph message, exit status) for an exception that escaped a verb."""
    if isinstance(e, LLMLabError):
        return f"error: {e}", 2
    if isinstance(e, OSError) and e.filename is not None:
        reason = next((r for cls, r in _OS_REASONS.items() if isinstance(e, cls)), None) or e.strerror or str(e)
        path = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"error: {path}: {reason}", 2
    if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return ("error: out of memory on the device: use a smaller --batch-size or --block-size (or a smaller model), "
                "or --device cpu"), 1
    if isinstance(e, OSError):  # e.g. a full disk: the environment, not our code
        return f"error: {e.strerror or e}", 1
    text = " ".join(str(e).split())
    text = text[:300] + "..." if len(text) > 300 else text
    return (f"internal error ({type(e).__name__}: {text}); rerun with --debug for the traceback, "
            "and report it"), 1


def _available_verbs() -> dict[str, tuple[str, str]]:
    return {v: spec for v, spec in VERBS.items() if importlib.util.find_spec(spec[0]) is not None}


def _top_help(verbs: dict[str, tuple[str, str]]) -> str:
    width = max(len(v) for v in verbs)
    lines = ["usage: llmlab [--debug] <verb> [options]", "", "verbs:"]
    lines += [f"  {v:<{width}}  {desc}" for v, (_, desc) in verbs.items()]
    lines += ["", "`llmlab <verb> --help` explains each verb's options."]
    return "\n".join(lines)


def _unknown_options(parser: argparse.ArgumentParser, verb: str, unknown: list[str]) -> None:
    """Name the unknown option, suggest the closest valid one, and list them all."""
    import difflib

    valid = sorted({opt for action in parser._actions for opt in action.option_strings})
    first = next((u.split("=")[0] for u in unknown if u.startswith("-")), unknown[0])
    close = difflib.get_close_matches(first, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    print(f"llmlab {verb}: error: unknown option {first}{hint}\nvalid options: {' '.join(valid)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    verbs = _available_verbs()
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(verbs))
        return 0
    verb = argv[0]
    if verb not in verbs:
        print(f"llmlab: unknown verb {verb!r}\n\n{_top_help(verbs)}", file=sys.stderr)
        return 2
    module = importlib.import_module(verbs[verb][0])
    parser = _Parser(prog=f"llmlab {verb}", description=verbs[verb][1],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.verb_argv = argv[1:]
    module.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv[1:])
    if unknown:
        _unknown_options(parser, verb, unknown)
        return 2
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\nllmlab {verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `llmlab ... | head`: the reader left; say nothing, and keep Python from complaining at exit.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process exits
        return 141
    except Exception as e:
        if debug:
            raise
        message, status = _explain(e)
        print(f"llmlab {verb}: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
