"""How far a model's predictions are from a reference model's: quantization quality.

Perplexity alone hides much of what quantization does: errors that raise some tokens' loss and
lower others' cancel in the mean. llama.cpp's `llama-perplexity --kl-divergence` therefore also
compares the two next-token distributions at every scored position, and so does this module:

    mean KLD         mean over positions of KL(p_ref || p_model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v))
    kld_p99, max     its tail: a few positions where the model goes badly wrong
    top1_agreement   share of positions where both models' most likely token is the same
    ppl_ratio        perplexity(model) / perplexity(reference)

Comparing many models (a dozen quantizations) to one reference should not rerun the reference
each time: `reference_logprobs` runs it once and keeps its log-probabilities of every scored
position (float16: SmolLM2's 49,152-token vocabulary makes that ~100 KB a position, ~800 MB for
8192 positions, so optionally in a numpy memmap file), which `compare` then reads. `compare` also
takes the reference model itself, running both in lockstep (nothing stored; exact float32).
All arithmetic is float32; the stored float16 log-probabilities are renormalized before use, so
the reference distribution sums to 1 and KL(p || p) is 0 up to float16 rounding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.eval.perplexity import scored_logits, summarize


def ids_sha256(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class ReferenceLogprobs:
    """A reference model's log-probabilities at every scored position of one text and windowing."""
    logprobs: np.ndarray   # (positions, V) float16, in memory or a memmap
    top1: np.ndarray       # (positions,) int64: the reference's argmax, taken in float32 (float16 ties)
    nll: float             # summed NLL of the reference over the positions (nats)
    ctx: int
    stride: int
    ids_sha256: str
    model: str = ""

    @property
    def tokens(self) -> int:
        return len(self.top1)

    def meta(self) -> dict:
        return {"nll": self.nll, "ctx": self.ctx, "stride": self.stride, "ids_sha256": self.ids_sha256,
                "model": self.model, "top1": self.top1.tolist()}

    @classmethod
    def open(cls, path: str | Path) -> "ReferenceLogprobs":
        """Reopen what `reference_logprobs(..., path=path)` wrote (memory-mapped, read-only)."""
        path = Path(path)
        meta_path = _meta_path(path)
        if not (path.is_file() and meta_path.is_file()):
            raise LLMLabError(f"{path}: no reference log-probabilities here (write them with "
                              f"reference_logprobs(..., path={str(path)!r}); it also writes {meta_path.name})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return cls(np.load(path, mmap_mode="r"), np.asarray(meta.pop("top1"), dtype=np.int64), **meta)


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def reference_logprobs(model: torch.nn.Module, ids: list[int], ctx: int, stride: int | None = None,
                       device: torch.device | str = "cpu", path: str | Path | None = None, name: str = "",
                       progress_label: str | None = None) -> ReferenceLogprobs:
    """Run the reference once over the windows `perplexity` uses and keep its log-probabilities.
    path: keep them in a .npy memmap there (plus PATH.json with the rest) instead of in memory."""
    stride = ctx if stride is None else stride
    logprobs, top1, total_nll = None, np.empty(len(ids) - 1, dtype=np.int64), 0.0
    for position, logits, targets in scored_logits(model, ids, ctx, stride, device, progress_label):
        lp = F.log_softmax(logits, dim=-1)
        if logprobs is None:   # the vocabulary width is known once the first window ran
            shape = (len(ids) - 1, lp.shape[-1])
            logprobs = (np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape) if path
                        else np.empty(shape, dtype=np.float16))
        n = len(targets)
        logprobs[position:position + n] = lp.half().cpu().numpy()
        top1[position:position + n] = lp.argmax(dim=-1).cpu().numpy()
        total_nll -= float(lp.gather(1, targets[:, None]).sum())
    reference = ReferenceLogprobs(logprobs, top1, total_nll, ctx, stride, ids_sha256(ids), name)
    if path:
        logprobs.flush()
        _meta_path(Path(path)).write_text(json.dumps(reference.meta()), encoding="utf-8")
    return reference


def compare(model: torch.nn.Module, ids: list[int], ctx: int, stride: int | None,
            reference: ReferenceLogprobs | torch.nn.Module, device: torch.device | str = "cpu",
            text_bytes: int | None = None, progress_label: str | None = None) -> dict:
    """The model's perplexity and how far its predictions are from the reference's:
    {"perplexity", "nll", "tokens", ["bits_per_byte"], "reference_perplexity", "ppl_ratio",
     "delta_ppl_percent", "mean_kld", "kld_p99", "kld_max", "top1_agreement"}.
    reference: a stored ReferenceLogprobs over the same ids, ctx and stride, or the reference model
    (then run window by window beside `model`, on `device`)."""
    stride = ctx if stride is None else stride
    if isinstance(reference, ReferenceLogprobs):
        _check_matches(reference, ids, ctx, stride)
        live = None
    else:
        live = scored_logits(reference, ids, ctx, stride, device)
    klds, agree, total_nll, ref_nll = [], 0, 0.0, 0.0
    for position, logits, targets in scored_logits(model, ids, ctx, stride, device, progress_label):
        lp = F.log_softmax(logits, dim=-1)
        n = len(targets)
        if live is None:
            ref_lp = torch.from_numpy(np.asarray(reference.logprobs[position:position + n], np.float32)).to(lp.device)
            ref_lp = ref_lp - torch.logsumexp(ref_lp, dim=-1, keepdim=True)   # undo float16's rounding of the mass
            ref_top1 = torch.from_numpy(reference.top1[position:position + n]).to(lp.device)
        else:
            ref_lp = F.log_softmax(next(live)[1], dim=-1)
            ref_top1 = ref_lp.argmax(dim=-1)
            ref_nll -= float(ref_lp.gather(1, targets[:, None]).sum())
        if ref_lp.shape[-1] != lp.shape[-1]:
            raise LLMLabError(f"the model predicts over {lp.shape[-1]} tokens but the reference over "
                              f"{ref_lp.shape[-1]}: a KL divergence needs the same vocabulary (the same tokenizer)")
        klds.append((ref_lp.exp() * (ref_lp - lp)).sum(dim=-1).cpu())
        agree += int((lp.argmax(dim=-1) == ref_top1).sum())
        total_nll -= float(lp.gather(1, targets[:, None]).sum())
    if live is not None:
        live.close()
    kld = torch.cat(klds).double().numpy()
    out = summarize(total_nll, len(kld), text_bytes)
    ref_ppl = summarize(reference.nll if live is None else ref_nll, len(kld))["perplexity"]
    return {**out, "reference_perplexity": ref_ppl, "ppl_ratio": out["perplexity"] / ref_ppl,
            "delta_ppl_percent": (out["perplexity"] / ref_ppl - 1) * 100, "mean_kld": float(kld.mean()),
            "kld_p99": float(np.percentile(kld, 99)), "kld_max": float(kld.max()),
            "top1_agreement": agree / len(kld)}


def _check_matches(reference: ReferenceLogprobs, ids: list[int], ctx: int, stride: int) -> None:
    """A stored reference is only comparable over the very same tokens and windows."""
    if (reference.ctx, reference.stride) != (ctx, stride):
        raise LLMLabError(f"the reference was computed with ctx {reference.ctx}, stride {reference.stride}; "
                          f"this comparison uses ctx {ctx}, stride {stride}: use the same windows for both")
    if reference.tokens != len(ids) - 1 or reference.ids_sha256 != ids_sha256(ids):
        raise LLMLabError(f"the reference was computed over other token ids ({reference.tokens + 1} ids, sha256 "
                          f"{reference.ids_sha256[:12]}...): compute it from the same text and tokenizer")
