"""Byte-level BPE: encoding by merge rank, decoding to bytes, and a fast trainer.

A token is a byte string. Ids 0..255 (for a tokenizer trained here) are the single bytes, so any
text, in any script, encodes with no unknown token. Training learns merges (a, b) -> new id in
order; encoding a piece starts from its bytes and repeatedly applies the merge of lowest rank
(earliest learned) among adjacent pairs, exactly as the trainer built them (Sennrich et al. 2016,
arXiv:1508.07909; byte-level as in GPT-2).

Training cost. The textbook loop recounts every pair of the corpus after each merge:
O(merges x corpus). Here the corpus is first reduced to unique pre-token *words* with their
frequencies (Shakespeare: 4.8 MB of text, ~40k distinct words), pair counts are kept in a dict with
an index pair -> words containing it, and a merge touches only those words, updating counts by
difference. The next best pair comes from a max-heap with lazy deletion (an entry is used only if
its count is still current). Cost: O(sum over merges of the lengths of the words the merge touches,
x log) -- seconds instead of minutes.

Options real vocabularies need (read from their files by `formats.py`):
    normalizer     Unicode normalization applied before splitting ("NFC" for Qwen2): a decomposed
                   "e" + U+0301 then encodes exactly like the precomposed "é"
    ignore_merges  (Llama 3) a pre-token that is itself in the vocabulary is emitted as that one id,
                   without replaying merges, which can end elsewhere (HF `ignore_merges`, llama.cpp
                   turns it on for the llama-bpe pre-tokenizer)
    add_bos/eos    what `encode(text, add_special=True)` frames the ids with (see base.py)
"""

from __future__ import annotations

import heapq
import unicodedata
from collections import Counter, defaultdict

import regex

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import Tokenizer, special_pattern, split_special
from llmlab.tokenizer.patterns import pretokenize, resolve_pattern


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


UNICODE_FORMS = (None, "NFC", "NFD", "NFKC", "NFKD")
# Lone surrogates are possible in Python strings but have no UTF-8 form.
_SURROGATE = regex.compile("[\ud800-\udfff]")


class BPETokenizer(Tokenizer):
    """vocab[id] -> bytes; merges in rank order; a split pattern; special tokens by name."""

    kind = "bpe"

    def __init__(self, vocab: list[bytes], merges: list[tuple[int, int]], pattern: str = "gpt2",
                 special_tokens: dict[str, int] | None = None, split_digits: bool = False,
                 bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None, bos_token: str | None = None, eos_token: str | None = None,
                 normalizer: str | None = None, ignore_merges: bool = False, add_bos: bool = False,
                 add_eos: bool = False):
        if normalizer not in UNICODE_FORMS:
            raise LLMLabError(f"unknown normalizer {normalizer!r}: use one of NFC, NFD, NFKC, NFKD or None")
        self.vocab = list(vocab)
        self.normalizer, self.ignore_merges = normalizer, bool(ignore_merges)
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.merges = [tuple(m) for m in merges]
        self.pattern = resolve_pattern(pattern)
        self.split_digits = split_digits
        self.special_tokens = dict(special_tokens or {})
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.chat_template = chat_template
        self.bos_token = bos_token if bos_token is not None else self._name_of(bos_id)
        self.eos_token = eos_token if eos_token is not None else self._name_of(eos_id)
        special_ids = set(self.special_tokens.values())
        lookup = {tok: i for i, tok in enumerate(self.vocab) if i not in special_ids}
        self._lookup = lookup
        # Id of each single byte. Some real vocabularies lack a few control bytes; like Hugging
        # Face's BPE without an unknown token, we drop such a byte when encoding.
        self.byte_ids = [lookup.get(bytes([b])) for b in range(256)]
        # (a, b) -> (rank, id of a+b). The merged token's id comes from the vocabulary, so
        # vocabularies whose ids are not in merge order (most real ones) work too.
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            merged = lookup.get(self.vocab[a] + self.vocab[b])
            if merged is None:
                raise LLMLabError(f"merge {rank} ({self.vocab[a]!r} + {self.vocab[b]!r}) produces a token "
                                  "missing from the vocabulary: the merges do not belong to this vocabulary")
            self.ranks[(a, b)] = (rank, merged)
        self._special_re = special_pattern(self.special_tokens)
        self._cache: dict[str, list[int]] = {}

    def _name_of(self, token_id: int | None) -> str | None:
        return next((s for s, i in self.special_tokens.items() if i == token_id), None)

    # ------------------------------------------------------------------ encode

    def _encode_piece(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        data = piece.encode("utf-8")
        if self.ignore_merges and data in self._lookup:
            return [self._lookup[data]]
        ids = [self.byte_ids[b] for b in data if self.byte_ids[b] is not None]
        while len(ids) > 1:
            best, best_rank = None, None
            for pair in zip(ids, ids[1:]):
                found = self.ranks.get(pair)
                if found is not None and (best_rank is None or found[0] < best_rank):
                    best, best_rank = pair, found[0]
            if best is None:
                break
            ids = merge_pair(ids, best, self.ranks[best][1])
        if len(self._cache) < 500_000:
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids for `text` with special-token strings treated as plain text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the documented rule is U+FFFD
            text = _SURROGATE.sub("\ufffd", text)
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        out: list[int] = []
        for piece in pretokenize(text, self.pattern, self.split_digits):
            out.extend(self._encode_piece(piece))
        return out

    def encode(self, text: str, allowed_special: bool | str | set = False, add_special: bool = False) -> list[int]:
        """Ids for `text`. With allowed_special=True/"all" (or a set of names), special tokens written
        literally in the text, e.g. "<|im_start|>", become their ids; by default they are encoded as
        ordinary text, so user input cannot inject control tokens. add_special=True adds BOS/EOS as
        the model expects (`add_bos` / `add_eos`), like HF's add_special_tokens=True."""
        out: list[int] = []
        for part in split_special(text, self._special_re, self.special_tokens, allowed_special):
            out.extend([part] if isinstance(part, int) else self.encode_ordinary(part))
        return self.with_special(out) if add_special else out

    # ------------------------------------------------------------------ decode

    def decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return b"".join(self.vocab[i] for i in ids)
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < len(self.vocab))
            raise LLMLabError(f"token id {bad} is outside this tokenizer's vocabulary (0..{len(self.vocab) - 1})") from None

    def decode(self, ids: list[int]) -> str:
        """Bytes -> UTF-8; an invalid sequence (e.g. half a character) becomes U+FFFD, as HF does."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        from llmlab.tokenizer.chat import render_chat

        return render_chat(self, messages, add_generation_prompt, **kwargs)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        return {"type": self.kind, "pattern": self.pattern, "split_digits": self.split_digits,
                # latin-1 maps bytes 0..255 to code points 0..255: a lossless, compact JSON form.
                "vocab": [t.decode("latin-1") for t in self.vocab], "merges": [list(m) for m in self.merges],
                "special_tokens": self.special_tokens, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "chat_template": self.chat_template,
                "bos_token": self.bos_token, "eos_token": self.eos_token, "normalizer": self.normalizer,
                "ignore_merges": self.ignore_merges, "add_bos": self.add_bos, "add_eos": self.add_eos}

    @classmethod
    def from_dict(cls, data: dict) -> "BPETokenizer":
        return cls([t.encode("latin-1") for t in data["vocab"]], [tuple(m) for m in data["merges"]],
                   data["pattern"], data.get("special_tokens"), data.get("split_digits", False),
                   data.get("bos_id"), data.get("eos_id"), data.get("pad_id"), data.get("chat_template"),
                   data.get("bos_token"), data.get("eos_token"), data.get("normalizer"),
                   data.get("ignore_merges", False), data.get("add_bos", False), data.get("add_eos", False))


# ---------------------------------------------------------------------- training


def train_bpe(text: str, vocab_size: int, pattern: str = "gpt4", special_tokens: tuple[str, ...] = ("<|endoftext|>",),
              min_frequency: int = 2, progress: bool = False) -> BPETokenizer:
    """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`. Deterministic: ties in
    pair count go to the pair with the smaller ids (the one whose parts were learned earlier)."""
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise LLMLabError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
    pattern = resolve_pattern(pattern)
    word_counts = Counter(pretokenize(_SURROGATE.sub("\ufffd", text), pattern))
    words = [list(w.encode("utf-8")) for w in word_counts]
    freqs = list(word_counts.values())

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)   # pair -> indices of words containing it
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([b]) for b in range(256)]
    merges: list[tuple[int, int]] = []
    from llmlab.core.progress import progress as progress_bar
    bar = progress_bar(total=n_merges, desc="bpe merges", unit="merge", disable=not progress)
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if -neg != pair_counts.get(pair, 0):
            continue  # stale entry: this pair's count changed after it was pushed
        if -neg < min_frequency:
            break
        new_id = len(vocab)
        merges.append(pair)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        changed: set[tuple[int, int]] = set()
        for wi in where.pop(pair, ()):
            w, f = words[wi], freqs[wi]
            merged = merge_pair(w, pair, new_id)
            if len(merged) == len(w):
                continue
            for q in zip(w, w[1:]):          # take the word's old pairs out ...
                pair_counts[q] -= f
                changed.add(q)
            for q in zip(merged, merged[1:]):  # ... and its new pairs in
                pair_counts[q] += f
                where[q].add(wi)
                changed.add(q)
            words[wi] = merged
        pair_counts.pop(pair, None)
        for q in changed:
            c = pair_counts.get(q, 0)
            if c > 0:
                heapq.heappush(heap, (-c, q))
            else:
                pair_counts.pop(q, None)
        bar.update(1)
    bar.close()
    specials = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
    vocab += [s.encode("utf-8") for s in special_tokens]
    eos = specials.get("<|endoftext|>")
    return BPETokenizer(vocab, merges, pattern, specials, eos_id=eos, bos_id=None)
