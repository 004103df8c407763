"""`llmlab tokenizer train | encode | inspect | convert`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SOURCE_HELP = "smollm2, a .gguf file, a tokenizer.json, a Hugging Face model dir, or a saved llmlab tokenizer dir"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE tokenizer")
    train.add_argument("--data", default="shakespeare", help="a named text source (shakespeare, ...) or a text file")
    train.add_argument("--vocab-size", type=int, default=4096, help="final vocabulary size (256 bytes + merges + specials)")
    train.add_argument("--pattern", default="gpt4", help="pre-tokenization: gpt2, gpt4, llama3, none, or a regex")
    train.add_argument("--special", nargs="*", default=["<|endoftext|>"], help="special tokens to add")
    train.add_argument("--min-frequency", type=int, default=2, help="stop when the best pair occurs fewer times")
    train.add_argument("--out", type=Path, required=True, help="directory to save the tokenizer in")
    train.add_argument("--hf", action="store_true", help="also write a Hugging Face tokenizer.json there")

    encode = sub.add_parser("encode", help="encode text and show the ids and pieces")
    encode.add_argument("tokenizer", help=SOURCE_HELP)
    encode.add_argument("text", nargs="?", help="text to encode (or use --text-file)")
    encode.add_argument("--text-file", type=Path, help="read the text from this file")
    encode.add_argument("--add-special", action="store_true",
                        help="parse special tokens in the text and add BOS/EOS where the model expects them")
    encode.add_argument("--json", action="store_true", help='print {"ids": [...], "tokens": [...]}')

    inspect = sub.add_parser("inspect", help="compression and vocabulary statistics")
    inspect.add_argument("tokenizer", help=SOURCE_HELP)
    inspect.add_argument("--text-file", type=Path, help="text to measure on (default: the built-in Shakespeare)")
    inspect.add_argument("--json", action="store_true", help="print the statistics as JSON")

    convert = sub.add_parser("convert", help="convert a tokenizer to another format")
    convert.add_argument("--from", dest="source", required=True, help=SOURCE_HELP)
    convert.add_argument("--to", choices=["hf", "llmlab"], required=True, help="output format")
    convert.add_argument("out", type=Path, help="output: tokenizer.json path or directory (hf), directory (llmlab)")


def _text_of(data: str) -> str:
    from llmlab.data.sources import SOURCES, load_text

    if data in SOURCES:
        return load_text(data)[0]
    return load_text(None, data)[0]


def _read_text_file(path: Path) -> str:
    from llmlab.core.errors import LLMLabError

    if not path.is_file():
        raise LLMLabError(f"--text-file {path}: no such file; give a UTF-8 text file, or the text itself as an argument")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LLMLabError(f"--text-file {path} is not UTF-8 text ({e}); convert it, e.g. iconv -t utf-8") from None


def _pieces(tok, ids: list[int]) -> list[str]:
    return [tok.decode_bytes([i]).decode("utf-8", errors="backslashreplace") if hasattr(tok, "decode_bytes")
            else tok.decode([i]) for i in ids]


def run(args: argparse.Namespace) -> int:
    from llmlab.core.errors import LLMLabError
    from llmlab.tokenizer import load_tokenizer

    if args.action == "train":
        import time

        from llmlab.tokenizer import train_bpe
        text = _text_of(args.data)
        t0 = time.perf_counter()
        tok = train_bpe(text, args.vocab_size, args.pattern, tuple(args.special), args.min_frequency, progress=True)
        path = tok.save(args.out)
        if args.hf:
            from llmlab.tokenizer.formats import save_hf_tokenizer
            save_hf_tokenizer(tok, args.out)
        print(f"trained {tok.vocab_size} tokens on {len(text.encode()):,} bytes in {time.perf_counter() - t0:.1f}s "
              f"-> {path}", file=sys.stderr)
        return 0

    if args.action == "convert":
        tok = load_tokenizer(args.source)
        if args.to == "hf":
            from llmlab.tokenizer.formats import save_hf_tokenizer
            directory = args.out.parent if args.out.suffix == ".json" else args.out
            print(save_hf_tokenizer(tok, directory))
        else:
            print(tok.save(args.out))
        return 0

    # The text first: a missing --text-file is reported before seconds of tokenizer loading.
    if args.text_file:
        text = _read_text_file(args.text_file)
    elif args.action == "encode" and args.text is not None:
        text = args.text
    elif args.action == "encode":
        raise LLMLabError("give the text as an argument or with --text-file")
    else:
        text = _text_of("shakespeare")
    tok = load_tokenizer(args.tokenizer)
    if args.action == "encode":
        if args.add_special and hasattr(tok, "special_tokens"):
            ids = tok.encode(text, allowed_special=True, add_special=True)  # as HF's add_special_tokens=True
        else:
            ids = tok.encode(text)
        pieces = _pieces(tok, ids)
        if args.json:
            print(json.dumps({"ids": ids, "tokens": pieces}, ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))
            colours = ["\033[48;5;153m", "\033[48;5;223m", "\033[48;5;194m", "\033[48;5;225m"]
            coloured = "".join(f"{colours[i % 4]}\033[30m{p}\033[0m" for i, p in enumerate(pieces))
            print(coloured if sys.stdout.isatty() else "|".join(pieces))
            print(f"{len(ids)} tokens, {len(text.encode()) / max(len(ids), 1):.2f} bytes/token", file=sys.stderr)
        return 0

    if args.action == "inspect":
        from collections import Counter
        ids = tok.encode(text)
        counts = Counter(ids)
        vocab_bytes = [tok.decode_bytes([i]) if hasattr(tok, "decode_bytes") else tok.decode([i]).encode()
                       for i in range(tok.vocab_size)]
        longest = sorted(range(tok.vocab_size), key=lambda i: -len(vocab_bytes[i]))[:10]
        stats = {"vocab_size": tok.vocab_size, "text_bytes": len(text.encode()), "tokens": len(ids),
                 "bytes_per_token": len(text.encode()) / max(len(ids), 1),
                 "coverage": len(counts) / tok.vocab_size,
                 "unused_tokens": tok.vocab_size - len(counts),
                 "longest_tokens": [vocab_bytes[i].decode("utf-8", "backslashreplace") for i in longest],
                 "most_common": [[vocab_bytes[i].decode("utf-8", "backslashreplace"), c] for i, c in counts.most_common(10)]}
        if hasattr(tok, "merges") and tok.merges:
            last = [tok.ranks[m][1] for m in tok.merges[-10:]]
            stats["last_merges"] = [[vocab_bytes[i].decode("utf-8", "backslashreplace"), counts.get(i, 0)] for i in last]
        if args.json:
            print(json.dumps(stats, ensure_ascii=False, indent=2))
        else:
            for key, value in stats.items():
                print(f"{key:16s} {value:.3f}" if isinstance(value, float) else f"{key:16s} {value}")
        return 0
    return 2
