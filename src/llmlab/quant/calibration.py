"""Calibration for GPTQ and AWQ: sample text as token ids, then run a model one block at a time.

Both methods choose codes from the activations each linear layer sees on a little real text (a
few hundred sequences; GPTQ's paper used 128 x 2048 tokens of C4, AWQ's 128 x 512 of the Pile).
Sources, all offline:

    builtin:pydocs       Python's documentation topics (English technical prose, in CPython)
    builtin:shakespeare  all the plays (llmlab.data.shakespeare)
    file:PATH            any UTF-8 text file

Block by block. A model's activations on 65,536 tokens are 151 MB per hidden state at SmolLM2's
width, and there are dozens of them per block, so neither method runs the whole model at once.
`block_inputs` runs the embedding only (a pre-hook on block 0 raises before the block does any
work) and keeps the hidden states entering block 0; `run_block` then feeds them through one block,
batch by batch, writing the result over its input. A quantizer holds one block's inputs and
outputs, plus the statistics `InputStats` accumulates from hooks on that block's linear layers.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llmlab.core.errors import LLMLabError

SOURCES = ("builtin:pydocs", "builtin:shakespeare", "file:PATH")

# ----------------------------------------------------------------------------- calibration text


def _documents(source: str) -> list[str]:
    if source == "builtin:pydocs":
        from llmlab.core.assets import pydocs_topics
        topics = pydocs_topics()
        return [topics[name] for name in sorted(topics)]
    if source == "builtin:shakespeare":
        from llmlab.data.shakespeare import shakespeare_text
        return shakespeare_text().split("\n\n")
    if source.startswith("file:"):
        path = Path(source[len("file:"):]).expanduser()
        if not path.is_file():
            raise LLMLabError(f"calibration file {str(path)!r} (from {source!r}) does not exist: give file:PATH "
                              "with the path of a UTF-8 text file")
        try:
            return [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise LLMLabError(f"calibration file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    raise LLMLabError(f"unknown calibration source {source!r}: choose one of {', '.join(SOURCES)}")


def calibration_text(source: str = "builtin:pydocs", seed: int = 0) -> str:
    """The source's text, its documents in a seeded order and the whole rotated to start at a
    seeded line: different seeds give different samples when only part of it is used."""
    docs = _documents(source)
    rng = random.Random(seed)
    if len(docs) > 1:
        rng.shuffle(docs)
    text = "\n\n".join(docs)
    if not text.strip():
        raise LLMLabError(f"calibration source {source!r} holds no text")
    start = text.find("\n", rng.randrange(len(text))) + 1   # the start of a line (0 when none follows)
    return text[start:] + "\n\n" + text[:start]


def calibration_ids(tokenizer, source: str = "builtin:pydocs", tokens: int = 16384, seq_len: int = 512,
                    seed: int = 0) -> Tensor:
    """(n_seq, seq_len) int64 token ids of the source's text, n_seq = tokens // seq_len.

    Sequences are consecutive stretches of the text (each starts with BOS when the tokenizer's
    model expects one). A source too short for `tokens` gives as many whole sequences as it holds,
    with a warning."""
    if seq_len < 2 or tokens < seq_len:
        raise LLMLabError(f"calibration needs seq_len >= 2 and tokens >= seq_len; got tokens={tokens}, "
                          f"seq_len={seq_len}: ask for at least one whole sequence")
    n_seq = tokens // seq_len
    bos = [tokenizer.bos_id] if getattr(tokenizer, "add_bos", False) and tokenizer.bos_id is not None else []
    body = seq_len - len(bos)
    text = calibration_text(source, seed)
    # Encode only as much text as needed (BPE encoding costs ~1 s per MB): a guess of 8 characters
    # per token, doubled until it is enough.
    chars = 8 * n_seq * body
    while True:
        ids = tokenizer.encode(text[:chars])
        if len(ids) >= n_seq * body or chars >= len(text):
            break
        chars *= 2
    have = len(ids) // body
    if have == 0:
        raise LLMLabError(f"calibration source {source!r} has only {len(ids)} tokens, fewer than one sequence of "
                          f"{seq_len}: use a longer text or a smaller seq_len")
    if have < n_seq:
        warnings.warn(f"calibration source {source!r} has {len(ids)} tokens: using {have} sequences of {seq_len} "
                      f"instead of the {n_seq} asked for", stacklevel=2)
        n_seq = have
    rows = torch.tensor(ids[: n_seq * body], dtype=torch.long).view(n_seq, body)
    if bos:
        rows = torch.cat([torch.full((n_seq, 1), bos[0], dtype=torch.long), rows], dim=1)
    return rows


def check_calibration(model: nn.Module, calib_ids: Tensor) -> None:
    """Calibration ids must fit the model: (n_seq, T) integers, T <= block_size, ids < vocab_size."""
    config = model.config
    if calib_ids.dim() != 2 or calib_ids.dtype.is_floating_point or calib_ids.numel() == 0:
        raise LLMLabError(f"calibration ids must be a non-empty (n_seq, seq_len) integer tensor; got "
                          f"{calib_ids.dtype} of shape {tuple(calib_ids.shape)} (make them with calibration_ids)")
    if calib_ids.size(1) > config.block_size:
        raise LLMLabError(f"calibration sequences of {calib_ids.size(1)} tokens exceed the model's context of "
                          f"{config.block_size}: use a seq_len of at most {config.block_size}")
    if int(calib_ids.max()) >= config.vocab_size or int(calib_ids.min()) < 0:
        raise LLMLabError(f"calibration ids go up to {int(calib_ids.max())} but the model has {config.vocab_size} "
                          "tokens: make them with this model's own tokenizer")


# ----------------------------------------------------------------------------- block by block


class _ReachedBlock(Exception):
    """Raised by the pre-hook on block 0 once it has seen the block's input."""

    def __init__(self, x: Tensor, rope: Any):
        self.x, self.rope = x, rope


@torch.no_grad()
def block_inputs(model: nn.Module, calib_ids: Tensor, batch_size: int = 8) -> tuple[Tensor, Any]:
    """(hidden states entering block 0 (n_seq, T, C), the rope tables block 0 gets or None).

    The model's own forward computes them (embeddings, positions), so this stays right for any
    embedding the model has; the pre-hook stops it before block 0 runs. Every sequence has the
    same length and positions 0..T-1, so one rope tuple serves every batch."""
    def stop(module, args):
        raise _ReachedBlock(args[0], args[1])

    device = next(model.parameters()).device
    hidden, rope = None, None
    handle = model.blocks[0].register_forward_pre_hook(stop)
    try:
        for start in range(0, calib_ids.size(0), batch_size):
            try:
                model(calib_ids[start:start + batch_size].to(device))
            except _ReachedBlock as reached:
                if hidden is None:
                    hidden = reached.x.new_empty(calib_ids.size(0), *reached.x.shape[1:])
                    rope = reached.rope
                hidden[start:start + reached.x.size(0)] = reached.x
    finally:
        handle.remove()
    return hidden, rope


@torch.no_grad()
def run_block(block: nn.Module, hidden: Tensor, rope: Any, batch_size: int = 8, out: Tensor | None = None) -> Tensor | None:
    """Apply `block` to `hidden` (n_seq, T, C) a batch of sequences at a time. The outputs go into
    `out` (which may be `hidden` itself: each batch is read before it is overwritten); with no
    `out` they are dropped (a pass only for the hooks' sake)."""
    for start in range(0, hidden.size(0), batch_size):
        y, _ = block(hidden[start:start + batch_size], rope)
        if out is not None:
            out[start:start + y.size(0)] = y
    return out


class InputStats:
    """Forward pre-hooks on linear layers that accumulate, over every calibration token, the Gram
    matrix X^T X of each layer's input (float32, (in, in)) and optionally sum |x| per channel.

    Layers fed the very same tensor (q/k/v after the attention norm, gate/up after the MLP norm)
    share one accumulator: the hook sees that its input *is* the previous hook's input."""

    def __init__(self, layers: dict[str, nn.Module], abs_sum: bool = False):
        self.abs_sum = abs_sum
        self.gram_sums: dict[str, Tensor] = {}
        self.abs_sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.owner: dict[str, str] = {}      # layer -> the layer whose accumulator it shares
        self._last: tuple[Tensor | None, str] = (None, "")
        self._handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in layers.items()]

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            last, last_name = self._last
            if x is last:
                self.owner[name] = self.owner[last_name]
                return
            self._last = (x, name)
            self.owner[name] = name
            flat = x.detach().reshape(-1, x.size(-1)).float()
            if name not in self.gram_sums:
                self.gram_sums[name] = flat.new_zeros(flat.size(1), flat.size(1))
                self.abs_sums[name] = flat.new_zeros(flat.size(1))
                self.counts[name] = 0
            self.gram_sums[name].addmm_(flat.T, flat)
            if self.abs_sum:
                self.abs_sums[name] += flat.abs().sum(0)
            self.counts[name] += flat.size(0)
        return hook

    def gram(self, name: str) -> Tensor:
        """sum over tokens of x x^T for the layer's input."""
        return self.gram_sums[self.owner[name]]

    def count(self, name: str) -> int:
        return self.counts[self.owner[name]]

    def abs_mean(self, name: str) -> Tensor:
        """mean |x| per input channel (needs abs_sum=True)."""
        return self.abs_sums[self.owner[name]] / self.count(name)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._last = [], (None, "")

    def __enter__(self) -> "InputStats":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def block_linears(model: nn.Module, index: int, names: list[str]) -> dict[str, nn.Module]:
    """{name within the block ("attn.wq"): module} for the model-level `names` in block `index`."""
    prefix = f"blocks.{index}."
    return {name[len(prefix):]: model.get_submodule(name) for name in names if name.startswith(prefix)}


def target_linears(model: nn.Module, skip, calib_ids: Tensor | None = None, group_size: int | None = None,
                   bits: int = 4) -> list[str]:
    """Names of the model's nn.Linear layers a quantizer should replace: all but those `skip`'s
    patterns (llmlab.model.surgery patterns) select. With calib_ids / group_size, also check that
    the calibration fits the model and that the group size divides every target's input width."""
    from llmlab.model.surgery import select_linears
    from llmlab.quant.int8 import check_group

    if calib_ids is not None:
        check_calibration(model, calib_ids)

    if not hasattr(model, "blocks") or not hasattr(model, "config"):
        raise LLMLabError(f"GPTQ and AWQ need an llmlab Transformer; got {type(model).__name__}")
    skip = [skip] if isinstance(skip, str) else list(skip or ())
    skipped = set(select_linears(model, skip)) if skip else set()
    targets = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skipped]
    for name in targets if group_size else ():
        check_group(model.get_submodule(name).in_features, group_size, f"{name}: int{bits}")
    return targets


class Progress:
    """'gptq: block 3/30, 12.3 s' lines on stderr (stdout stays clean for --json output)."""

    def __init__(self, tag: str, total: int, enabled: bool = True):
        self.tag, self.total, self.enabled, self.start = tag, total, enabled, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(self, done: int, what: str = "block") -> None:
        if self.enabled:
            print(f"{self.tag}: {what} {done}/{self.total}, {self.elapsed():.1f} s", file=sys.stderr, flush=True)
