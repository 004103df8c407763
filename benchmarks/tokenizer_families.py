"""Id parity and speed for every tokenizer family llmlab reads, against Hugging Face `tokenizers`.

    python benchmarks/tokenizer_families.py            # vocabularies trained on 90% of the built-in Shakespeare
    python benchmarks/tokenizer_families.py --quick    # the 1.1 MB subset

Each vocabulary is trained here by `tokenizers` itself and written in the shape the real models'
files have (Llama 2 legacy tokenizer.json, Mistral-style Metaspace, a "llama" GGUF vocabulary with
scores, Llama 3 with ignore_merges and BOS, Qwen2 with NFC and its digit split, the character
tokenizer exported as tokenizer.json). llmlab loads the file; both encode the held-out 10% line by
line and in one piece, plus a few hard strings (emoji, combining marks, leading spaces). The table
counts the texts whose ids differ (the goal is 0) and the single-thread encode speed of both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread for the Rust side too (set before import)

import gguf  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: E402
from tokenizers import processors, trainers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from llmlab.data.shakespeare import shakespeare_text  # noqa: E402
from llmlab.tokenizer import CharTokenizer, load_tokenizer  # noqa: E402
from llmlab.tokenizer.formats import save_hf_tokenizer  # noqa: E402
from llmlab.tokenizer.patterns import PATTERNS  # noqa: E402

HARD = ["Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨", "combining: e\u0301 a\u0308, precomposed: é ä", "  two leading spaces",
        "Numbers 12345678 3.14", "naïve café, Größe, Ελληνικά, русский, 日本語", "", " ", "\n\n", "tabs\t\tand  runs   "]
SPM_DECODER = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                 decoders.Strip(" ", 1, 0)])


def spm_vocab(train: str, size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama-2 layout: <unk> <s> </s>, 256 byte tokens, then pieces learned with Metaspace splitting."""
    hf = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    hf.train_from_iterator(train.split("\n"), trainers.BpeTrainer(vocab_size=size, special_tokens=["<unk>", "<s>", "</s>"],
                                                                  limit_alphabet=100, show_progress=False))
    model = json.loads(hf.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    return vocab, [tuple(m) for m in model["merges"]]


def spm(vocab, merges, metaspace: bool) -> Tokenizer:
    hf = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.decoder = SPM_DECODER
    hf.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in ("<unk>", "<s>", "</s>")])
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return hf


def byte_level(train: str, size: int, pattern: str, **options) -> Tokenizer:
    hf = Tokenizer(models.BPE(**options))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PATTERNS[pattern]), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([train], trainers.BpeTrainer(vocab_size=size, special_tokens=["<|bos|>"], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    return hf


def write_gguf(path: Path, **fields) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def families(train: str, work: Path):
    """(family, file form, llmlab tokenizer, HF tokenizers reference) for each family."""
    from transformers.tokenization_utils_base import generate_merges

    vocab, merges = spm_vocab(train, 2000)
    for name, metaspace in (("Llama 2 / TinyLlama (legacy)", False), ("Mistral (Metaspace)", True)):
        hf = spm(vocab, merges, metaspace)
        hf.save(str(work / "tokenizer.json"))
        yield name, "tokenizer.json", load_tokenizer(work / "tokenizer.json"), hf
    tokens = list(vocab)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    write_gguf(work / "spm.gguf", tokenizer_model="llama", token_list=tokens, token_scores=scores,
               token_types=[2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259), bos_token_id=1, eos_token_id=2)
    # llama.cpp's rule (a prefix space, spaces as "▁"), merges as transformers derives them from scores
    yield ("Llama 2 GGUF (scores)", '.gguf "llama"', load_tokenizer(work / "spm.gguf"),
           spm(vocab, generate_merges(vocab, dict(zip(tokens, scores))), False))
    for name, pattern, options in (("Llama 3 (ignore_merges, BOS)", "llama3", {"ignore_merges": True}),
                                   ("Qwen2 (NFC, digits)", "qwen2", {})):
        hf = byte_level(train, 4000, pattern, **options)
        if pattern == "qwen2":
            hf.normalizer = normalizers.NFC()
        hf.save(str(work / "tokenizer.json"))
        yield name, "tokenizer.json", load_tokenizer(work / "tokenizer.json"), hf
    model = json.loads(hf.to_str())["model"]
    ordered = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    write_gguf(work / "qwen.gguf", tokenizer_model="gpt2", tokenizer_pre="qwen2", token_list=ordered,
               token_types=[3] + [1] * (len(ordered) - 1), token_merges=[" ".join(m) for m in model["merges"]])
    hf.normalizer, hf.post_processor = None, None  # llama.cpp has no normalizer; no BOS for qwen2
    yield "Qwen2 GGUF (pre qwen2)", '.gguf "gpt2"', load_tokenizer(work / "qwen.gguf"), hf
    char = CharTokenizer.train(train + "".join(HARD))
    save_hf_tokenizer(char, work / "char")
    yield "char (exported)", "tokenizer.json", char, Tokenizer.from_file(str(work / "char" / "tokenizer.json"))


def speed(encode, texts: list[str]) -> float:
    t0 = time.perf_counter()
    for t in texts:
        encode(t)
    return sum(len(t.encode()) for t in texts) / (time.perf_counter() - t0) / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the 1.1 MB subset instead of the 4.8 MB corpus")
    args = p.parse_args()
    text = shakespeare_text(tiny=args.quick)
    cut = int(len(text) * 0.9)
    train, held = text[:cut], text[cut:]
    lines = held.split("\n")
    print(f"\n## Tokenizer families vs HF tokenizers: train {len(train.encode()) / 1e6:.2f} MB, held-out "
          f"{len(held.encode()) / 1e6:.2f} MB ({len(lines):,} lines)\n{describe(threads=1)}\n")
    print("| family | file | texts | ids differ | tokens | encode MB/s llmlab | HF tokenizers | llmlab / HF |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, form, ours, hf in families(train, Path(tmp)):
            texts = lines + HARD + [held]
            char = isinstance(ours, CharTokenizer)
            texts = [t for t in texts if not char or set(t) <= set(ours.chars)]
            special = not char  # BOS too, where the file asks for it
            differ = sum(ours.encode(t, add_special=special) != hf.encode(t, add_special_tokens=special).ids
                         for t in texts)
            tokens = sum(len(ours.encode(t)) for t in lines)
            getattr(ours, "_cache", {}).clear()  # measure from a cold cache
            ours_mbps = speed(ours.encode, lines)
            hf_mbps = speed(lambda t: hf.encode(t, add_special_tokens=False), lines)
            print(f"| {name} | {form} | {len(texts):,} | {differ} | {tokens:,} | {ours_mbps:.2f} | {hf_mbps:.2f} "
                  f"| {ours_mbps / hf_mbps:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
