"""Tokenizers in GGUF files: the `tokenizer.ggml.*` metadata llama.cpp reads and writes.

    tokenizer.ggml.model   "gpt2": byte-level BPE (tokens through GPT-2's byte table, merges listed)
                           "llama": SentencePiece (tokens with "▁", per-token scores, no merges)
    tokenizer.ggml.pre     which pre-tokenizer regex llama.cpp compiles in (byte-level only); the names
                           and the regexes they select are llama.cpp's (src/llama-vocab.cpp)
    token_type             1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte ("<0xNN>")
    add_bos_token, add_space_prefix, bos/eos/unknown/padding_token_id

Defaults when a key is absent are llama.cpp's: a "llama" vocabulary adds BOS and a space prefix,
the llama-bpe (Llama 3) pre-tokenizer adds BOS and turns on ignore_merges.

SentencePiece scores -> merges. llama.cpp's SPM tokenizer repeatedly joins the adjacent pair whose
concatenation is a vocabulary token of highest score. That is BPE whose merges are every split
(a, b) of every token a+b, ranked by the token's score; `merges_from_scores` builds that list in the
order transformers' `generate_merges` does, so the same `SentencePieceBPE` serves both files.
"""

from __future__ import annotations

from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.bpe import BPETokenizer
from llmlab.tokenizer.spm import SentencePieceBPE
from llmlab.tokenizer.steps import LEGACY_NORMALIZER, SPACE, SPM_DECODER, byte_of

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's `tokenizer.ggml.pre` names -> (our pattern, split_digits, ignore_merges, add_bos default).
GGUF_PRE = {
    "gpt-2": ("gpt2", False, False, False),
    "gpt2": ("gpt2", False, False, False),        # what llmlab < 0.2 wrote; llama.cpp reads it as "default"
    "default": ("gpt2", False, False, False),     # llama.cpp's fallback (an approximation: it splits punctuation first)
    "smollm": ("gpt2", True, False, False),
    "starcoder": ("gpt2", True, False, False),
    "llama-bpe": ("llama3", False, True, True),
    "llama3": ("llama3", False, True, True),
    "smaug-bpe": ("llama3", False, False, False),  # llama.cpp: the llama3 regex without ignore_merges
    "dbrx": ("llama3", False, False, False),
    "qwen2": ("qwen2", False, False, False),
}


def _reader(path: Path, reader):
    if reader is not None:
        return reader
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise LLMLabError(f"{path}: no such GGUF file") from None
    except Exception as e:  # the gguf library raises ValueError/struct errors on damaged files
        raise LLMLabError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                          "it may be truncated: download it again") from None


def read_gguf_tokenizer(path: str | Path, reader=None) -> BPETokenizer | SentencePieceBPE:
    """The tokenizer in a GGUF file. `reader`: an already open `gguf.GGUFReader` for `path`
    (opening one parses all metadata)."""
    from llmlab.tokenizer.formats import _build

    path = Path(path)
    reader = _reader(path, reader)

    def field(name: str, default=None):
        f = reader.fields.get(name)
        return f.contents() if f is not None else default

    model = field("tokenizer.ggml.model")
    if model is None:
        raise LLMLabError(f"{path} holds no tokenizer (no tokenizer.ggml.* metadata)")
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    ids = {k: field(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
    template = field("tokenizer.chat_template")
    if model == "llama":
        return _spm_from_gguf(tokens, types, field("tokenizer.ggml.scores"), ids, template,
                              field("tokenizer.ggml.add_space_prefix", True), field("tokenizer.ggml.add_bos_token", True),
                              field("tokenizer.ggml.add_eos_token", False))
    if model != "gpt2":
        raise LLMLabError(f"{path}: tokenizer model {model!r} is not supported (gpt2: byte-level BPE, "
                          "llama: SentencePiece BPE)")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE:
        raise LLMLabError(f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(GGUF_PRE)})")
    pattern, split_digits, ignore_merges, add_bos = GGUF_PRE[pre]
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    special = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (CONTROL, USER_DEFINED)}
    return _build(tokens, merges, special, pattern, split_digits, bos_id=ids["bos"], eos_id=ids["eos"],
                  pad_id=ids["padding"], chat_template=template, ignore_merges=ignore_merges,
                  add_bos=bool(field("tokenizer.ggml.add_bos_token", add_bos)) and ids["bos"] is not None,
                  add_eos=bool(field("tokenizer.ggml.add_eos_token", False)) and ids["eos"] is not None)


def merges_from_scores(tokens: list[str], scores: list[float] | None, types: list[int]) -> list[tuple[int, int]]:
    """Every split (a, b) of every normal token a+b whose halves are normal tokens, best score first;
    among equal scores the longer left half first, then token order (transformers' `generate_merges`)."""
    scores = scores if scores is not None else [-float(i) for i in range(len(tokens))]
    normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == NORMAL}
    found = []
    for token, i in normal.items():
        splits = [(normal[token[:k]], normal[token[k:]]) for k in range(1, len(token))
                  if token[:k] in normal and token[k:] in normal]
        found += [(-scores[i], -len(tokens[a]), -len(tokens[b]), i, a, b) for a, b in sorted(splits)]
    found.sort()
    return [(a, b) for *_, a, b in found]


def _spm_from_gguf(tokens, types, scores, ids, template, add_space_prefix, add_bos, add_eos) -> SentencePieceBPE:
    def default(key: str, value: int) -> int | None:
        # llama.cpp assumes <unk>=0, <s>=1, </s>=2 when a "llama" vocabulary names none; we take them
        # only where the vocabulary really has a control/unknown token, never an ordinary character.
        if ids[key] is not None:
            return ids[key]
        return value if value < len(types) and types[value] in (CONTROL, UNKNOWN) else None

    unk = default("unknown", 0)
    bos, eos = default("bos", 1), default("eos", 2)
    special = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (CONTROL, USER_DEFINED)}
    # llama.cpp: a " " prefix when add_space_prefix, then every space written as "▁" (the "legacy"
    # HF form); decoding strips that one space again.
    normalizer = LEGACY_NORMALIZER if add_space_prefix else LEGACY_NORMALIZER[1:]
    decoder = SPM_DECODER if add_space_prefix else SPM_DECODER[:-1]
    return SentencePieceBPE(tokens, merges_from_scores(tokens, scores, types), special, normalizer=normalizer,
                            decoder=decoder, unk_id=unk, byte_fallback=BYTE in types, fuse_unk=True,
                            bos_id=bos, eos_id=eos, pad_id=ids["padding"], add_bos=bool(add_bos) and bos is not None,
                            add_eos=bool(add_eos) and eos is not None, chat_template=template)


def spm_gguf_vocab(tokenizer: SentencePieceBPE) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) that make llama.cpp's SPM tokenizer merge as `tokenizer` does.

    Scores: a token made by merge r gets -r (earlier merges win), single characters, bytes and
    special tokens 0, and a multi-character token no merge makes the lowest scores (llama.cpp would
    still join its halves, last; HF never would). llama.cpp writes spaces as "▁" before looking
    tokens up, so a vocabulary that keeps plain spaces (the character tokenizer's) is respelled."""
    tokens = list(tokenizer.vocab)
    if not tokenizer.maps_spaces:
        if SPACE in tokens:
            raise LLMLabError(f"the vocabulary holds both ' ' and {SPACE!r} (U+2581), which llama.cpp cannot "
                              "tell apart; export with --to hf, or pass --no-tokenizer")
        tokens = [t.replace(" ", SPACE) for t in tokens]
    if len(set(tokens)) != len(tokens):
        raise LLMLabError("the vocabulary spells two tokens the same way, which a GGUF vocabulary cannot hold")
    special_ids = set(tokenizer.special_tokens.values())
    made_by = {}
    for rank, pair in enumerate(tokenizer.merges):
        made_by.setdefault(tokenizer.ranks[pair][1], rank)
    scores, types = [], []
    for i, token in enumerate(tokens):
        if i == tokenizer.unk_id:
            kind = UNKNOWN
        elif i in special_ids:
            kind = CONTROL
        elif tokenizer.byte_fallback and byte_of(token) is not None:
            kind = BYTE
        else:
            kind = NORMAL
        types.append(kind)
        if i in made_by:
            scores.append(-float(made_by[i]))
        elif kind == NORMAL and len(token) > 1:
            scores.append(-float(len(tokenizer.merges) + i))
        else:
            scores.append(0.0)
    return tokens, scores, types
