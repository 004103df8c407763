"""Tokenizer file formats: Hugging Face `tokenizer.json` (read and write) and GGUF (read).

Both store byte-level BPE tokens as *strings*, through GPT-2's byte-to-unicode table: each of the
256 bytes is shown as a printable character (space -> "Ġ", newline -> "Ċ", printable ASCII as
itself), so a vocabulary is valid JSON text. `bytes_to_unicode` rebuilds that table; our own
tokenizer keeps raw bytes and converts only at the file boundary.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_text
from llmlab.tokenizer.bpe import BPETokenizer
from llmlab.tokenizer.patterns import PATTERNS


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_bytes(token: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        raise LLMLabError(f"token {token!r} is not byte-level BPE text (character outside GPT-2's byte table)") from None


def bytes_to_token(data: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def _build(tokens: list[str], merges: list[tuple[str, str]], special: dict[str, int], pattern: str,
           split_digits: bool, **extra) -> BPETokenizer:
    special_ids = set(special.values())
    vocab = [s.encode("utf-8") if i in special_ids else token_to_bytes(s) for i, s in enumerate(tokens)]
    index = {s: i for i, s in enumerate(tokens)}
    try:
        id_merges = [(index[a], index[b]) for a, b in merges]
    except KeyError as e:
        raise LLMLabError(f"a merge names token {e.args[0]!r}, which is not in the vocabulary") from None
    return BPETokenizer(vocab, id_merges, pattern, special, split_digits, **extra)


# ---------------------------------------------------------------------- Hugging Face tokenizer.json


def _pre_tokenizer_to_pattern(pre: dict | None) -> tuple[str, bool]:
    """Map the pre-tokenizer configurations byte-level BPE models use onto (pattern, split_digits)."""
    if pre is None:
        return "", False
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    pattern, split_digits = "", False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise LLMLabError("ByteLevel(add_prefix_space=true) is not supported")
            if step.get("use_regex", True):
                pattern = PATTERNS["gpt2"]
        elif kind == "Split":
            pattern = step["pattern"].get("Regex") or step["pattern"].get("String")
            if step.get("behavior") not in ("Isolated", None) or step.get("invert"):
                raise LLMLabError(f"Split pre-tokenizer with behavior {step.get('behavior')} is not supported")
        elif kind == "Digits" and step.get("individual_digits"):
            split_digits = True
        else:
            raise LLMLabError(f"pre-tokenizer {kind!r} is not supported (supported: ByteLevel, Split, Digits)")
    return pattern, split_digits


def read_hf_tokenizer(path: str | Path) -> BPETokenizer:
    """Load a byte-level BPE `tokenizer.json` (+ tokenizer_config.json beside it, if present)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    path = path / "tokenizer.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LLMLabError(f"cannot read {path} as a Hugging Face tokenizer.json ({e})") from None
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise LLMLabError(f"{path}: tokenizer model {model.get('type')!r} is not supported (only byte-level BPE)")
    vocab: dict[str, int] = dict(model["vocab"])
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    special = {a["content"]: a["id"] for a in data.get("added_tokens", [])}
    pattern, split_digits = _pre_tokenizer_to_pattern(data.get("pre_tokenizer"))
    config = {}
    if (directory / "tokenizer_config.json").is_file():
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))

    def token_name(key: str) -> str | None:
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    bos, eos, pad = token_name("bos_token"), token_name("eos_token"), token_name("pad_token")
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    return _build(tokens, merges, special, pattern, split_digits, bos_id=vocab.get(bos), eos_id=vocab.get(eos),
                  pad_id=vocab.get(pad), chat_template=template, bos_token=bos, eos_token=eos)


def hf_tokenizer_json(tokenizer: BPETokenizer) -> dict:
    """The `tokenizer.json` dict that Hugging Face `tokenizers` loads as the same tokenizer."""
    # Special tokens appear both in the model vocabulary (as their literal text, as real HF files
    # have them) and in added_tokens; without the former, transformers re-adds them at new ids.
    special_ids = set(tokenizer.special_tokens.values())
    vocab = {(t.decode("utf-8") if i in special_ids else bytes_to_token(t)): i for i, t in enumerate(tokenizer.vocab)}
    merges = [[bytes_to_token(tokenizer.vocab[a]), bytes_to_token(tokenizer.vocab[b])] for a, b in tokenizer.merges]
    steps = []
    if tokenizer.split_digits:
        steps.append({"type": "Digits", "individual_digits": True})
    if tokenizer.pattern:
        steps.append({"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False})
    steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s, i in sorted(tokenizer.special_tokens.items(),
                                                                                  key=lambda kv: kv[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def save_hf_tokenizer(tokenizer: BPETokenizer, directory: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (special tokens, chat template) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "tokenizer.json", json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
              "pad_token": tokenizer._name_of(tokenizer.pad_id), "model_max_length": 1_000_000}
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
    return directory / "tokenizer.json"


# ---------------------------------------------------------------------- GGUF

# llama.cpp's `tokenizer.ggml.pre` names -> our (pattern, split_digits).
GGUF_PRE = {"gpt2": ("gpt2", False), "default": ("gpt2", False), "smollm": ("gpt2", True),
            "starcoder": ("gpt2", True), "llama-bpe": ("llama3", False), "llama3": ("llama3", False)}


def read_gguf_tokenizer(path: str | Path, reader=None) -> BPETokenizer:
    """The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (byte-level BPE models).
    `reader`: an already open `gguf.GGUFReader` for `path` (opening one parses all metadata)."""
    import gguf

    path = Path(path)
    if reader is None:
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as e:  # the gguf library raises ValueError/struct errors on damaged files
            raise LLMLabError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                              "it may be truncated: download it again") from None

    def field(name: str, default=None):
        f = reader.fields.get(name)
        return f.contents() if f is not None else default

    model = field("tokenizer.ggml.model")
    if model is None:
        raise LLMLabError(f"{path} holds no tokenizer (no tokenizer.ggml.* metadata)")
    if model != "gpt2":
        raise LLMLabError(f"{path}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE:
        raise LLMLabError(f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(GGUF_PRE)})")
    pattern, split_digits = GGUF_PRE[pre]
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    # Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    special = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)}
    return _build(tokens, merges, special, pattern, split_digits,
                  bos_id=field("tokenizer.ggml.bos_token_id"), eos_id=field("tokenizer.ggml.eos_token_id"),
                  pad_id=field("tokenizer.ggml.padding_token_id"), chat_template=field("tokenizer.chat_template"))
