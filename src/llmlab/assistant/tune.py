"""`llmlab assistant tune`: adapt the retriever and the answerer to one corpus, from the corpus alone.

    store chunks ─► synthetic questions (local chat model) ─► round-trip filter
                 ─► contrastive fine-tune of MiniLM (in-batch + BM25 hard negatives) ─► store re-embedded
                 ─► grounded QA examples (answer + [n], or abstain) ─► LoRA on the answerer

Every stage writes its result into --out before the next starts and is skipped when its result
is already there, so a run stopped at any point (Ctrl-C, a crash) continues where it stopped:
questions are appended batch by batch, the encoder directory appears whole or not at all, and the
answerer is an ordinary fine-tuning run (resumed exactly by the shared trainer). The adapted
encoder is saved inside the store (`<store>/encoder`) and recorded in its meta, so every reader of
the store embeds queries with it; the answerer's adapter path goes into the store's assistant.json.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.core.config import check, check_fields, config_to_dict
from llmlab.core.io import atomic_write_text

ENCODER_DIR = "encoder"


@dataclass
class TuneConfig:
    max_chunks: int = field(default=0, metadata={"help": "synthetic questions from at most this many chunks "
                                                         "(a seeded sample; 0: every chunk)"})
    audience: str = field(default="a reader of these documents", metadata={
        "help": "who asks the synthetic questions, in the question prompt (e.g. \"a Python programmer\")"})
    keep_rank: int = field(default=10, metadata={"help": "round-trip filter: keep a question whose own chunk "
                                                         "ranks within this (hybrid search)"})
    encoder_epochs: int = field(default=1, metadata={"help": "passes over the question/passage pairs"})
    encoder_lr: float = field(default=2e-5, metadata={"help": "encoder learning rate (AdamW)"})
    encoder_batch: int = field(default=32, metadata={"help": "pairs per contrastive batch (in-batch negatives)"})
    answerer_examples: int = field(default=320, metadata={"help": "grounded QA examples for the answerer (0: skip "
                                                                  "the answerer)"})
    # 0.1, not 0.3: at 0.3 (a third of the kept examples) the answerer abstained on 0.90 of the
    # answerable pydocs questions; at 0.1 on 0.17, and the relevance gate does the rest (docs/13-capstone.md)
    abstain_fraction: float = field(default=0.1, metadata={"help": "share of the examples whose passages do "
                                                                   "not hold the answer (target: abstain)"})
    answerer_steps: int = field(default=40, metadata={"help": "LoRA optimizer steps"})
    answerer_batch: int = field(default=4, metadata={"help": "packed rows per LoRA step"})
    # four 100-word passages of Python's docs, the rules and the question: ~720-930 tokens
    answerer_seq_len: int = field(default=1024, metadata={"help": "tokens per packed training row (an example "
                                                                 "longer than this is skipped)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, splits and training"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "max_chunks", self.max_chunks >= 0, "must be 0 (all) or more")
        check(self, "keep_rank", self.keep_rank >= 1, "must be at least 1")
        check(self, "answerer_seq_len", self.answerer_seq_len >= 64, "must be at least 64")
        check(self, "abstain_fraction", 0 <= self.abstain_fraction < 1, "must be in [0, 1)")


def _say(msg: str) -> None:
    print(f"assistant tune: {msg}", file=sys.stderr, flush=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def tune(store_dir: str | Path, out_dir: str | Path, cfg: TuneConfig, model: str = "smollm2",
         show_progress: bool = True) -> dict:
    """Run (or continue) every stage; returns a report of counts and where things went."""
    from llmlab.assistant.pipeline import read_store_config, write_store_config
    from llmlab.infer import Engine
    from llmlab.rag.store import Retriever, Store, store_embedder
    from llmlab.rag.synth import read_jsonl, round_trip_filter, synthesize_questions

    store_dir, out = Path(store_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tune.json", json.dumps({"format_version": 1, "store": str(store_dir.resolve()),
                                                     "model": model, "config": config_to_dict(cfg)}, indent=2))
    store = Store(store_dir)
    report: dict = {"out": str(out)}
    engine = Engine.load(model, device="cpu")

    # 1. questions, from the store as it is (base encoder): resumable, appended per batch
    retriever = Retriever(store, store_embedder(store))
    chunks = retriever.chunks
    if cfg.max_chunks and len(chunks) > cfg.max_chunks:
        chunks = sorted(random.Random(cfg.seed).sample(chunks, cfg.max_chunks), key=lambda c: c["id"])
    _say(f"1/4 synthetic questions for {len(chunks)} chunks -> {out / 'questions.jsonl'}")
    rows = synthesize_questions(engine, chunks, out / "questions.jsonl", seed=cfg.seed, audience=cfg.audience,
                                show_progress=show_progress)
    pairs_path = out / "pairs.jsonl"
    if not pairs_path.is_file():
        _write_jsonl(pairs_path, round_trip_filter(retriever, rows, cfg.keep_rank, show_progress))
    pairs = read_jsonl(pairs_path)
    report.update(questions=len(rows), kept_after_round_trip=len(pairs))
    _say(f"   {len(rows)} usable questions, {len(pairs)} lead back to their chunk (top {cfg.keep_rank})")

    # 2. the encoder, trained into the store directory, then the store re-embedded with it
    encoder_dir = store_dir / ENCODER_DIR
    if store.meta.get("encoder") != ENCODER_DIR:
        from llmlab.rag.adapt import AdaptConfig, adapt_encoder
        from llmlab.rag.embed import Embedder

        _say(f"2/4 contrastive fine-tune of the encoder on {len(pairs)} pairs -> {encoder_dir}")
        if not (encoder_dir / "adapt.json").is_file():
            # 160-token passages: the header and most of a 200-token chunk, at ~2/3 the cost of 256
            adapt = AdaptConfig(epochs=cfg.encoder_epochs, lr=cfg.encoder_lr, batch_size=cfg.encoder_batch,
                                max_seq_len=160, seed=cfg.seed)
            passages = [{"text": c["text"], "doc": c["source"]} for c in retriever.chunks]
            train = [{"query": p["question"], "passage": p["passage"], "doc": p["source"]} for p in pairs]
            report["encoder"] = adapt_encoder(None, train, passages, encoder_dir, adapt, show_progress=show_progress)
        n = store.reembed(Embedder(encoder_dir), show_progress=show_progress)  # records the encoder too
        _say(f"   store re-embedded with the adapted encoder ({n} chunks)")
    report["encoder_dir"] = str(encoder_dir)

    # 3. grounded QA examples, retrieved with the adapted encoder (what the answerer will see)
    config = read_store_config(store_dir)
    if cfg.answerer_examples:
        data_path = out / "grounded.jsonl"
        if not data_path.is_file():
            from llmlab.assistant.grounded import grounded_examples

            retriever = Retriever(store, store_embedder(store))
            chosen = random.Random(cfg.seed).sample(pairs, min(cfg.answerer_examples, len(pairs)))
            _say(f"3/4 {len(chosen)} grounded QA examples -> {data_path}")
            # as many passages as the store's assistant hands over, cut the way it cuts them
            examples = grounded_examples(retriever, retriever.embedder, chosen, k=config.k,
                                         abstain_fraction=cfg.abstain_fraction, parent=config.parent,
                                         passage_words=config.passage_words, seed=cfg.seed,
                                         show_progress=show_progress)
            _write_jsonl(data_path, [{"messages": e["messages"]} for e in examples])
            _write_jsonl(out / "grounded-kinds.jsonl", [{"kind": e["kind"], "chunk_id": e["chunk_id"]} for e in examples])
        report["grounded_examples"] = len(read_jsonl(data_path))
        # 4. the answerer: a LoRA fine-tune on the shared trainer, resumed if it was interrupted
        run_dir = out / "answerer"
        report["answerer"] = str(run_dir)
        _say(f"4/4 LoRA fine-tune of the answerer ({cfg.answerer_steps} steps) -> {run_dir}")
        _train_answerer(model, data_path, run_dir, cfg)
        config = dataclasses.replace(config, model=model, adapter=str(run_dir.resolve()))
    write_store_config(store_dir, config)
    store.close()
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    return report


def _train_answerer(model: str, data_path: Path, run_dir: Path, cfg: TuneConfig) -> None:
    from llmlab.finetune.config import FinetuneConfig, FinetuneRun, LoRAConfig, method_defaults
    from llmlab.finetune.run import resume, start
    from llmlab.model.checkpoint import CHECKPOINT, load_checkpoint
    from llmlab.model.config import ModelConfig

    if (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir)
        if state.get("loop", {}).get("step", 0) >= cfg.answerer_steps:
            return
        resume(run_dir, {})
        return
    if run_dir.exists():   # a run that died before its first checkpoint: nothing to keep
        shutil.rmtree(run_dir)
    train = dataclasses.replace(method_defaults("lora"), max_iters=cfg.answerer_steps, batch_size=cfg.answerer_batch,
                                seq_len=cfg.answerer_seq_len, eval_every=max(cfg.answerer_steps // 2, 1), eval_iters=4,
                                ckpt_every=max(cfg.answerer_steps // 3, 1), seed=cfg.seed)
    run = FinetuneRun(ModelConfig(vocab_size=1), train, FinetuneConfig(data=str(data_path), val_fraction=0.1),
                      LoRAConfig(r=cfg.lora_r, alpha=2.0 * cfg.lora_r), init=model)
    start(run, run_dir)
