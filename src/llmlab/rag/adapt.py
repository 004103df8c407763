"""Corpus adaptation of the sentence encoder: contrastive fine-tuning on (synthetic question, passage) pairs.

A general-purpose encoder (all-MiniLM-L6-v2) has never seen the user's vocabulary: project names,
option names, jargon. GPL (Wang et al. 2022, "GPL: Generative Pseudo Labeling for Unsupervised Domain
Adaptation of Dense Retrieval") and InPars (Bonifacio et al. 2022) adapt it without human labels: an LM
writes a question for each corpus passage, and the encoder is trained to put that question next to its
passage. The loss is InfoNCE (van den Oord et al. 2018) over in-batch negatives, as in DPR (Karpukhin et
al. 2020) and sentence-transformers' MultipleNegativesRankingLoss: for query i in a batch of B,

    loss_i = -log softmax_j(q_i . p_j / temperature)[i]      j over the B positives + the mined negatives

with unit vectors, so q . p is a cosine in [-1, 1]; temperature 0.05 (a scale of 20) makes the softmax
sharp enough for cosines to matter. Each query also gets a *hard* negative: a passage BM25 ranks high for
it that is not its positive (`mine_hard_negatives`). Random in-batch passages are mostly easy; the hard
ones teach the fine distinctions retrieval actually fails on (DPR, Sec. 5.2: one BM25 negative per
question gave a large gain over in-batch negatives alone).

The output directory is a normal BERT directory (config.json, model.safetensors, vocab.txt ...) plus
adapt.json, so `llmlab.rag.embed.Embedder(model_dir=out)` loads it like the built-in model.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_json
from llmlab.core.progress import progress
from llmlab.rag.bm25 import BM25

FORMAT_VERSION = 1
# Everything a tokenizer or sentence-transformers needs from the base directory (README.md is not
# copied: it describes the base model, not this one). The weights and config.json are written anew.
BASE_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")


@dataclass
class AdaptConfig:
    epochs: int = field(default=1, metadata={"help": "passes over the (question, passage) pairs"})
    batch_size: int = field(default=32, metadata={"help": "pairs per step; the other pairs' passages are each "
                                                           "query's in-batch negatives, so bigger is harder"})
    lr: float = field(default=2e-5, metadata={"help": "peak AdamW learning rate (2e-5: the usual BERT fine-tuning rate)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay on weight matrices"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "fraction of steps with linear warmup; "
                                                                   "then the rate decays linearly to 0"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature on cosines (0.05 = scale 20, "
                                                                "as in sentence-transformers' MultipleNegativesRankingLoss)"})
    hard_negatives: int = field(default=1, metadata={"help": "BM25-mined hard negatives per query (0: in-batch only)"})
    bm25_top: int = field(default=20, metadata={"help": "hard negatives are sampled from this many top BM25 passages "
                                                         "that pass the false-negative guards"})
    max_seq_len: int = field(default=256, metadata={"help": "passage truncation in tokens (256: what Embedder uses)"})
    max_query_len: int = field(default=64, metadata={"help": "query truncation in tokens"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    seed: int = field(default=0, metadata={"help": "seeds batch order and negative sampling: same seed, same model"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, mps or auto"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: torch's default)"})

    def validate(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.lr > 0, "lr must be > 0"), (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
                  (self.temperature > 0, "temperature must be > 0"),
                  (self.hard_negatives >= 0, "hard_negatives must be >= 0"), (self.bm25_top >= 1, "bm25_top must be >= 1"),
                  (self.max_seq_len >= 8 and self.max_query_len >= 8, "max_seq_len and max_query_len must be >= 8")]
        for ok, message in checks:
            if not ok:
                raise LLMLabError(f"adapt config: {message}")


# ----------------------------------------------------------------------------- hard negatives

def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _lead(text: str, min_chars: int = 20) -> str:
    """The passage's first sentence (extended until it is at least `min_chars` long, so a lone
    'Note.' does not match half the corpus), whitespace-normalised."""
    lead = ""
    for sentence in re.split(r"(?<=[.!?:])\s+", _normalise(text)):
        lead = f"{lead} {sentence}".strip()
        if len(lead) >= min_chars:
            break
    return lead


def mine_hard_negatives(pairs: list[dict], passages: list[dict], bm25_top: int = 20, seed: int = 0,
                        per_query: int = 1) -> list[list[str]]:
    """For each {"query", "passage", "doc"?} pair, up to `per_query` passages (texts) that BM25 ranks
    high for the query but that are not its positive; [] where no passage qualifies.

    The risk of mining is *false negatives*: a passage that also answers the question, which the loss
    then pushes away. RocketQA (Qu et al. 2021) found many top-ranked "negatives" are in fact positives.
    We guard three ways: a candidate is skipped when it comes from the pair's source document (neighbouring
    chunks and sibling sections of the same page are the likeliest to answer too; pairs and passages carry
    a "doc" key for this), when it is the positive (same normalised text), and when it overlaps it
    (contains the positive's first sentence, or is contained in the positive: overlapping chunk windows).
    Of the first `bm25_top` passages in BM25 order that pass, we sample rather than take the top one:
    the very highest-ranked survivor is the one most likely to be an unlabelled positive, and sampling
    from the top band (as GPL does from its retrievers' top 50) keeps the negatives hard but varied.
    GPL mines with dense retrievers; BM25 is what we have without a second model, and its lexical
    errors (same words, different topic) are exactly the confusions adaptation should fix.
    """
    if not passages:
        return [[] for _ in pairs]
    bm25 = BM25(stemming=True, stopwords=True).fit([p["text"] for p in passages])  # stopwords: queries are questions
    normalised = [_normalise(p["text"]) for p in passages]
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        positive = _normalise(pair["passage"])
        lead, doc = _lead(pair["passage"]), pair.get("doc")
        scores = bm25.scores(pair["query"])
        ranked = scores.argsort(kind="stable")[::-1]
        candidates, seen = [], set()
        for i in ranked:
            if scores[i] <= 0 or len(candidates) >= bm25_top:
                break
            text = normalised[i]
            if text in seen or text == positive or (doc is not None and passages[i].get("doc") == doc):
                continue
            if (lead and lead in text) or text in positive:
                continue
            seen.add(text)
            candidates.append(passages[i]["text"])
        out.append(rng.sample(candidates, min(per_query, len(candidates))))
    return out


# ----------------------------------------------------------------------------- training

def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then linear decay to 0 at `total` (BERT's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _batch(token_lists: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, t in enumerate(token_lists):
        ids[row, :len(t)] = torch.tensor(t)
        mask[row, :len(t)] = 1
    return ids.to(device), mask.to(device)


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """A shuffled epoch in ceil(n / batch_size) batches of near-equal size: no tiny last batch, whose
    few in-batch negatives would make its loss (and the reported loss_last) incomparable."""
    order = list(range(n))
    rng.shuffle(order)
    k = math.ceil(n / batch_size)
    return [order[i * n // k:(i + 1) * n // k] for i in range(k)]


def contrastive_loss(queries: torch.Tensor, passages: torch.Tensor, temperature: float,
                     same_as_positive: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: row i of `queries` should pick column i of `passages` (its positive) out of all columns
    (the other positives, then the hard negatives). `same_as_positive[i, j]` marks columns j != i that
    hold the very text of i's positive (two questions about one passage in a batch): those are masked
    out rather than taught as negatives, which would contradict the other query's target."""
    logits = queries @ passages.T / temperature
    if same_as_positive is not None:
        logits = logits.masked_fill(same_as_positive, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def _check_pairs(pairs: list[dict]) -> None:
    if not pairs:
        raise LLMLabError("adapt_encoder got no (question, passage) pairs: generate synthetic questions first")
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not isinstance(p.get("query"), str) or not isinstance(p.get("passage"), str) \
                or not p["query"].strip() or not p["passage"].strip():
            raise LLMLabError(f"pair {i} must be a dict with non-empty string 'query' and 'passage' (and 'doc'), "
                              f"got {str(p)[:120]!r}")


def _base_name(base_dir: Path | None) -> tuple[Path, str]:
    from llmlab.core.assets import minilm_dir

    builtin = minilm_dir()
    if base_dir is None or Path(base_dir).resolve() == builtin.resolve():
        return builtin, "all-MiniLM-L6-v2"
    return Path(base_dir), Path(base_dir).name


def adapt_encoder(base_dir: Path | None, pairs: list[dict], passages: list[dict], out_dir: Path,
                  config: AdaptConfig | None = None, show_progress: bool = True) -> dict:
    """Fine-tune the encoder in `base_dir` (None: built-in MiniLM) on `pairs` ({"query", "passage", "doc"}),
    mining hard negatives from `passages` ({"text", "doc"}: the corpus chunks), and write the result to
    `out_dir`. Returns the adapt.json record. The whole directory appears at once at the end; an error or
    Ctrl-C leaves `out_dir` as it was."""
    from llmlab.core.device import pick_device, setup_backends
    from llmlab.model.encoder import Encoder
    from llmlab.tokenizer.wordpiece import WordPieceTokenizer
    from llmlab.train.optim import make_optimizer

    config = config or AdaptConfig()
    config.validate()
    _check_pairs(pairs)
    base_dir, base_name = _base_name(base_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "adapt.json").is_file())):
        raise LLMLabError(f"{out_dir} exists and is not an adapted-encoder directory (no adapt.json): "
                          "pass a new --out directory, so nothing else is overwritten")
    device = pick_device(config.device)
    setup_backends(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    tokenizer = WordPieceTokenizer.from_vocab_file(base_dir / "vocab.txt")
    model = Encoder.from_pretrained(base_dir).to(device)
    max_pos = model.cfg.max_position
    negatives = mine_hard_negatives(pairs, passages, config.bm25_top, config.seed, config.hard_negatives) \
        if config.hard_negatives else [[] for _ in pairs]
    # Tokenize once: queries short, passages to the length the Embedder will see at search time.
    q_ids = [tokenizer.encode_for_model(p["query"], min(config.max_query_len, max_pos)) for p in pairs]
    p_cache: dict[str, list[int]] = {}

    def passage_ids(text: str) -> list[int]:
        if text not in p_cache:
            p_cache[text] = tokenizer.encode_for_model(text, min(config.max_seq_len, max_pos))
        return p_cache[text]

    epochs = [_batches(len(pairs), config.batch_size, rng) for _ in range(config.epochs)]
    total = sum(len(e) for e in epochs)
    warmup = int(config.warmup_fraction * total)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (0.9, 0.999), device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should be as readable as any dir
        for name in BASE_FILES:  # copied first, so out_dir may even be base_dir
            src = base_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        model.train()
        losses, epoch_losses = [], []
        bar = progress(total=len(pairs) * config.epochs, desc="adapt", unit="pair",
                       disable=None if show_progress else True)
        start = time.perf_counter()
        for batches in epochs:
            epoch_sum = 0.0
            for batch in batches:
                texts = [pairs[i]["passage"] for i in batch] + [t for i in batch for t in negatives[i]]
                q = model.pool(*_batch([q_ids[i] for i in batch], tokenizer.pad_id, device))
                p = model.pool(*_batch([passage_ids(t) for t in texts], tokenizer.pad_id, device))
                positive = [_normalise(pairs[i]["passage"]) for i in batch]
                columns = [_normalise(t) for t in texts]
                clash = torch.tensor([[j != r and columns[j] == positive[r] for j in range(len(texts))]
                                      for r in range(len(batch))], device=device)
                loss = contrastive_loss(q, p, config.temperature, clash if clash.any() else None)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                epoch_sum += losses[-1] * len(batch)
                bar.update(len(batch))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
            epoch_losses.append(epoch_sum / len(pairs))
        seconds = time.perf_counter() - start
        bar.close()
        model.eval()
        model.save_pretrained(tmp)
        record = {"format_version": FORMAT_VERSION, "config": asdict(config), "base": base_name,
                  "pairs": len(pairs), "with_hard_negative": sum(1 for n in negatives if n), "steps": total,
                  "loss_first": losses[0], "loss_last": losses[-1], "epoch_losses": epoch_losses,
                  "seconds": round(seconds, 2), "pairs_per_second": round(len(pairs) * config.epochs / seconds, 2)}
        atomic_write_json(tmp / "adapt.json", record)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the finished `tmp` directory at `out_dir`. A rename is atomic, but only onto a missing or
    empty directory, so a previous output is first renamed aside, then deleted."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old)  # onto the fresh empty directory: allowed, and atomic
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
