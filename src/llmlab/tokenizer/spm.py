"""SentencePiece-style BPE: merges over Unicode characters, "▁" for spaces, bytes only as a fallback.

Byte-level BPE (bpe.py: GPT-2, Llama 3, Qwen2, SmolLM2) starts every word from its UTF-8 bytes.
The SentencePiece family (Kudo & Richardson 2018, arXiv:1808.06226; Llama 2, Mistral, TinyLlama)
starts from *characters* instead:

    text  "Hi  there"  --normalize-->  "▁Hi▁▁there"      (spaces become U+2581 "▁", one "▁" prepended)
          --characters--> ▁ H i ▁ ▁ t h e r e  --merges by rank-->  ▁Hi ▁ ▁there

A character missing from the vocabulary is spelled as byte tokens "<0xE2>" "<0x9C>" "<0xA8>" when the
vocabulary has them (`byte_fallback`), else it becomes the unknown token (consecutive ones fused).
Decoding undoes it: "▁" -> " ", byte tokens -> the UTF-8 they spell, and the space the encoder
prepended is stripped once at the start.

The stages follow Hugging Face `tokenizers` (so ids are identical to it), each kept as the step
list of its tokenizer.json (read by `formats.py`, applied by `steps.py`):

    normalizer     steps Prepend, Replace (a string), NFC/NFD/NFKC/NFKD -- the "legacy" Llama form
                   is [Prepend("▁"), Replace(" ", "▁")], applied to each text segment between
                   special tokens, and the whole segment is then one word
    pre_tokenizer  None, or Metaspace (" " -> "▁"; prepend "▁" always / on the first segment only /
                   never, and only where the text does not already start with "▁"; optionally split
                   before every "▁" so each word is merged on its own)
    model          BPE by merge rank with byte fallback, unk and ignore_merges, merged the way HF does
                   (lowest rank first, leftmost on ties) with a heap, so a legacy segment of
                   thousands of characters costs O(n log n), not O(n^2)
    decoder        steps Replace, ByteFallback, Fuse, Strip, Metaspace, applied to the list of token
                   strings in order, exactly as HF's decode_chain does

GGUF stores this family as `tokenizer.ggml.model = "llama"` with per-token scores instead of merges;
`gguf_vocab.py` turns scores into merge ranks. The character tokenizer is exported through this class
too: its characters are a BPE vocabulary with no merges (`from_chars`).
"""

from __future__ import annotations

import heapq

import regex

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import Tokenizer, special_pattern, split_special
from llmlab.tokenizer.steps import (DECODER_STEPS, NORMALIZER_STEPS, SPACE, byte_of, decode_steps, flatten_steps,
                                    metaspace_scheme, normalize)

_SURROGATE = regex.compile("[\ud800-\udfff]")


class SentencePieceBPE(Tokenizer):
    """vocab[id] -> token text; merges (id, id) in rank order; the pipeline steps described above."""

    kind = "spm"

    def __init__(self, vocab: list[str], merges: list[tuple[int, int]], special_tokens: dict[str, int] | None = None,
                 *, normalizer: list[dict] | None = None, pre_tokenizer: dict | None = None,
                 decoder: list[dict] | None = None, unk_id: int | None = None, byte_fallback: bool = False,
                 fuse_unk: bool = False, ignore_merges: bool = False, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None, add_bos: bool = False, add_eos: bool = False,
                 chat_template: str | None = None, bos_token: str | None = None, eos_token: str | None = None):
        self.vocab = list(vocab)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens or {})
        self.normalizer = flatten_steps(normalizer, "normalizer", NORMALIZER_STEPS)
        if pre_tokenizer is not None and pre_tokenizer.get("type") != "Metaspace":
            raise LLMLabError(f"pre-tokenizer {pre_tokenizer.get('type')!r} is not supported with a SentencePiece-"
                              "style vocabulary (supported: none, Metaspace)")
        self.pre_tokenizer = pre_tokenizer
        self.decoder = flatten_steps(decoder, "decoder", DECODER_STEPS)
        self.unk_id, self.byte_fallback, self.fuse_unk = unk_id, bool(byte_fallback), bool(fuse_unk)
        self.ignore_merges = bool(ignore_merges)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.chat_template = chat_template
        self.bos_token = bos_token if bos_token is not None else self._name_of(bos_id)
        self.eos_token = eos_token if eos_token is not None else self._name_of(eos_id)
        special_ids = set(self.special_tokens.values())
        self.lookup = {t: i for i, t in enumerate(self.vocab) if i not in special_ids}
        self.byte_ids = [self.lookup.get(f"<0x{b:02X}>") for b in range(256)]
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            merged = self.lookup.get(self.vocab[a] + self.vocab[b])
            if merged is None:
                raise LLMLabError(f"merge {rank} ({self.vocab[a]!r} + {self.vocab[b]!r}) produces a token "
                                  "missing from the vocabulary: the merges do not belong to this vocabulary")
            self.ranks[(a, b)] = (rank, merged)  # a pair listed twice keeps its last rank, as in HF
        self._special_re = special_pattern(self.special_tokens)
        self._cache: dict[str, list[int]] = {}
        self._bytes: list[bytes | None] = [None] * len(self.vocab)
        # A legacy segment is one long word. If no merge makes a token with a "▁" after another
        # character (true of SentencePiece vocabularies, which split words at spaces), no merge can
        # cross the point before such a "▁": cutting there gives the same ids, and the cut words hit
        # the cache. Checked once here; otherwise (or with ignore_merges, which HF applies to the whole
        # word only) the segment is merged whole, as HF does.
        space = (pre_tokenizer or {}).get("replacement", SPACE)
        crossing = regex.compile(f"[^{regex.escape(space)}]{regex.escape(space)}")
        self._cut = (regex.compile(f"(?<=[^{regex.escape(space)}])(?={regex.escape(space)})")
                     if space in self.lookup and not self.ignore_merges
                     and not any(crossing.search(self.vocab[m]) for _, m in self.ranks.values()) else None)

    @classmethod
    def from_chars(cls, chars: list[str]) -> "SentencePieceBPE":
        """A character vocabulary as BPE with no merges: each character is its own token, the text is
        not normalized, and decoding concatenates (HF's Fuse). Characters outside the vocabulary
        have no unknown token to go to, so HF `tokenizers` (and this class) drop them."""
        return cls(list(chars), [], decoder=[{"type": "Fuse"}])

    def _name_of(self, token_id: int | None) -> str | None:
        return next((s for s, i in self.special_tokens.items() if i == token_id), None)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ encode

    def _pre_tokenize(self, text: str, first: bool) -> list[str]:
        meta = self.pre_tokenizer
        if meta is None:
            return [text] if text else []
        space = meta.get("replacement", SPACE)
        text = text.replace(" ", space)
        scheme = metaspace_scheme(meta)
        if text and (scheme == "always" or (scheme == "first" and first)) and not text.startswith(space):
            text = space + text
        if not meta.get("split", True):
            return [text] if text else []
        return [p for p in regex.split(f"(?={regex.escape(space)})", text) if p]  # each word keeps its "▁"

    def _symbols(self, piece: str) -> list[int]:
        """A word's starting symbols, as HF's BPE builds them: each character's id, else its byte
        tokens, else the unknown token (runs of unknowns fused into one when fuse_unk)."""
        out: list[int] = []
        unk = False  # an unknown token waiting to be emitted
        for ch in piece:
            i = self.lookup.get(ch)
            if i is not None:
                if unk:
                    out.append(self.unk_id)
                    unk = False
                out.append(i)
                continue
            if self.byte_fallback:
                ids = [self.byte_ids[b] for b in ch.encode("utf-8")]
                if None not in ids:
                    out.extend(ids)  # HF emits these before a pending unknown token; so do we
                    continue
            if self.unk_id is not None:
                if unk and not self.fuse_unk:
                    out.append(self.unk_id)
                unk = True
            # no unknown token at all: the character is dropped, as HF does
        if unk:
            out.append(self.unk_id)
        return out

    def _merge(self, symbols: list[int]) -> list[int]:
        """Apply merges, lowest rank first and leftmost among equals, until none applies."""
        n = len(symbols)
        if n < 2:
            return symbols
        ranks = self.ranks
        sym: list[int | None] = list(symbols)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        nxt[-1] = -1
        heap = [(r[0], i, r[1]) for i, pair in enumerate(zip(symbols, symbols[1:])) if (r := ranks.get(pair))]
        heapq.heapify(heap)
        while heap:
            _, i, new = heapq.heappop(heap)
            j = nxt[i]
            if sym[i] is None or j == -1:
                continue
            found = ranks.get((sym[i], sym[j]))
            if found is None or found[1] != new:
                continue  # stale: one side was merged into something else since this was pushed
            sym[i], sym[j] = new, None
            nxt[i] = nxt[j]
            if nxt[j] != -1:
                prv[nxt[j]] = i
            for left, right in ((prv[i], i), (i, nxt[i])):
                if left != -1 and right != -1 and (r := ranks.get((sym[left], sym[right]))):
                    heapq.heappush(heap, (r[0], left, r[1]))
        return [s for s in sym if s is not None]

    def _encode_word(self, piece: str) -> list[int]:
        if self.ignore_merges and piece in self.lookup:
            return [self.lookup[piece]]
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        ids = self._merge(self._symbols(piece))
        if len(piece) < 256 and len(self._cache) < 200_000:  # legacy segments are whole lines: not worth keeping
            self._cache[piece] = ids
        return ids

    def _encode_segment(self, text: str, first: bool) -> list[int]:
        out: list[int] = []
        for piece in self._pre_tokenize(normalize(self.normalizer, text), first):
            if self._cut is None or len(piece) < 32:
                out.extend(self._encode_word(piece))
            else:
                for word in self._cut.split(piece):
                    out.extend(self._encode_word(word))
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids for `text` with special-token strings treated as plain text."""
        return self.encode(text)

    def encode(self, text: str, allowed_special: bool | str | set = False, add_special: bool = False) -> list[int]:
        """Ids for `text`; allowed_special and add_special as in `BPETokenizer.encode`."""
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)  # lone surrogates have no UTF-8 form: U+FFFD, as bpe.py does
        out: list[int] = []
        for k, part in enumerate(split_special(text, self._special_re, self.special_tokens, allowed_special)):
            # Segment 0 is the one at the start of the text: Metaspace's "first" scheme prefixes only it.
            out.extend([part] if isinstance(part, int) else self._encode_segment(part, k == 0))
        return self.with_special(out) if add_special else out

    # ------------------------------------------------------------------ decode

    def _check(self, ids: list[int]) -> None:
        bad = next((i for i in ids if not 0 <= i < len(self.vocab)), None)
        if bad is not None:
            raise LLMLabError(f"token id {bad} is outside this tokenizer's vocabulary (0..{len(self.vocab) - 1})")

    def decode(self, ids: list[int]) -> str:
        """Text for `ids`, as HF `tokenizers` decodes them (special tokens included)."""
        self._check(ids)
        tokens = [self.vocab[i] for i in ids]
        if not self.decoder:
            return " ".join(tokens)  # HF's behaviour for a tokenizer without a decoder
        return "".join(decode_steps(self.decoder, tokens))

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The bytes the tokens stand for, concatenated: what a streaming decoder shows piece by piece.
        Unlike `decode`, no leading space is stripped (a continuation keeps the space of its first word)."""
        self._check(ids)
        out = []
        for i in ids:
            if self._bytes[i] is None:
                token = self.vocab[i]
                b = byte_of(token) if self.byte_fallback else None
                if b is not None:
                    self._bytes[i] = bytes([b])
                else:
                    space = (self.pre_tokenizer or {}).get("replacement", SPACE)
                    self._bytes[i] = (token.replace(space, " ") if self.maps_spaces else token).encode("utf-8")
            out.append(self._bytes[i])
        return b"".join(out)

    @property
    def maps_spaces(self) -> bool:
        """Whether spaces are written as "▁" inside tokens (every real SentencePiece vocabulary)."""
        return self.pre_tokenizer is not None or any(s["type"] == "Replace" and s.get("content") == SPACE
                                                     for s in self.normalizer)

    @property
    def adds_prefix(self) -> bool:
        """Whether the encoder prepends "▁" to the text (SentencePiece's add_dummy_prefix)."""
        if self.pre_tokenizer is not None:
            return metaspace_scheme(self.pre_tokenizer) != "never"
        return any(s["type"] == "Prepend" for s in self.normalizer)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        from llmlab.tokenizer.chat import render_chat

        return render_chat(self, messages, add_generation_prompt, **kwargs)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        return {"type": self.kind, "vocab": self.vocab, "merges": [list(m) for m in self.merges],
                "special_tokens": self.special_tokens, "normalizer": self.normalizer,
                "pre_tokenizer": self.pre_tokenizer, "decoder": self.decoder, "unk_id": self.unk_id,
                "byte_fallback": self.byte_fallback, "fuse_unk": self.fuse_unk, "ignore_merges": self.ignore_merges,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "add_bos": self.add_bos,
                "add_eos": self.add_eos, "chat_template": self.chat_template, "bos_token": self.bos_token,
                "eos_token": self.eos_token}

    @classmethod
    def from_dict(cls, data: dict) -> "SentencePieceBPE":
        keys = ("normalizer", "pre_tokenizer", "decoder", "unk_id", "byte_fallback", "fuse_unk", "ignore_merges",
                "bos_id", "eos_id", "pad_id", "add_bos", "add_eos", "chat_template", "bos_token", "eos_token")
        return cls(data["vocab"], [tuple(m) for m in data["merges"]], data.get("special_tokens"),
                   **{k: data[k] for k in keys if k in data})
