"""OUT/report.md: the report card of one e2e run, from the stages' records and outputs.

Sections: corpus and held-out split; the data funnel (documents and tokens kept per curation stage,
with the curation pipeline's own plots); tokenizer; model; pretraining and SFT (loss curves);
held-out bits per byte; the evaluation table (base, tuned, reference, chance, with stderr);
contamination; samples; the scaling sweep when there is one; wall time and cost per stage.

Tokens per curation stage are counted on each document's raw text with the trained tokenizer
(the stages only count documents): a stage's "tokens out" is its "tokens in" less the tokens of
the documents it removed. Line-level edits (normalisation, C4 lines) are not re-counted, so the
last row can differ slightly from the token dataset, which is listed after it (with one EOS per
document).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmlab.core.io import atomic_save, atomic_write_text
from llmlab.e2e.pipeline import StageContext, stage_records
from llmlab.e2e.stages import CHAT_TEMPLATE

IMAGES = "report"
# Raw text whose tokens the funnel counts exactly (per kind); documents after it are estimated from
# their bytes at the counted part's bytes per token (only corpora far beyond the built-in one).
EXACT_FUNNEL_BYTES = 200_000_000
# Curation stage -> the PipelineConfig section that turns it on (c4_lines is part of the quality rules).
CONFIG_OF = {"c4_lines": "quality"}


def funnel_tokens(out: Path, tokenizer) -> dict:
    """Per kind (prose, code): documents and raw-text tokens in and out of each curation stage."""
    from llmlab.data.curation.report import load_stats

    result = {}
    for kind in ("prose", "code"):
        directory = out / "curate" / kind
        if not (directory / "stats.json").is_file():
            continue
        stats = load_stats(directory)
        tokens: dict[str, int] = {}
        counted_bytes = counted_tokens = 0
        for path in sorted((out / "curate" / "raw" / kind).glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    doc = json.loads(line)
                    n_bytes = len(doc["text"].encode("utf-8"))
                    if counted_bytes < EXACT_FUNNEL_BYTES:   # past that, a large corpus is estimated
                        n = len(tokenizer.encode(doc["text"]))
                        counted_bytes, counted_tokens = counted_bytes + n_bytes, counted_tokens + n
                    else:
                        n = round(n_bytes * counted_tokens / max(counted_bytes, 1))
                    tokens[doc["id"]] = n
        stage_of = {reason: stage for stage, st in stats["stages"].items() for reason in st["removed"]}
        removed_tokens: dict[str, int] = {}
        for path in sorted((directory / "removed").glob("part-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                stage = stage_of.get(row["reason"], "other")
                removed_tokens[stage] = removed_tokens.get(stage, 0) + tokens.get(row["id"], 0)
        alive = sum(tokens.values())
        rows = []
        config = stats.get("config", {})
        for stage, st in stats["stages"].items():
            gone = removed_tokens.get(stage, 0)
            section = config.get(CONFIG_OF.get(stage, stage), {})
            rows.append({"stage": stage, "enabled": bool(section.get("enabled", True)), "docs_in": st["docs_in"],
                         "docs_out": st["docs_out"], "tokens_in": alive, "tokens_out": alive - gone,
                         "removed": st["removed"]})
            alive -= gone
        result[kind] = {"docs": len(tokens), "tokens": sum(tokens.values()), "stages": rows}
    return result


def plot_losses(runs: dict[str, Path], path: Path) -> Path | None:
    """One panel per run (pretrain, sft): train loss per logged step and validation loss per eval."""
    from llmlab.core.plotting import pyplot

    plt = pyplot()

    from llmlab.train.metrics import read_metrics

    present = {name: read_metrics(d) for name, d in runs.items() if (d / "metrics.jsonl").is_file()}
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], present.items()):
        train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color="C0", alpha=0.5, linewidth=0.9, label="train (per step)")
        if val:
            ax.plot(*zip(*val), color="C1", marker="o", markersize=3, label="validation")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def _score(entry: dict | None, metric: str) -> str:
    if not entry or entry.get(metric) is None:
        return "–"
    value, se = entry[metric], entry.get("stderr", {}).get(metric)
    mark = ""
    chance = entry.get("chance")
    if metric in ("acc", "acc_norm", "exact_match") and se and chance is not None and value - 2 * se > chance:
        mark = " **↑**"    # more than two standard errors above chance
    return f"{value:.3f} ± {se:.3f}{mark}" if se is not None else f"{value:.3f}{mark}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]


def _funnel_section(out: Path, facts: dict, img_dir: Path) -> list[str]:
    from llmlab.data.curation.report import load_stats, plot_report

    lines = ["## Data", "", "Built-in raw text (and any --input), split per document before anything was learned:", ""]
    split = facts.get("curate", {}).get("split", {})
    lines += _table(["domain", "train docs", "train bytes", "held-out docs", "held-out bytes"],
                    [[d, s["train_docs"], s["train_bytes"], s["heldout_docs"], s["heldout_bytes"]] for d, s in split.items()])
    funnel = facts.get("tokenizer", {}).get("funnel", {})
    curation = facts.get("curate", {}).get("curation", {})
    for kind, f in funnel.items():
        recipe = curation.get(kind, {}).get("recipe", "?")
        lines += ["", f"### Funnel: {kind} (curation recipe `{recipe}`)", ""]
        rows = [[r["stage"], r["docs_in"], r["docs_out"], r["tokens_in"], r["tokens_out"],
                 ", ".join(f"{k}: {v}" for k, v in r["removed"].items()) or ("–" if r.get("enabled", True) else "(off)")]
                for r in f["stages"]]
        lines += _table(["stage", "docs in", "docs out", "tokens in", "tokens out", "removed"], rows)
        stats_dir = out / "curate" / kind
        if (stats_dir / "stats.json").is_file():
            images = plot_report(load_stats(stats_dir), img_dir, prefix=f"curation-{kind}")
            lines += ["", f"![{kind} stages]({IMAGES}/{images[0].name})"]
    tok = facts.get("tokenizer", {})
    if tok:
        lines += ["", f"Token dataset: {_fmt(tok['tokens']['train'])} train / {_fmt(tok['tokens']['val'])} validation "
                      f"tokens from {_fmt(tok['documents']['train'])} / {_fmt(tok['documents']['val'])} documents "
                      "(one EOS after each). Tokens per stage are counted on each document's raw text."]
    decon = facts.get("curate", {}).get("decontamination_items", 0)
    if decon:
        lines += ["", f"Decontamination: training documents sharing a 13-gram with any of {_fmt(decon)} benchmark "
                      "items were dropped (the `decontam` rows)."]
    else:
        lines += ["", "Decontamination: off (no benchmark tasks, or data.decontaminate = false)."]
    return lines


def _model_section(facts: dict) -> list[str]:
    tok, pre, sft = facts.get("tokenizer", {}), facts.get("pretrain", {}), facts.get("sft", {})
    lines = []
    if tok:
        per = ", ".join(f"{d} {v:.2f}" for d, v in tok.get("heldout_bytes_per_token", {}).items())
        lines += ["## Tokenizer", "", f"Byte-level BPE, {tok['vocab_size']:,} tokens ({tok['merges']:,} merges, "
                  f"`{tok['pattern']}` pre-tokenization), special tokens {', '.join(f'`{s}`' for s in tok['special_tokens'])}. "
                  f"Held-out bytes per token: {per}.", "", "Chat template (prefix-stable, ends turns with EOS):", "",
                  "```jinja", CHAT_TEMPLATE, "```", ""]
    if pre:
        m = pre["model"]
        lines += ["## Model and pretraining", "",
                  f"Llama-style decoder: {m['n_layer']} layers, {m['n_embd']} wide, {m['n_head']} heads "
                  f"({m['n_kv_head']} key/value heads, GQA), {m['position']}/{m['norm']}/{m['mlp']}, context "
                  f"{m['block_size']}, vocabulary {m['vocab_size']:,}: **{pre['parameters']:,} parameters** "
                  f"({pre['non_embedding_parameters']:,} non-embedding).", "",
                  f"Pretraining: {pre['steps']:,} steps x {pre['tokens_per_step']:,} tokens = **{pre['tokens_seen']:,} "
                  f"tokens seen** ({pre['tokens_seen'] / max(1, tok.get('tokens', {}).get('train', 1)):.2f} epochs of the "
                  f"train split) in {pre['train_seconds']:.0f} s; best validation loss {_fmt(pre['best_val_loss'])}, "
                  f"final {_fmt(pre['last_val_loss'])} (stopped: {pre['stop_reason']}).", ""]
    if sft:
        chat = sft.get("chat_set", {})

        def counts(split: str) -> str:
            return ", ".join(f"{k} {v}" for k, v in chat.get(split, {}).items())

        data = sft.get("data", {}).get("train", {})
        skipped = f" ({data['skipped']} training examples longer than the context were skipped)" \
            if data.get("skipped") else ""
        lines += ["## Instruction tuning (SFT)", "",
                  f"Chat set from the curated corpus: train {counts('train')}; validation {counts('val')}{skipped}. "
                  f"{sft['steps']:,} steps, {sft['tokens_seen']:,} tokens seen (packed rows), best validation loss "
                  f"{_fmt(sft['best_val_loss'])}.", ""]
    return lines


def _eval_section(facts: dict) -> list[str]:
    ev = facts.get("eval")
    if not ev:
        return []
    models = [m for m in ("base", "tuned", "reference") if m in ev["table"]]
    names = {"base": "base", "tuned": "tuned", "reference": (ev.get("reference") or {}).get("spec", "reference")}
    lines = ["## Held-out bits per byte", "", "Lower is better; tokenizer-independent, so the reference compares directly.", ""]
    domains = sorted({d for m in models for d in ev["bits_per_byte"].get(m, {})})
    lines += _table(["domain", *[names[m] for m in models]],
                    [[d, *[_fmt(ev["bits_per_byte"].get(m, {}).get(d, {}).get("bits_per_byte")) for m in models]]
                     for d in domains])
    lines += ["", "## Evaluation", "", "Accuracy ± standard error on the same items for every model; **↑** marks a "
              "score more than two standard errors above chance. `*_next_line` are the in-domain tasks built from the "
              "held-out split (3 lines of context, the true next line among 4).", ""]
    rows = []
    for task in ev["tasks"]:
        first = next((ev["table"][m][task] for m in models if task in ev["table"][m]), {})
        for metric in ("acc", "acc_norm", "exact_match", "bits_per_byte"):
            if all(ev["table"][m].get(task, {}).get(metric) is None for m in models):
                continue
            rows.append([task, metric, first.get("n"), _fmt(first.get("chance")),
                         *[_score(ev["table"][m].get(task), metric) for m in models]])
    lines += _table(["task", "metric", "n", "chance", *[names[m] for m in models]], rows)
    if ev.get("contamination"):
        lines += ["", "Contamination (items sharing a 13-gram with the training corpus, after decontamination):", ""]
        lines += _table(["task", "items", "contaminated"],
                        [[t, c["items"], c["contaminated"]] for t, c in ev["contamination"].items()])
    return lines + [""]


def _samples_section(out: Path) -> list[str]:
    lines = []
    for label in ("base", "tuned"):
        path = out / "eval" / f"{label}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        for s in result.get("samples", []):
            if not lines:
                lines = ["## Samples", "", "Greedy, from fixed prompts (chat prompts: the SFT validation split).", ""]
            kind = "chat" if s.get("chat") else "raw"
            completion = s["completion"].strip("\n") if s["completion"].strip() else \
                f"(only whitespace: {s['completion']!r})" if s["completion"] else "(nothing: EOS first)"
            lines += [f"**{label}**, {kind} prompt:", "", "```", s["prompt"].rstrip("\n"), "```", "", "->", "", "```",
                      completion, "```", ""]
            if s.get("expected"):
                lines += [f"expected: {s['expected']}", ""]
    return lines


def _sweep_section(facts: dict) -> list[str]:
    sw = facts.get("sweep")
    if not sw:
        return []
    s = sw["summary"]
    lines = ["## Scaling sweep", "", f"`{sw['setting']}` = {', '.join(map(str, sw['values']))}, each trained for the "
             "same number of tokens per parameter; loss = held-out nats per token.", ""]
    lines += _table(["size", "parameters", "tokens", "FLOPs (6ND)", "held-out loss"],
                    [[p["label"], p["parameters"], p["tokens"], f"{p['flops']:.3g}", _fmt(p["loss"], 4)]
                     for p in sw["points"] + ([sw["predicted_point"]] if sw.get("predicted_point") else [])])
    lines += ["", f"Fits: L ∝ N^-{_fmt(s['alpha_params'], 3)} (r² {_fmt(s['r2_params'], 3)}), "
                  f"L ∝ C^-{_fmt(s['alpha_flops'], 3)} (r² {_fmt(s['r2_flops'], 3)})."]
    if s.get("measured_loss") is not None:
        lines += ["", f"Prediction for {s['predicted_label']}: {_fmt(s['predicted_loss'], 4)}, measured "
                      f"{_fmt(s['measured_loss'], 4)}: error {_fmt(s['error_signed_percent'], 1)}%."]
    return lines + ["", f"![scaling]({sw['plot']})", ""]


def _cost_section(out: Path, order: list[str]) -> list[str]:
    records = stage_records(out)
    rows, wall, cpu = [], 0.0, 0.0
    for name in order:
        r = records.get(name)
        if name == "report" or r is None:
            continue
        rows.append([name, "done" if r.get("done") else "not done", f"{r.get('seconds', 0):.1f}",
                     f"{r.get('cpu_seconds', 0):.1f}", f"{r.get('cpu_seconds', 0) / 3600:.4f}"])
        wall, cpu = wall + r.get("seconds", 0), cpu + r.get("cpu_seconds", 0)
    rows.append(["**total**", "", f"{wall:.1f}", f"{cpu:.1f}", f"{cpu / 3600:.4f}"])
    lines = ["## Wall time and cost per stage", ""] + _table(["stage", "state", "wall s", "CPU s", "CPU-hours"], rows)
    lines += ["", f"CPU-hours = user + system CPU time of the pipeline process and its worker processes "
                  f"(getrusage), / 3600, summed over every session that worked on a stage (resumes included). "
                  f"Machine: {os.cpu_count()} logical CPUs. On a GPU, GPU-hours would be the stage's wall hours "
                  "times the GPUs it held.", ""]
    return lines


def run_report(ctx: StageContext) -> dict:
    out = ctx.out
    img_dir = ctx.dir
    facts = ctx.facts
    lines = [f"# Report card: `llmlab e2e` recipe {ctx.recipe.name}", "",
             "Raw built-in text → curated → BPE → pretrained → instruction-tuned → evaluated. "
             f"Resolved recipe: `{(out / 'recipe.json').name}`.", ""]
    lines += _funnel_section(out, facts, img_dir)
    lines += [""] + _model_section(facts)
    plot = plot_losses({"pretrain": out / "pretrain" / "run", "sft": out / "sft" / "run"}, img_dir / "loss.png")
    if plot is not None:
        lines += [f"![loss curves]({IMAGES}/{plot.name})", ""]
    lines += _eval_section(facts) + _samples_section(out) + _sweep_section(facts) + _cost_section(out, list(ctx.keys))
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(out / "report.md", text)
    return {"report": "report.md", "sections": [line[3:] for line in lines if line.startswith("## ")]}
