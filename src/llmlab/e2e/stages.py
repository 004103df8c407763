"""The stages' work: each turns the outputs of earlier stages into its own, reusing llmlab's parts.

    curate     raw documents -> held-out split -> `llmlab data run` (prose and code) -> OUT/curate/corpus
    tokenizer  llmlab.tokenizer.train_bpe on the corpus (+ a chat template) -> `llmlab data tokenize`
    pretrain   llmlab.train.run.start / resume on the token dataset (the Llama-style ModelConfig)
    sft        the built-in chat set (llmlab.e2e.chatset) -> llmlab.finetune.run.start / resume
    eval, report, sweep: llmlab.e2e.evaluation, llmlab.e2e.report, llmlab.e2e.sweep

Each function gets a StageContext and returns the facts recorded in its stage.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from llmlab.core.config import config_to_dict
from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_json
from llmlab.e2e.corpus import RawDoc, is_heldout, raw_documents, read_jsonl, sources_fingerprint, write_jsonl
from llmlab.e2e.pipeline import Stage, StageContext, StageInterrupted, without_runtime
from llmlab.e2e.recipe import Recipe

# Our BPE's special tokens: <|endoftext|> ends documents (and assistant turns, so generation
# stops there by itself), the role markers frame the chat turns. The template is prefix-stable,
# as llmlab.finetune.sft_data needs: rendering more turns only ever appends.
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
# Raw input files of ~4 MB, one curation shard each: enough shards for the workers to share, few
# enough that the decontamination index (built once per shard) is not rebuilt too often.
RAW_SHARD_BYTES = 4 << 20


def _log(message: str) -> None:
    print(f"llmlab e2e: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- curate


def _eval_texts(tasks: str, limit: int = 0) -> list[dict]:
    """The text of the recipe's benchmark items (each task's default split; the first `limit`, 0: all):
    what the decontamination stage must keep out of the training corpus."""
    from llmlab.eval.tasks import get_tasks, load_docs

    rows = []
    for task in get_tasks(tasks):
        for doc in load_docs(task, task.default_split, limit or None):
            parts = list(dict.fromkeys(doc.contexts())) + list(doc.choices) + list(doc.references) + [doc.text]
            rows.append({"text": "\n".join(p for p in parts if p)})
    return rows


def _write_raw(directory: Path, docs: list[RawDoc]) -> int:
    """Training documents as JSONL shards of ~4 MB, one domain per file; returns the file count."""
    files = 0
    for kind in ("prose", "code"):
        for domain in sorted({d.domain for d in docs if d.kind == kind}):
            chunk, size, index = [], 0, 0
            members = [d for d in docs if d.kind == kind and d.domain == domain]
            for i, doc in enumerate(members):
                chunk.append({"id": doc.id, "text": doc.text, "source": doc.source})
                size += len(doc.text.encode("utf-8"))
                if size >= RAW_SHARD_BYTES or i == len(members) - 1:
                    write_jsonl(directory / kind / f"{domain}-{index:03d}.jsonl", chunk)
                    chunk, size, index, files = [], 0, index + 1, files + 1
    return files


def run_curate(ctx: StageContext) -> dict:
    from llmlab.data.curation.executor import run_pipeline
    from llmlab.data.curation.normalize import normalize_text
    from llmlab.data.curation.pipeline import recipe_config

    data, d = ctx.recipe.data, ctx.dir
    split_path = d / "split.json"
    if not split_path.is_file():
        train, heldout = [], []
        for doc in raw_documents(data):
            if is_heldout(doc.id, data.heldout_fraction, data.seed):
                # Held-out prose gets the normaliser the training prose gets, so both read alike.
                text = normalize_text(doc.text) + "\n" if doc.kind == "prose" else doc.text
                heldout.append(dataclasses.replace(doc, text=text))
            else:
                train.append(doc)
        if not train:
            raise LLMLabError("the recipe selects no training text: turn on data.shakespeare / pydocs / stdlib, "
                              "or give --input files")
        _write_raw(d / "raw", train)
        write_jsonl(d / "heldout.jsonl", [doc.to_json() for doc in heldout])
        split = {}
        for name, docs in (("train", train), ("heldout", heldout)):
            for doc in docs:
                row = split.setdefault(doc.domain, {"train_docs": 0, "train_bytes": 0, "heldout_docs": 0,
                                                    "heldout_bytes": 0})
                row[f"{name}_docs"] += 1
                row[f"{name}_bytes"] += len(doc.text.encode("utf-8"))
        atomic_write_json(split_path, split)   # last: the raw files and the held-out split are complete
    split = json.loads(split_path.read_text(encoding="utf-8"))
    eval_files: list[str] = []
    if data.decontaminate and ctx.recipe.eval.tasks.strip():
        path = d / "eval_texts.jsonl"
        if not path.is_file():
            write_jsonl(path, _eval_texts(ctx.recipe.eval.tasks, data.decontam_items))
        eval_files = [str(path.resolve())]
    curation = {}
    for kind, name in (("prose", data.prose_recipe), ("code", data.code_recipe)):
        if not (d / "raw" / kind).is_dir():
            continue
        cfg = recipe_config(name, [str((d / "raw" / kind).resolve())], str((d / kind).resolve()))
        if kind == "code":
            cfg.normalize.enabled = False   # it strips every line: indentation is Python's syntax
        cfg.decontam.enabled = bool(eval_files)
        cfg.decontam.eval_files = eval_files
        cfg.execution.workers = data.workers
        _log(f"curate: {kind} with the {name!r} recipe{' + decontamination' if eval_files else ''}")
        stats = run_pipeline(cfg)
        curation[kind] = {"recipe": name, "docs_in": stats["docs_in"], "docs_out": stats["docs_out"],
                          "seconds": stats["seconds"],
                          "stages": {s: {"docs_in": v["docs_in"], "docs_out": v["docs_out"], "removed": v["removed"]}
                                     for s, v in stats["stages"].items()}}
    corpus = d / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir()
    n = 0
    for kind in ("prose", "code"):
        for part in sorted((d / kind).glob("part-*.jsonl.gz")):
            shutil.copyfile(part, corpus / f"part-{n:05d}.jsonl.gz")
            n += 1
    return {"split": split, "curation": curation, "decontamination_items": _count_lines(eval_files),
            "corpus_parts": n}


def _count_lines(files: list[str]) -> int:
    return sum(sum(1 for _ in open(f, encoding="utf-8")) for f in files)


def iter_corpus(out: Path, sources: tuple[str, ...] = ()) -> Iterator[dict]:
    """The curated training documents ({"id", "text", "source", ...}) in corpus order, streamed;
    `sources`: only those whose source starts with one of these prefixes ("shakespeare:", ...)."""
    import gzip

    for part in sorted((out / "curate" / "corpus").glob("part-*.jsonl.gz")):
        with gzip.open(part, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                if not sources or doc.get("source", "").startswith(sources):
                    yield doc


def corpus_documents(out: Path, sources: tuple[str, ...] = ()) -> list[dict]:
    return list(iter_corpus(out, sources))


def heldout_documents(out: Path) -> list[RawDoc]:
    return [RawDoc.from_json(r) for r in read_jsonl(out / "curate" / "heldout.jsonl")]


# ---------------------------------------------------------------------- tokenizer


def _train_text(docs, max_bytes: int) -> str:
    """The corpus's first `max_bytes` bytes (0: all), documents joined by a blank line."""
    parts, size = [], 0
    for doc in docs:
        parts.append(doc["text"])
        size += len(doc["text"].encode("utf-8"))
        if max_bytes and size >= max_bytes:
            break
    return "\n\n".join(parts)


def run_tokenizer(ctx: StageContext) -> dict:
    from llmlab.data.curation.tokenize import tokenize_curated
    from llmlab.e2e.report import funnel_tokens
    from llmlab.tokenizer import load_tokenizer, train_bpe
    from llmlab.tokenizer.base import TOKENIZER_FILE

    cfg, d = ctx.recipe.tokenizer, ctx.dir
    tok_dir = d / "tokenizer"
    if not (tok_dir / TOKENIZER_FILE).is_file():
        text = _train_text(iter_corpus(ctx.out), cfg.train_bytes)
        _log(f"tokenizer: training a {cfg.vocab_size}-token BPE on {len(text.encode()):,} bytes")
        tok = train_bpe(text, cfg.vocab_size, cfg.pattern, SPECIAL_TOKENS, cfg.min_frequency, progress=True)
        tok.chat_template = CHAT_TEMPLATE
        tok.save(tok_dir)
    tok = load_tokenizer(tok_dir)
    funnel = funnel_tokens(ctx.out, tok)        # also warms the encoder's cache for the pass below
    summary = tokenize_curated(ctx.out / "curate" / "corpus", tok, d / "data", cfg.val_fraction, cfg.workers)
    heldout = heldout_documents(ctx.out)
    bytes_per_token = {}
    for domain in sorted({h.domain for h in heldout}):
        text = "\n\n".join(h.text for h in heldout if h.domain == domain)[:200_000]
        bytes_per_token[domain] = round(len(text.encode("utf-8")) / max(1, len(tok.encode(text))), 3)
    return {"vocab_size": tok.vocab_size, "pattern": cfg.pattern, "merges": len(tok.merges),
            "special_tokens": list(SPECIAL_TOKENS), "documents": summary["documents"], "tokens": summary["tokens"],
            "heldout_bytes_per_token": bytes_per_token, "funnel": funnel}


# ---------------------------------------------------------------------- pretrain


def _runtime_overrides(train) -> dict:
    """The settings a resumed trainer may take from today's recipe (where/how fast it runs)."""
    return {k: getattr(train, k) for k in ("device", "threads", "compile", "tensorboard", "wandb")}


def train_model(run_dir: Path, model_cfg, train_cfg, data_dir: Path, tok_dir: Path, stage: str, out: Path):
    """Start or resume one pretraining run; raises StageInterrupted when it was stopped early."""
    from llmlab.model.checkpoint import CHECKPOINT
    from llmlab.train import run as train_run
    from llmlab.train.config import DataConfig, RunConfig

    if (run_dir / CHECKPOINT).is_file():
        state = train_run.resume(run_dir, _runtime_overrides(train_cfg))
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)   # a start that never reached its first checkpoint
        config = RunConfig(model_cfg, DataConfig(data=str(data_dir.resolve()), tokenizer=str(tok_dir.resolve())),
                           train_cfg)
        state = train_run.start(config, run_dir)
    if state.stop_reason == "interrupted":
        raise StageInterrupted(stage, state.step, out)
    return state


def run_facts(run_dir: Path, state) -> dict:
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    train = config["train"]
    seq_len = train.get("seq_len") or config["model"]["block_size"]
    return {"steps": state.step, "stop_reason": state.stop_reason, "train_seconds": round(state.elapsed_s, 2),
            "best_val_loss": state.best_val, "last_val_loss": state.last_val,
            "tokens_per_step": train["batch_size"] * train["grad_accum"] * seq_len,
            "tokens_seen": state.step * train["batch_size"] * train["grad_accum"] * seq_len}


def run_pretrain(ctx: StageContext) -> dict:
    from llmlab.model.checkpoint import load_run_model

    run_dir = ctx.dir / "run"
    tok = ctx.stage_dir("tokenizer")
    state = train_model(run_dir, ctx.recipe.model, ctx.recipe.pretrain, tok / "data", tok / "tokenizer", "pretrain",
                        ctx.out)
    model, _, _ = load_run_model(run_dir)
    facts = run_facts(run_dir, state)
    facts.update(parameters=model.num_params(), non_embedding_parameters=model.num_params(non_embedding=True),
                 model=config_to_dict(model.config), flops_per_token=model.flops_per_token())
    return facts


# ---------------------------------------------------------------------- sft


def run_sft(ctx: StageContext) -> dict:
    from llmlab.e2e.chatset import build_chat_set, kind_counts, split_chat_set
    from llmlab.finetune import run as ft_run
    from llmlab.finetune.config import FinetuneConfig, FinetuneRun, LoRAConfig
    from llmlab.model.checkpoint import CHECKPOINT
    from llmlab.model.config import ModelConfig

    sft, d = ctx.recipe.sft, ctx.dir
    train_path, val_path = d / "chat_train.jsonl", d / "chat_val.jsonl"
    if not val_path.is_file():
        from llmlab.e2e.chatset import SOURCES
        examples = build_chat_set(corpus_documents(ctx.out, SOURCES), sft.examples, sft.kind_list, sft.chat_seed)
        if len(examples) < 10:
            raise LLMLabError(f"the curated corpus makes only {len(examples)} chat examples of kinds {sft.kinds}: "
                              "turn on data.shakespeare / pydocs / stdlib, or choose other sft.kinds")
        train, val = split_chat_set(examples, sft.chat_val_fraction, sft.chat_seed)
        write_jsonl(train_path, [{"messages": e["messages"], "kind": e["kind"]} for e in train])
        write_jsonl(val_path, [{"messages": e["messages"], "kind": e["kind"]} for e in val])
    run_dir = d / "run"
    if (run_dir / CHECKPOINT).is_file():
        state = ft_run.resume(run_dir, _runtime_overrides(sft))
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run = FinetuneRun(ModelConfig(), sft.train_config(),
                          FinetuneConfig(method=sft.method, data=str(train_path.resolve()),
                                         val_data=str(val_path.resolve()), data_seed=sft.chat_seed),
                          LoRAConfig(), init=str((ctx.stage_dir("pretrain") / "run").resolve()))
        state = ft_run.start(run, run_dir)
    if state.stop_reason == "interrupted":
        raise StageInterrupted("sft", state.step, ctx.out)
    facts = run_facts(run_dir, state)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    facts["data"] = config.get("data", {})
    facts["chat_set"] = {"train": kind_counts(read_jsonl(train_path)), "val": kind_counts(read_jsonl(val_path))}
    return facts


# ---------------------------------------------------------------------- the stage list


def _section(recipe: Recipe, name: str) -> dict:
    section = recipe.section(name)
    return without_runtime(config_to_dict(section))


def all_stages(recipe: Recipe) -> list[Stage]:
    from llmlab.e2e import evaluation, report, sweep

    def curate_settings(r: Recipe) -> dict:
        return {"data": _section(r, "data"), "sources": sources_fingerprint(r.data),
                "decontaminate_against": r.eval.tasks if r.data.decontaminate else ""}

    stages = [
        Stage("curate", (), curate_settings, run_curate),
        Stage("tokenizer", ("curate",), lambda r: _section(r, "tokenizer"), run_tokenizer),
    ]
    stages += sweep.sweep_stages(recipe)
    stages += [
        Stage("pretrain", ("tokenizer",), lambda r: {"model": _section(r, "model"), "train": _section(r, "pretrain")},
              run_pretrain),
        Stage("sft", ("pretrain", "curate"), lambda r: _section(r, "sft"), run_sft),
        Stage("eval", ("sft", "pretrain", "curate"), evaluation.settings, evaluation.run_eval),
    ]
    report_inputs = tuple(s.name for s in stages)
    stages.append(Stage("report", report_inputs, lambda r: {"sweep": r.sweep.spec}, report.run_report))
    return stages
