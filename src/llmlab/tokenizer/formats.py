"""Tokenizer file formats: Hugging Face `tokenizer.json` (read and write); GGUF lives in gguf_vocab.py.

Two families of BPE files, told apart by their pre-tokenizer/decoder:

    byte-level (GPT-2, Llama 3, Qwen2, SmolLM2)  ByteLevel steps; tokens are byte strings shown through
        GPT-2's byte-to-unicode table (space -> "Ġ", newline -> "Ċ", printable ASCII as itself), so a
        vocabulary is valid JSON text. `bytes_to_unicode` rebuilds that table; `BPETokenizer` keeps raw
        bytes and converts only here.
    SentencePiece-style (Llama 2, Mistral, TinyLlama)  Metaspace / Prepend+Replace("▁") steps, byte
        fallback tokens "<0xNN>"; tokens are plain text, read into `SentencePieceBPE` with the steps.

`tokenizer_config.json` beside the file gives the special token names, the chat template and
`add_bos_token`; HF's TemplateProcessing post-processor (`$A` with a special token before it) says
the same about BOS when the config does not. The config overrides, as transformers does.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_text, read_json_object
from llmlab.tokenizer.bpe import UNICODE_FORMS, BPETokenizer
from llmlab.tokenizer.patterns import PATTERNS
from llmlab.tokenizer.spm import SentencePieceBPE
from llmlab.tokenizer.steps import flatten_steps


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
    return BPETokenizer(vocab, _id_merges(tokens, merges), pattern, special, split_digits, **extra)


def _id_merges(tokens: list[str], merges: list[tuple[str, str]]) -> list[tuple[int, int]]:
    index = {s: i for i, s in enumerate(tokens)}
    try:
        return [(index[a], index[b]) for a, b in merges]
    except KeyError as e:
        raise LLMLabError(f"a merge names token {e.args[0]!r}, which is not in the vocabulary") from None


# ---------------------------------------------------------------------- reading tokenizer.json


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


def _unicode_form(normalizer: dict | None) -> str | None:
    """Byte-level files normalize at most with one Unicode form (Qwen2: NFC), maybe in a Sequence."""
    steps = flatten_steps(normalizer, "normalizer", UNICODE_FORMS[1:])
    if len(steps) > 1:
        raise LLMLabError(f"normalizer {[s['type'] for s in steps]} is not supported: at most one Unicode form")
    return steps[0]["type"] if steps else None


def _template_special(post: dict | None) -> tuple[int | None, int | None]:
    """(BOS id, EOS id) that a TemplateProcessing post-processor puts around a single sequence."""
    if not post:
        return None, None
    if post.get("type") == "Sequence":
        found = [_template_special(p) for p in post.get("processors", [])]
        return next((f for f in found if f != (None, None)), (None, None))
    if post.get("type") != "TemplateProcessing":
        return None, None  # ByteLevel (offsets only), BertProcessing ...: nothing we add
    single, specials = post.get("single", []), post.get("special_tokens", {})
    names = [next(iter(item.values()))["id"] if "SpecialToken" in item else None for item in single]
    seq_at = next((k for k, item in enumerate(single) if "Sequence" in item), len(single))

    def id_of(name: str | None) -> int | None:
        ids = specials.get(name, {}).get("ids", []) if name else []
        return ids[0] if ids else None

    before = [n for n in names[:seq_at] if n]
    after = [n for n in names[seq_at + 1:] if n]
    return id_of(before[0]) if before else None, id_of(after[-1]) if after else None


def _has_step(spec, kind: str) -> bool:
    """Whether a tokenizer.json component (maybe a Sequence of them) contains a step of type `kind`."""
    if isinstance(spec, list):
        return any(_has_step(s, kind) for s in spec)
    if not isinstance(spec, dict):
        return False
    return spec.get("type") == kind or any(_has_step(v, kind) for v in spec.values() if isinstance(v, list))


def read_tokenizer_config(directory: Path) -> dict:
    """tokenizer_config.json beside a tokenizer.json, checked: the keys we use have the right types."""
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    fix = "fix it, or delete it to use tokenizer.json alone"
    config = read_json_object(path, fix)
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise LLMLabError(f"{path}: {key} must be a token string (or {{\"content\": ...}}), got {value!r}; {fix}")
        config[key] = value
    for key in ("add_bos_token", "add_eos_token"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise LLMLabError(f"{path}: {key} must be true or false, got {config[key]!r}; {fix}")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if template is not None and not isinstance(template, str):
        raise LLMLabError(f"{path}: chat_template must be a Jinja string, got {type(template).__name__}; {fix}")
    config["chat_template"] = template
    return config


def read_hf_tokenizer(path: str | Path) -> BPETokenizer | SentencePieceBPE:
    """Load a BPE `tokenizer.json` (+ tokenizer_config.json beside it, if present): byte-level into
    BPETokenizer, SentencePiece-style into SentencePieceBPE."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    path = path / "tokenizer.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model", {})
        vocab: dict[str, int] = dict(model["vocab"]) if model.get("type") == "BPE" else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, KeyError, ValueError) as e:
        raise LLMLabError(f"cannot read {path} as a Hugging Face tokenizer.json ({type(e).__name__}: {e})") from None
    if model.get("type") != "BPE":
        raise LLMLabError(f"{path}: tokenizer model {model.get('type')!r} is not supported (only BPE: byte-level "
                          "or SentencePiece-style)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise LLMLabError(f"{path}: BPE with a subword prefix/suffix is not supported")
    if model.get("dropout"):
        raise LLMLabError(f"{path}: BPE dropout is a training-time option; set it to null to use this tokenizer")
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    special = {a["content"]: a["id"] for a in data.get("added_tokens", [])}
    config = read_tokenizer_config(directory)
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    bos, eos, pad = config.get("bos_token"), config.get("eos_token"), config.get("pad_token")
    bos_id, eos_id = vocab.get(bos), vocab.get(eos)
    # BOS/EOS: an explicit add_bos_token in the config wins (transformers rebuilds the post-processor
    # from it); otherwise whatever the tokenizer.json template puts around a sequence.
    template_bos, template_eos = _template_special(data.get("post_processor"))
    add_bos, add_eos = config.get("add_bos_token"), config.get("add_eos_token")
    if add_bos is None:
        add_bos, bos_id = template_bos is not None, bos_id if template_bos is None else template_bos
    if add_eos is None:
        add_eos, eos_id = template_eos is not None, eos_id if template_eos is None else template_eos
    common = dict(bos_id=bos_id, eos_id=eos_id, pad_id=vocab.get(pad), chat_template=template,
                  add_bos=add_bos and bos_id is not None, add_eos=add_eos and eos_id is not None)
    if _has_step(data.get("pre_tokenizer"), "ByteLevel") or _has_step(data.get("decoder"), "ByteLevel"):
        if model.get("byte_fallback"):
            raise LLMLabError(f"{path}: byte-level BPE with byte_fallback is not supported")
        pattern, split_digits = _pre_tokenizer_to_pattern(data.get("pre_tokenizer"))
        return _build(tokens, merges, special, pattern, split_digits, bos_token=bos, eos_token=eos,
                      normalizer=_unicode_form(data.get("normalizer")), ignore_merges=model.get("ignore_merges", False),
                      **common)
    pre = data.get("pre_tokenizer")
    if pre is not None and pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    unk = model.get("unk_token")
    return SentencePieceBPE(tokens, _id_merges(tokens, merges), special, normalizer=data.get("normalizer"),
                            pre_tokenizer=pre, decoder=data.get("decoder"), unk_id=vocab.get(unk) if unk else None,
                            byte_fallback=model.get("byte_fallback", False), fuse_unk=model.get("fuse_unk", False),
                            ignore_merges=model.get("ignore_merges", False), bos_token=bos, eos_token=eos, **common)


# ---------------------------------------------------------------------- writing tokenizer.json


def exportable(tokenizer):
    """The tokenizer in a form HF and GGUF files can hold: a character tokenizer becomes a BPE
    vocabulary of its characters with no merges (same ids); BPE tokenizers are returned as they are."""
    from llmlab.tokenizer.char import CharTokenizer

    if isinstance(tokenizer, CharTokenizer):
        return SentencePieceBPE.from_chars(tokenizer.chars)
    if isinstance(tokenizer, (BPETokenizer, SentencePieceBPE)):
        return tokenizer
    raise LLMLabError(f"a {getattr(tokenizer, 'kind', type(tokenizer).__name__)} tokenizer has no Hugging Face "
                      "tokenizer.json form (char, bpe and spm tokenizers do)")


def _steps(steps: list[dict], key: str) -> dict | None:
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else {"type": "Sequence", key: steps}


def _token_text(tokenizer, i: int) -> str:
    name = tokenizer._name_of(i)
    if name is not None:
        return name
    return tokenizer.vocab[i] if isinstance(tokenizer, SentencePieceBPE) else bytes_to_token(tokenizer.vocab[i])


def _post_processor(tokenizer) -> dict | None:
    """TemplateProcessing that adds BOS/EOS the way `encode(..., add_special=True)` does."""
    add_bos = tokenizer.add_bos and tokenizer.bos_id is not None
    pieces = [(_token_text(tokenizer, tokenizer.bos_id), tokenizer.bos_id)] if add_bos else []
    single = [{"SpecialToken": {"id": pieces[0][0], "type_id": 0}}] if pieces else []
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    if tokenizer.add_eos and tokenizer.eos_id is not None:
        pieces.append((_token_text(tokenizer, tokenizer.eos_id), tokenizer.eos_id))
        single.append({"SpecialToken": {"id": pieces[-1][0], "type_id": 0}})
    if not pieces:
        return None
    pair = single + [dict(item) if "SpecialToken" in item else {"Sequence": {"id": "B", "type_id": 1}}
                     for item in single]
    return {"type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": {name: {"id": name, "ids": [i], "tokens": [name]} for name, i in pieces}}


def hf_tokenizer_json(tokenizer) -> dict:
    """The `tokenizer.json` dict that Hugging Face `tokenizers` loads as the same tokenizer."""
    tokenizer = exportable(tokenizer)
    spm = isinstance(tokenizer, SentencePieceBPE)
    # Special tokens appear both in the model vocabulary (as their literal text, as real HF files
    # have them) and in added_tokens; without the former, transformers re-adds them at new ids.
    special_ids = set(tokenizer.special_tokens.values())
    if spm:
        vocab = {t: i for i, t in enumerate(tokenizer.vocab)}
        merges = [[tokenizer.vocab[a], tokenizer.vocab[b]] for a, b in tokenizer.merges]
        normalizer, pre, decoder = (_steps(tokenizer.normalizer, "normalizers"), tokenizer.pre_tokenizer,
                                    _steps(tokenizer.decoder, "decoders"))
        unk = tokenizer.vocab[tokenizer.unk_id] if tokenizer.unk_id is not None else None
    else:
        vocab = {(t.decode("utf-8") if i in special_ids else bytes_to_token(t)): i for i, t in enumerate(tokenizer.vocab)}
        merges = [[bytes_to_token(tokenizer.vocab[a]), bytes_to_token(tokenizer.vocab[b])] for a, b in tokenizer.merges]
        steps = []
        if tokenizer.split_digits:
            steps.append({"type": "Digits", "individual_digits": True})
        if tokenizer.pattern:
            steps.append({"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False})
        steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
        normalizer = {"type": tokenizer.normalizer} if tokenizer.normalizer else None
        pre = {"type": "Sequence", "pretokenizers": steps}
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        unk = None
    if len(vocab) != len(tokenizer.vocab):
        raise LLMLabError("this vocabulary spells two tokens the same way, which tokenizer.json cannot hold")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s, i in sorted(tokenizer.special_tokens.items(),
                                                                                  key=lambda kv: kv[1])],
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": _post_processor(tokenizer),
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": bool(spm and tokenizer.fuse_unk),
                  "byte_fallback": bool(spm and tokenizer.byte_fallback), "ignore_merges": tokenizer.ignore_merges,
                  "vocab": vocab, "merges": merges},
    }


def save_hf_tokenizer(tokenizer, directory: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (special tokens, BOS rule, chat template) into `directory`."""
    tokenizer = exportable(tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "tokenizer.json", json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
              "pad_token": tokenizer._name_of(tokenizer.pad_id), "add_bos_token": tokenizer.add_bos,
              "add_eos_token": tokenizer.add_eos, "model_max_length": 1_000_000}
    if isinstance(tokenizer, SentencePieceBPE) and tokenizer.unk_id is not None:
        config["unk_token"] = tokenizer.vocab[tokenizer.unk_id]
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
    return directory / "tokenizer.json"


def read_gguf_tokenizer(path: str | Path, reader=None):
    """The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (see `gguf_vocab.py`)."""
    from llmlab.tokenizer.gguf_vocab import read_gguf_tokenizer as read

    return read(path, reader)
