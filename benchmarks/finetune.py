"""Fine-tuning SmolLM2 at equal token budgets: llmlab's LoRA / QLoRA / DoRA / full fine-tuning next
to the same LoRA recipe through PEFT + transformers, and QLoRA through PEFT + bitsandbytes.

    python benchmarks/finetune.py                                   # extract-json: every method + anchors
    python benchmarks/finetune.py --task facts --task-size 16 --rows base,lora-r1-wv,lora,full --steps 96 \\
        --lr-scale 5 --test-limit 0 --max-new-tokens 16 --ppl-tokens 2048   # capacity: does LoRA learn less?
    python benchmarks/finetune.py --merge-kl --ppl-tokens 2048     # QLoRA's two merge orders (after the first)

Every row trains in its own process (so its peak RSS is its own) on the same examples, tokenized
the same way, drawn in the same order: the PEFT rows are fed llmlab's length-bucketed batches.
Then a second process scores the result with one evaluator: validation loss, exact match of
greedy replies on the test split (the PEFT adapters are loaded into llmlab through its PEFT
reader, QLoRA's onto the same NF4 base), and forgetting (perplexity on general text and the loss
on the other built-in task, against the base).

tokens/s counts non-pad input tokens, over the steps after the first two (warm-up). Where the
setups differ: PEFT computes the output head at every position (transformers' forward; ours runs
it at target positions only), and gets no attention mask (right padding makes one unnecessary).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

# name -> (engine, method, LoRA changes, notes)
ROWS: dict[str, dict] = {
    "base": dict(engine="none", method="base"),
    "lora": dict(engine="llmlab", method="lora"),
    # Rows of 512 tokens hold ~3.7 extract-json examples: a quarter of the batch is the same budget.
    "lora-packed": dict(engine="llmlab", method="lora", pack=True, batch_div=4),
    "lora-gc": dict(engine="llmlab", method="lora", grad_checkpoint=True),
    "qlora": dict(engine="llmlab", method="qlora"),
    "dora": dict(engine="llmlab", method="dora"),
    "full": dict(engine="llmlab", method="full"),
    "lora-r1-wv": dict(engine="llmlab", method="lora", lora=dict(r=1, alpha=2, targets="attn.wv")),
    "lora-r4-attn": dict(engine="llmlab", method="lora", lora=dict(r=4, alpha=8, targets="attn.wq,attn.wk,attn.wv,attn.wo")),
    "peft-lora": dict(engine="peft", method="lora"),
    "peft-qlora": dict(engine="peft", method="qlora"),
}
DEFAULT_ROWS = "base,lora,lora-packed,lora-gc,qlora,dora,full,peft-lora,peft-qlora"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nonpad_tokens(batch) -> int:
    """Input positions holding a real token: each row's examples end with a target (the reply's
    end-of-turn), and padding only follows them."""
    labels = batch["labels"]
    T = labels.size(1)
    last = T - 1 - (labels != -100).flip(1).int().argmax(1)
    has = (labels != -100).any(1)
    return int(((last + 1) * has).sum())


def build_data(args, tokenizer, pack: bool):
    from llmlab.finetune.sft_data import SFTDataset
    from llmlab.finetune.tasks import build_task

    task = build_task(args.task, args.task_size, seed=0)
    return task, SFTDataset(task.train, task.validation, tokenizer, args.seq_len, pack=pack, seed=0)


def lora_config(spec: dict):
    from llmlab.finetune.config import LoRAConfig
    return LoRAConfig(**spec.get("lora", {}))


def batch_size(args, spec: dict) -> int:
    return max(1, args.batch_size // spec.get("batch_div", 1))


def train_config(args, spec: dict, seed: int):
    import dataclasses

    from llmlab.finetune.config import method_defaults

    base = method_defaults(spec["method"])
    return dataclasses.replace(base, max_iters=args.steps, batch_size=batch_size(args, spec), seq_len=args.seq_len,
                               lr=base.lr * args.lr_scale, min_lr=base.min_lr * args.lr_scale,
                               eval_every=args.steps, eval_iters=5, ckpt_every=args.steps, log_every=1,
                               threads=args.threads, seed=seed, tensorboard=False)


# ----------------------------------------------------------------------------- training workers


def train_llmlab(args, spec: dict, out: Path, seed: int) -> dict:
    from llmlab.finetune.config import FinetuneConfig, FinetuneRun
    from llmlab.finetune.run import start
    from llmlab.model.config import ModelConfig

    pack = spec.get("pack", args.pack)
    run = FinetuneRun(ModelConfig(vocab_size=1), train_config(args, spec, seed),
                      FinetuneConfig(method=spec["method"], task=args.task, task_size=args.task_size, pack=pack,
                                     grad_checkpoint=spec.get("grad_checkpoint", False)),
                      lora_config(spec), "smollm2")
    start(run, out / "run")
    rss = peak_rss_mib()
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time_s"] for r in rows if "time_s" in r}
    # Replay the trainer's batch draws (its generator is seeded with the run's seed) to count real tokens.
    import torch
    from llmlab.model.source import load_model
    _, tokenizer, _ = load_model("smollm2")
    _, data = build_data(args, tokenizer, pack)
    g = torch.Generator().manual_seed(seed)
    counts = [nonpad_tokens(data.get_batch("train", batch_size(args, spec), args.seq_len, g)) for _ in range(args.steps)]
    timed = range(3, args.steps + 1)
    seconds = times[args.steps] - times[2]
    tokens = sum(counts[s - 1] for s in timed)
    size = (out / "run" / "best.pt").stat().st_size
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / len(timed), "peak_rss_mib": rss,
            "artifact_mib": size / 2**20, "final_train_loss": rows[-1].get("train_loss"),
            "losses": [r["train_loss"] for r in rows if "train_loss" in r]}


def train_peft(args, spec: dict, out: Path, seed: int) -> dict:
    import math

    import peft
    import torch
    import torch.nn.functional as F
    import transformers

    from llmlab.train.optim import lr_at

    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    hf_dir = Path(args.cache) / "smollm2-hf"
    kwargs = {"dtype": torch.float32}
    if spec["method"] == "qlora":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, **kwargs)
    if spec["method"] == "qlora":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    ours = lora_config(spec)
    model = peft.get_peft_model(model, peft.LoraConfig(r=ours.r, lora_alpha=ours.alpha, lora_dropout=ours.dropout,
                                                        target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    from llmlab.model.source import load_model
    _, tokenizer, _ = load_model("smollm2")
    _, data = build_data(args, tokenizer, pack=False)
    cfg = train_config(args, spec, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                            foreach=True)
    g = torch.Generator().manual_seed(seed)
    tokens, seconds, loss_value, losses = 0, 0.0, math.nan, []
    for step in range(args.steps):
        t0 = time.perf_counter()
        lr = lr_at(step / args.steps, step, cfg.lr, cfg.min_lr, cfg.warmup_iters)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = data.get_batch("train", args.batch_size, args.seq_len, g)
        logits = model(input_ids=batch["input_ids"]).logits            # every position, as transformers does
        labels = batch["labels"]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss)
        losses.append(loss_value)
        if step >= 2:
            seconds += time.perf_counter() - t0
            tokens += nonpad_tokens(batch)
        print(f"step {step + 1}/{args.steps} loss {loss_value:.4f} {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    rss = peak_rss_mib()
    model.save_pretrained(out / "peft")
    size = (out / "peft" / "adapter_model.safetensors").stat().st_size
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / (args.steps - 2), "peak_rss_mib": rss,
            "artifact_mib": size / 2**20, "final_train_loss": loss_value, "losses": losses}


# ----------------------------------------------------------------------------- evaluation worker


def evaluate(args, spec: dict, out: Path) -> dict:
    import torch

    from llmlab.finetune.evaluate import forgetting_measures, generate_replies, general_text, reply_loss, \
        score_predictions, OTHER_TASK
    from llmlab.finetune.tasks import build_task
    from llmlab.infer import Engine
    from llmlab.model.source import load_model

    torch.set_num_threads(args.threads)
    if spec["engine"] == "llmlab":
        model, tokenizer, _ = load_model(out / "run", merge_adapters=True)
    else:
        model, tokenizer, _ = load_model("smollm2")
        if spec["engine"] == "peft":
            from llmlab.finetune.lora import merge_lora
            from llmlab.finetune.peft import load_peft_adapter
            load_peft_adapter(model, out / "peft", method="qlora" if spec["method"] == "qlora" else None)
            merge_lora(model)
    model.eval()
    task = build_task(args.task, args.task_size, seed=0)
    test = task.test[:args.test_limit] if args.test_limit else task.test
    kinds = task.test_kinds[:len(test)] if task.test_kinds else None
    engine = Engine(model, tokenizer, torch.device("cpu"), name=spec["method"])
    replies = generate_replies(engine, test, max_new_tokens=args.max_new_tokens)
    scores = score_predictions(task.score, test, replies, kinds)
    scores["val_loss"] = reply_loss(model, tokenizer, task.validation, "cpu")
    other = build_task(OTHER_TASK[args.task], seed=0).validation[:50]
    text, _ = general_text(args.general_file)
    scores.update(forgetting_measures(model, tokenizer, "cpu", text, args.ppl_tokens, other))
    scores["sample_reply"] = replies[0]
    return scores


def merge_kl(args) -> dict:
    """QLoRA's merge-order trap, measured on the trained qlora row: the fine-tuned model computes
    NF4(W) + s B A; merging onto dequantize(quantize(W)) keeps that, merging onto the float W does
    not. Mean KL(trained || merged) per token over general text, in nats."""
    import copy

    import torch
    import torch.nn.functional as F

    from llmlab.finetune.evaluate import general_text
    from llmlab.finetune.lora import lora_layers, merge_lora
    from llmlab.model.source import load_model

    torch.set_num_threads(args.threads)
    run = Path(args.work) / f"{args.task}-qlora-s{args.seeds.split(',')[0]}" / "run"
    trained, tokenizer, _ = load_model(run)
    float_base, _, _ = load_model("smollm2")
    original = dict(float_base.named_modules())
    merged_nf4 = copy.deepcopy(trained)
    merge_lora(merged_nf4)
    merged_float = copy.deepcopy(trained)
    for name, layer in lora_layers(merged_float).items():
        parent, _, child = name.rpartition(".")
        setattr(merged_float.get_submodule(parent), child, layer.merged_linear(onto=original[name].weight))
    text, source = general_text(args.general_file)
    ids = torch.tensor(tokenizer.encode(text)[:args.ppl_tokens])
    out = {"text": source, "tokens": 0}
    sums = {"onto_nf4": 0.0, "onto_float": 0.0, "base_float": 0.0}
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 512):
            window = ids[start:start + 512][None]
            ref = F.log_softmax(trained(window)["logits"].float(), -1)
            for key, model in (("onto_nf4", merged_nf4), ("onto_float", merged_float), ("base_float", float_base)):
                logp = F.log_softmax(model(window)["logits"].float(), -1)
                sums[key] += float((ref.exp() * (ref - logp)).sum(-1).sum())
            out["tokens"] += window.size(1)
    out.update({f"kl_{k}": v / out["tokens"] for k, v in sums.items()})
    print(f"QLoRA merge order, mean KL(trained || merged) over {out['tokens']} tokens of {source}: onto "
          f"dequantize(quantize(W)) {out['kl_onto_nf4']:.2e} nats, onto the float W {out['kl_onto_float']:.4f} nats "
          f"(the float base without the adapter: {out['kl_base_float']:.4f})")
    return out


# ----------------------------------------------------------------------------- driver


def worker(args) -> int:
    spec, out = ROWS[args.row], Path(args.out_dir)
    if args.worker == "train":
        result = (train_peft if spec["engine"] == "peft" else train_llmlab)(args, spec, out, args.seed)
    else:
        result = evaluate(args, spec, out)
    (out / f"{args.worker}.json").write_text(json.dumps(result))
    return 0


def run_row(args, name: str, seed: int) -> dict:
    out = Path(args.work) / f"{args.task}-{name}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, __file__, "--row", name, "--out-dir", str(out), "--seed", str(seed)] + args.passthrough
    result = {"row": name, "seed": seed}
    for stage in (["train"] if ROWS[name]["engine"] != "none" else []) + ["eval"]:
        if (out / f"{stage}.json").is_file() and not args.fresh:
            print(f"[{name} s{seed}] {stage}: reusing {out / (stage + '.json')}", file=sys.stderr, flush=True)
        else:
            if stage == "train" and (out / "run").exists():
                import shutil
                shutil.rmtree(out / "run")
            t0 = time.perf_counter()
            print(f"[{name} s{seed}] {stage} ...", file=sys.stderr, flush=True)
            subprocess.run(common + ["--worker", stage], check=True, stderr=subprocess.DEVNULL if args.quiet else None)
            print(f"[{name} s{seed}] {stage} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        result.update(json.loads((out / f"{stage}.json").read_text()))
    return result


def print_table(results: list[dict], args) -> None:
    base = next((r for r in results if r["row"] == "base"), None)
    keys = [k for k in results[0] if k.startswith("exact_match") or k == "json_valid"] if results else []
    header = ["row", "seed", *keys, "val loss", "general ppl", "Δppl %", "other-task loss", "trainable",
              "tokens/s", "s/step", "peak RSS MiB", "saved MiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        dppl = (r["general_ppl"] / base["general_ppl"] - 1) * 100 if base else float("nan")
        cells = [r["row"], str(r["seed"]), *[f"{r.get(k, float('nan')):.3f}" for k in keys], f"{r['val_loss']:.4f}",
                 f"{r['general_ppl']:.2f}", f"{dppl:+.2f}", f"{r.get('other_task_loss', float('nan')):.4f}",
                 f"{r.get('trainable', '')}",
                 *(f"{r[k]:.1f}" if k in r else "-" for k in ("tokens_per_s", "s_per_step", "peak_rss_mib", "artifact_mib"))]
        print("| " + " | ".join(cells) + " |")


def plot_curves(results: list[dict], args) -> None:
    """Training loss per step of every trained row (the same batches for all), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if r.get("losses"):
            ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=f"{r['row']} (seed {r['seed']})",
                    linestyle="--" if r["row"].startswith("peft") else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per target token)")
    ax.set_title(f"Fine-tuning SmolLM2-135M on {args.task}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


def trainable_count(name: str) -> str:
    spec = ROWS[name]
    if spec["method"] == "base":
        return "0"
    if spec["method"] == "full":
        return "134.5M"
    lora = lora_config(spec)
    return f"r={lora.r} {lora.targets}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--task", default="extract-json")
    p.add_argument("--task-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--pack", action="store_true", help="pack examples for every llmlab row (default: length buckets)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply every method's default learning rate")
    p.add_argument("--seeds", default="1", help="comma list of training seeds (run-to-run noise)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-limit", type=int, default=100, help="test examples scored per row (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--general-file", default=str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/valid.txt"))
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--work", default="/tmp/llmlab-bench-finetune", help="where runs and adapters go")
    p.add_argument("--cache", default="/tmp/llmlab-bench-finetune", help="where the HF copy of SmolLM2 goes")
    p.add_argument("--fresh", action="store_true", help="retrain rows whose results exist")
    p.add_argument("--quiet", action="store_true", help="hide the workers' progress")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--plot", help="write the training curves of every row to this PNG")
    p.add_argument("--merge-kl", action="store_true", help="measure QLoRA's two merge orders on the trained qlora row")
    # internal: one stage of one row, in its own process
    p.add_argument("--worker", choices=["train", "eval"], help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not Path(args.general_file).is_file():
        args.general_file = None
    if args.worker:
        return worker(args)
    if args.merge_kl:
        result = merge_kl(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    args.passthrough = _strip_driver_flags(sys.argv[1:])
    hf_dir = Path(args.cache) / "smollm2-hf"
    if any(ROWS[n]["engine"] == "peft" for n in names) and not (hf_dir / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "llmlab", "export", "smollm2", "--to", "hf", str(hf_dir)], check=True)
    print(f"# fine-tuning SmolLM2-135M-Instruct on {args.task} (size {args.task_size or 'default'}): {args.steps} steps "
          f"x {args.batch_size} x up to {args.seq_len} tokens, float32\n# {describe(args.threads)}")
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in names:
            if name == "base" and seed != int(args.seeds.split(",")[0]):
                continue
            row = run_row(args, name, seed)
            row["trainable"] = trainable_count(name)
            results.append(row)
    print_table(results, args)
    peft_row = next((r for r in results if r["row"] == "peft-lora"), None)
    lora_row = next((r for r in results if r["row"] == "lora"), None)
    if peft_row and lora_row:
        print(f"\nllmlab LoRA vs PEFT LoRA: {lora_row['tokens_per_s'] / peft_row['tokens_per_s']:.2f}x tokens/s, "
              f"{lora_row['peak_rss_mib'] / peft_row['peak_rss_mib']:.2f}x peak RSS")
    q, pq = next((r for r in results if r["row"] == "qlora"), None), next((r for r in results if r["row"] == "peft-qlora"), None)
    if q and pq:
        print(f"llmlab QLoRA vs PEFT+bitsandbytes QLoRA: {q['tokens_per_s'] / pq['tokens_per_s']:.2f}x tokens/s, "
              f"{q['peak_rss_mib'] / pq['peak_rss_mib']:.2f}x peak RSS")
    if args.plot:
        plot_curves(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "passthrough"},
                                               "machine": describe(args.threads), "results": results}, indent=2))
    return 0


def _strip_driver_flags(argv: list[str]) -> list[str]:
    """The command line minus the flags only the driver reads, for the workers."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--rows", "--seeds", "--json", "--plot"):
            skip = True
            continue
        if a.startswith(("--rows=", "--seeds=", "--json=", "--plot=")) or a in ("--fresh", "--quiet"):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
