"""Supervised fine-tuning data: JSONL examples -> token rows with loss only where the model should speak.

Masking. A chat example is system / user / assistant turns rendered by the model's own chat
template. We train on the assistant turns only (their content and the end-of-turn marker the
template writes after it, e.g. `<|im_end|>\\n`): the model should learn to *answer*, not to predict
what users type or the template's fixed scaffolding, which would spend capacity (and gradient)
on text the model is always given. Ending each target on the end-of-turn token is what teaches the model to
stop. Plain `{"text"}` examples are continued-pretraining data: every token is a target.

Boundaries by prefix rendering. The text before assistant turn i is the template applied to
messages[:i] with the generation prompt (exactly the prompt an inference engine would send), the
text through it is messages[:i+1] without. Their difference is the turn's target text. Tokens
come from encoding the growing text, so they equal the whole conversation's tokens; where a merge
would cross a boundary we encode the new segment on its own, which is what inference does too
(the prompt is tokenized alone, then the model generates).

Packing. Short examples padded to a long context spend most compute on padding. Packing puts
several whole examples into one row (Krell et al. 2021, arXiv:2107.02027). Two things keep a
packed row computing what the examples compute one by one: a document mask (a token attends only
to earlier tokens of its own example) and positions restarting at 0 for each example (essential
for learned absolute positions; under RoPE attention depends only on relative positions, so
there the mask alone suffices and the restart keeps positions small). Labels are
made inside each example, so an example's last token never predicts the next one's first. The
alternative, `pack=False`, batches examples of similar length and pads each batch to its longest.

Batches are a pure function of the dataset and the generator's state (no cursor), so a resumed
run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.core.errors import LLMLabError
from llmlab.model.masks import document_mask
from llmlab.tokenizer.chat import render_chat

ROLES = ("system", "user", "assistant")
FORMS = ('chat {"messages": [{"role": ..., "content": ...}, ...]}, '
         'Alpaca {"instruction": ..., "input": ... (optional), "output": ...} or plain {"text": ...}')
PAD_DOC = -1   # doc id of padding: pads see only pads, real tokens never see pads


@dataclass
class Example:
    """One training example: chat `messages` (role/content dicts) or plain `text`, not both."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None

    def to_json(self) -> dict:
        return {"messages": self.messages} if self.messages is not None else {"text": self.text}


# ---------------------------------------------------------------------- reading


def _parse(obj, where: str) -> Example:
    """One decoded JSON line -> Example, or LLMLabError prefixed with `where` (file:line)."""
    def bad(what: str) -> LLMLabError:
        return LLMLabError(f"{where}: {what}")

    def text_field(key: str, allow_empty: bool = False) -> str:
        value = obj[key]
        if not isinstance(value, str):
            raise bad(f"{key!r} must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise bad(f"{key!r} is empty")
        return value

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}; one example per line: {FORMS}")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
        out = []
        for k, m in enumerate(messages, 1):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise bad(f"message {k} must be an object with 'role' and 'content', got {m!r:.80}")
            if m["role"] not in ROLES:
                raise bad(f"message {k} has unknown role {m['role']!r} (known: {', '.join(ROLES)})")
            if not isinstance(m["content"], str):
                raise bad(f"message {k} ({m['role']}) has non-string content {type(m['content']).__name__}")
            # An empty system prompt is meaningful (it replaces a template's default one).
            if m["role"] != "system" and not m["content"].strip():
                raise bad(f"message {k} ({m['role']}) has empty content")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise bad("the messages have no assistant turn, so nothing would be trained on; add one")
        return Example(messages=out)
    if "instruction" in obj or "output" in obj:
        for key in ("instruction", "output"):
            if key not in obj:
                raise bad(f"Alpaca form needs {key!r}")
        instruction, output = text_field("instruction"), text_field("output")
        extra = text_field("input", allow_empty=True) if "input" in obj and obj["input"] is not None else ""
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": output}])
    if "text" in obj:
        return Example(text=text_field("text"))
    raise bad(f"no known form (keys: {sorted(obj)[:8]}); expected {FORMS}")


def read_examples(path: str | Path) -> list[Example]:
    """Examples from a JSONL file, one per non-blank line, in any of the three forms of FORMS."""
    path = Path(path)
    if not path.is_file():
        raise LLMLabError(f"{path}: no such file (expected JSONL, one example per line: {FORMS})")
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LLMLabError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            examples.append(_parse(obj, f"{path}:{number}"))
    if not examples:
        raise LLMLabError(f"{path} holds no examples; expected JSONL, one per line: {FORMS}")
    return examples


def split_examples(examples: list[Example], val_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, val): a seeded random `val_fraction` of the examples (at least one when the fraction
    is positive and there are two or more), both keeping the file's order."""
    if not 0 <= val_fraction < 1:
        raise LLMLabError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(len(examples) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(examples) > 1:
        n_val = 1
    val = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val])


# ---------------------------------------------------------------------- encoding


def _check_chat_tokenizer(tokenizer) -> None:
    """A chat template is needed. Without one, ChatML (render_chat's fallback) is honest only if
    the vocabulary has ChatML's markers as special tokens; otherwise they would be plain text."""
    if getattr(tokenizer, "chat_template", None):
        return
    special = getattr(tokenizer, "special_tokens", None) or {}
    if "<|im_start|>" in special and "<|im_end|>" in special:
        return
    raise LLMLabError(f"this {getattr(tokenizer, 'kind', type(tokenizer).__name__)} tokenizer has no chat template "
                      "(and no ChatML special tokens to fall back on), so chat examples cannot be rendered; "
                      "fine-tune a chat model's tokenizer, or give plain {\"text\": ...} examples")


def encode_example(tokenizer, example: Example) -> tuple[list[int], list[bool]]:
    """(ids, is_target): is_target[t] says whether token t is one the model learns to produce."""
    if example.text is not None:
        ids = list(tokenizer.encode(example.text, add_special=True))
        if tokenizer.eos_id is not None and (not ids or ids[-1] != tokenizer.eos_id):
            ids.append(tokenizer.eos_id)   # so the model learns where a document ends
        return ids, [True] * len(ids)

    _check_chat_tokenizer(tokenizer)
    messages = example.messages
    ids: list[int] = []
    is_target: list[bool] = []
    covered = ""   # text whose tokens are in `ids`

    def extend(text: str, target: bool) -> None:
        nonlocal covered
        whole = tokenizer.encode(covered + text, allowed_special=True)
        new = whole[len(ids):] if whole[:len(ids)] == ids else tokenizer.encode(text, allowed_special=True)
        ids.extend(new)
        is_target.extend([target] * len(new))
        covered += text

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[:i + 1], add_generation_prompt=False)
        if not before.startswith(covered) or not through.startswith(before):
            raise LLMLabError(
                f"the chat template is not prefix-stable at message {i + 1} (assistant): rendering the "
                f"conversation up to it does not extend the rendering before it ({before[-60:]!r} vs "
                f"{through[:len(before)][-60:]!r}); templates that rewrite earlier turns (e.g. strip past "
                "reasoning) need one example per assistant turn")
        extend(before[len(covered):], False)
        extend(through[len(before):], True)
    # Whatever follows the last assistant turn would be context for nothing: it is left out.
    return ids, is_target


# ---------------------------------------------------------------------- the dataset


class SFTDataset:
    """Encoded train/val examples as a trainer batch source (`get_batch`).

    stats[split]: examples (given), kept, skipped (over seq_len+1 tokens, overlong="skip"),
    truncated, no_targets (dropped: nothing left to learn), tokens (input positions of the kept
    examples), target_tokens; packed also rows and padding (fraction of row slots)."""

    def __init__(self, train: list[Example], val: list[Example], tokenizer, seq_len: int, pack: bool = True,
                 overlong: str = "skip", seed: int = 0, bucket_size: int = 64):
        if overlong not in ("skip", "truncate"):
            raise LLMLabError(f"overlong must be 'skip' or 'truncate', got {overlong!r}")
        if seq_len < 1 or bucket_size < 1:
            raise LLMLabError(f"seq_len and bucket_size must be at least 1, got {seq_len} and {bucket_size}")
        self.tokenizer, self.seq_len, self.pack, self.overlong, self.seed = tokenizer, seq_len, pack, overlong, seed
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = pad if pad is not None else (tokenizer.eos_id if tokenizer.eos_id is not None else 0)
        self.stats: dict[str, dict] = {}
        self.splits: dict[str, dict] = {}
        for split, examples in (("train", train), ("val", val)):
            pieces, self.stats[split] = self._encode(tokenizer, examples)
            # Each split shuffled by its own seeded generator: packing order and bucket ties.
            order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(seed)).tolist()
            pieces = [pieces[i] for i in order]
            self.splits[split] = self._pack(pieces, self.stats[split]) if pack else self._bucket(pieces, bucket_size)
        if not self.stats["train"]["kept"]:
            raise LLMLabError(f"no training example fits: all {self.stats['train']['examples']} are longer than "
                              f"seq_len+1 = {seq_len + 1} tokens or have no target; raise --seq-len or use "
                              "overlong='truncate'")

    def _encode(self, tokenizer, examples: list[Example]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict]:
        """Examples -> (input_ids, labels) pairs of length n-1 for n tokens: labels[t] = ids[t+1]
        where token t+1 is a target, else -100. Making labels per example is what keeps them
        from crossing example boundaries once packed."""
        stats = dict(examples=len(examples), kept=0, skipped=0, truncated=0, no_targets=0, tokens=0, target_tokens=0)
        pieces = []
        for example in examples:
            ids, is_target = encode_example(tokenizer, example)
            if len(ids) > self.seq_len + 1:
                if self.overlong == "skip":
                    stats["skipped"] += 1
                    continue
                ids, is_target = ids[:self.seq_len + 1], is_target[:self.seq_len + 1]   # keep the start
                stats["truncated"] += 1
            labels = [ids[t + 1] if is_target[t + 1] else -100 for t in range(len(ids) - 1)]
            targets = sum(label != -100 for label in labels)
            if not targets:   # e.g. truncation cut off the whole answer: nothing to learn
                stats["no_targets"] += 1
                continue
            stats["kept"] += 1
            stats["tokens"] += len(ids) - 1
            stats["target_tokens"] += targets
            pieces.append((torch.tensor(ids[:-1], dtype=torch.int32), torch.tensor(labels, dtype=torch.int32)))
        return pieces, stats

    def _pack(self, pieces: list[tuple[torch.Tensor, torch.Tensor]], stats: dict) -> dict:
        """First-fit decreasing (bin packing's classic heuristic): longest examples first, each into
        the first row with room for it, else a new row. Rows hold whole examples; the rest of a row is
        padding in its own document. Next-fit in arrival order wastes far more: three 135-token
        examples fill a 512 row, and a fourth of 100 would open a new one though 107 slots are free."""
        rows: list[list[int]] = []
        free: list[int] = []
        for i in sorted(range(len(pieces)), key=lambda i: -len(pieces[i][0])):   # stable: ties keep the shuffle
            need = len(pieces[i][0])
            r = next((r for r, room in enumerate(free) if room >= need), None)
            if r is None:
                rows.append([])
                free.append(self.seq_len)
                r = len(rows) - 1
            rows[r].append(i)
            free[r] -= need
        R, T = len(rows), self.seq_len
        input_ids = torch.full((R, T), self.pad_id, dtype=torch.int32)
        labels = torch.full((R, T), -100, dtype=torch.int32)
        doc_ids = torch.full((R, T), PAD_DOC, dtype=torch.int32)
        positions = torch.zeros((R, T), dtype=torch.int32)
        for r, members in enumerate(rows):
            start = 0
            for doc, i in enumerate(members):
                inp, lab = pieces[i]
                end = start + len(inp)
                input_ids[r, start:end], labels[r, start:end] = inp, lab
                doc_ids[r, start:end] = doc
                positions[r, start:end] = torch.arange(len(inp), dtype=torch.int32)
                start = end
        stats["rows"] = R
        stats["padding"] = 1 - stats["tokens"] / (R * T) if R else 0.0
        return dict(input_ids=input_ids, labels=labels, doc_ids=doc_ids, positions=positions)

    def _bucket(self, pieces: list[tuple[torch.Tensor, torch.Tensor]], bucket_size: int) -> dict:
        """Examples sorted by length (ties in shuffled order), cut into buckets of `bucket_size`."""
        pieces = sorted(pieces, key=lambda p: len(p[0]))   # stable: ties keep the shuffled order
        bounds = [(lo, min(lo + bucket_size, len(pieces))) for lo in range(0, len(pieces), bucket_size)]
        return dict(pieces=pieces, bounds=bounds)

    def __len__(self) -> int:
        return self.stats["train"]["kept"]

    def summary(self) -> str:
        """One line per split, for the caller to print."""
        lines = []
        for split, s in self.stats.items():
            line = (f"{split}: {s['kept']}/{s['examples']} examples, {s['tokens']:,} tokens, "
                    f"{s['target_tokens']:,} targets")
            notes = {"skipped": f"skipped as longer than seq_len+1 = {self.seq_len + 1} tokens",
                     "truncated": f"truncated to {self.seq_len + 1} tokens", "no_targets": "dropped with no target"}
            dropped = [f"{s[k]} {note}" for k, note in notes.items() if s[k]]
            if dropped:
                line += f" ({'; '.join(dropped)})"
            if self.pack:
                line += f", packed into {s['rows']} rows of {self.seq_len} ({s['padding']:.1%} padding)"
            lines.append(line)
        return "\n".join(lines)

    def _check_split(self, split: str) -> dict:
        if split not in self.splits:
            raise LLMLabError(f"unknown split {split!r}: use 'train' or 'val'")
        if not self.stats[split]["kept"]:
            raise LLMLabError(f"the {split!r} split has no examples (none given, or none fit seq_len+1 = "
                              f"{self.seq_len + 1} tokens); give validation data or a val fraction")
        return self.splits[split]

    def _packed_batch(self, data: dict, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": data["input_ids"][rows].long(), "labels": data["labels"][rows].long(),
                "attn_mask": document_mask(data["doc_ids"][rows]), "positions": data["positions"][rows].long()}

    def _padded_batch(self, picked: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        B, T = len(picked), max(len(inp) for inp, _ in picked)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        for b, (inp, lab) in enumerate(picked):
            # Right padding: under causal attention no real token sees a pad, so no mask is needed.
            input_ids[b, :len(inp)], labels[b, :len(inp)] = inp, lab
        return {"input_ids": input_ids, "labels": labels, "positions": torch.arange(T).expand(B, T).contiguous()}

    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`batch_size` rows drawn with `generator` (with replacement). Packed: (B, seq_len) with a
        document mask and restarting positions. Bucketed: (B, longest example in the batch)."""
        if seq_len != self.seq_len:
            raise LLMLabError(f"the SFT data was built for seq_len {self.seq_len}, but a batch of {seq_len} was "
                              "asked for; build the SFTDataset with the run's sequence length")
        data = self._check_split(split)
        if self.pack:
            return self._packed_batch(data, torch.randint(len(data["input_ids"]), (batch_size,), generator=generator))
        # A bucket chosen in proportion to its size, so every example is equally likely overall.
        sizes = torch.tensor([hi - lo for lo, hi in data["bounds"]], dtype=torch.float64)
        lo, hi = data["bounds"][int(torch.multinomial(sizes, 1, generator=generator))]
        picks = (lo + torch.randint(hi - lo, (batch_size,), generator=generator)).tolist()
        return self._padded_batch([data["pieces"][i] for i in picks])

    def all_batches(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every row (packed) or example (bucketed, shortest first) of `split` exactly once, in
        batches of up to `batch_size`: for a full evaluation pass."""
        data = self._check_split(split)
        if self.pack:
            for start in range(0, len(data["input_ids"]), batch_size):
                yield self._packed_batch(data, torch.arange(start, min(start + batch_size, len(data["input_ids"]))))
        else:
            for start in range(0, len(data["pieces"]), batch_size):
                yield self._padded_batch(data["pieces"][start:start + batch_size])
