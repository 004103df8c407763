"""The seven `llmlab inspect` commands: each runs one probe of llmlab.inspect on a loaded model and
returns (the JSON-able result with the files it wrote, the text report). Flags are in cli/inspect.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmlab.core.errors import LLMLabError


def _encode(tokenizer, text: str, flag: str, chat: bool = False) -> list[int]:
    from llmlab.inspect.trace import encode_prompt

    try:
        return encode_prompt(tokenizer, text, chat)
    except LLMLabError as e:   # e.g. a character tokenizer meeting a character it never saw
        raise LLMLabError(f"--{flag}: {e}") from None


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LLMLabError(f"{flag} {text!r}: give comma-separated integers, e.g. 0,8,-1") from None


def _tokens(tokenizer, ids: list[int]) -> list[str]:
    from llmlab.inspect.trace import token_text
    return [token_text(tokenizer, i) for i in ids]


def attention(args: argparse.Namespace, model, tokenizer, text: str, out: Path):
    from llmlab.inspect.attention import head_summary, plot_attention, to_json
    from llmlab.inspect.trace import trace

    n = len(model.blocks)
    layers = _int_list(args.layers, "--layers") if args.layers else sorted({0, n // 2, n - 1})
    ids = _encode(tokenizer, text, "prompt", args.chat)
    tr = trace(model, ids, attention_layers=layers)
    tokens = _tokens(tokenizer, ids)
    files = [str(p) for p in plot_attention(tr, tokens, out)]
    lines = [f"{len(ids)} tokens; per head, averaged over query positions: entropy of the attention row (bits), "
             "mass on the first token, on the previous token, on itself"]
    for layer, weights in sorted(tr.attentions.items()):
        lines.append(f"layer {layer}:   head  entropy  first   prev   self")
        for s in head_summary(weights):
            lines.append(f"          {layer}.{s['head']:<3} {s['entropy_bits']:7.2f}  {s['first_token']:.2f}   "
                         f"{s['previous_token']:.2f}   {s['self']:.2f}")
    return {**to_json(tr, tokens), "files": files}, "\n".join(lines)


def logit_lens(args: argparse.Namespace, model, tokenizer, text: str, out: Path):
    from llmlab.inspect.lens import format_table, logit_lens as lens, plot_lens, to_json
    from llmlab.inspect.trace import token_text, trace

    ids = _encode(tokenizer, text, "prompt", args.chat)
    target = None
    if args.target is not None:
        target_ids = tokenizer.encode(args.target)
        if len(target_ids) != 1:
            raise LLMLabError(f"--target {args.target!r} is {len(target_ids)} tokens "
                              f"({', '.join(repr(token_text(tokenizer, i)) for i in target_ids)}): give one token, "
                              "usually with its leading space, e.g. ' Rome'")
        target = target_ids[0]
    result = lens(model, trace(model, ids), tokenizer, target=target, top_k=args.top_k,
                  positions=args.positions or None)
    files = [str(plot_lens(result, tokenizer, out / "logit-lens.png"))]
    first, last = result.first_top1_layer(), len(result.top) - 1
    name = repr(token_text(tokenizer, result.target))
    verdict = (f"{name} never becomes top-1" if first is None else
               f"{name} is top-1 only at the output (layer {last})" if first == last else
               f"{name} is top-1 from layer {first} of {last} on")
    return {**to_json(result, tokenizer), "files": files}, format_table(result, tokenizer, args.every) + "\n" + verdict


def surprise(args: argparse.Namespace, model, tokenizer, text: str, out: Path):
    from llmlab.core.io import atomic_write_text
    from llmlab.core.progress import progress
    from llmlab.inspect import surprise as probe

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and not args.json:
            bar = progress(total, desc="scoring", unit="tok")
        if bar is not None:
            bar.update(done - bar.n)

    try:
        result = probe.token_surprise(model, tokenizer, text, window=args.window, stride=args.stride,
                                      batch_size=args.batch_size, progress=report)
    finally:
        if bar is not None:
            bar.close()
    spans = probe.worst_spans(result, k=args.spans, span_tokens=args.span_tokens)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "surprise.html"
    atomic_write_text(html, probe.render_html(result, title=f"{args.model}: per-token surprise", spans=spans))
    files = [str(html), str(probe.plot_surprise(result, out / "surprise.png"))]
    summary = result.summary()
    lines = []
    if len(result.ids) <= 1500:
        lines.append(probe.render_terminal(result, color=not args.no_color and sys.stdout.isatty()))
    lines.append(f"\n{summary['tokens_scored']} tokens scored: mean loss {summary['mean_loss']:.3f} nats, perplexity "
                 f"{summary['perplexity']:.2f}, {summary['bits_per_byte']:.3f} bits per byte")
    lines.append(f"the {len(spans)} most surprising spans of {args.span_tokens} tokens:")
    for s in spans:
        lines.append(f"  {s['mean_loss']:6.2f} nats  {s['text']!r}  (worst {s['worst_token']!r} at {s['worst_loss']:.1f})")
    return {**probe.to_json(result, spans), "files": files}, "\n".join(lines)


def activations(args: argparse.Namespace, model, tokenizer, text: str, out: Path):
    from llmlab.inspect.activations import activation_stats, plot_activations

    ids = _encode(tokenizer, text, "prompt", args.chat)
    stats = activation_stats(model, ids, threshold=args.threshold, bins=args.bins, tokenizer=tokenizer)
    files = [str(p) for p in plot_activations(stats, out)]
    lines = ["layer  mean |residual|   MLP hidden: std   kurtosis  near zero"]
    for i, norm in enumerate(stats["residual_norm_by_layer"]):
        mlp = stats["mlp"][i] if i < len(stats["mlp"]) else None
        row = f"{i:>5}  {norm:15.2f}"
        if mlp:
            row += f"   {mlp['std']:15.3f}   {mlp['kurtosis']:8.1f}  {mlp['frac_near_zero']:9.2f}"
        lines.append(row)
    dims = stats["outliers"]["dims"]
    lines.append(f"outlier dimensions (|x| >= {args.threshold:g} in >= 25% of layers and >= 6% of positions): "
                 + (", ".join(f"{d['dim']} (max {d['max_abs']:.1f})" for d in dims) or "none"))
    for m in stats["massive_activations"][:5]:
        lines.append(f"  largest residual entries: layer {m['layer']} position {m['position']} ({m['token']!r}) "
                     f"dim {m['dim']}: {m['value']:.1f}")
    return {**stats, "files": files}, "\n".join(lines)


def heads(args: argparse.Namespace, model, tokenizer, text, out: Path):
    import random

    from llmlab.inspect.heads import copy_loss, head_scores, plot_scores, ranked

    probe = dict(length=args.length, batch=args.batch, seed=args.seed)
    scores = head_scores(model, tokenizer, args.task, **probe)
    files = [str(plot_scores(scores, args.task, out / f"heads-{args.task}.png"))]
    best = ranked(scores)
    lines = [f"{args.task} score of every head ({scores.numel()} heads; mean {float(scores.mean()):.3f}); the best:"]
    lines += [f"  {b['head']:>6}  {b['score']:.3f}" for b in best[:args.top]]
    result = {"task": args.task, **probe, "scores": [[round(float(v), 4) for v in row] for row in scores],
              "ranked": best, "files": files}
    if args.ablate_top:
        def as_heads(chosen):
            heads: dict[int, list[int]] = {}
            for b in chosen:
                heads.setdefault(b["layer"], []).append(b["index"])
            return heads
        k = min(args.ablate_top, len(best) - 1)
        others = best[k:]
        controls = [random.Random(args.seed + draw).sample(others, k) for draw in range(3)]
        check = {"k": k, "intact": copy_loss(model, tokenizer, **probe),
                 "top_ablated": copy_loss(model, tokenizer, as_heads(best[:k]), **probe),
                 "random_ablated": [copy_loss(model, tokenizer, as_heads(c), **probe) for c in controls],
                 "random_heads": [[b["head"] for b in c] for c in controls]}
        result["ablation"] = check
        lines.append(f"loss on the repeated copy (nats/token): intact {check['intact']:.3f}; the top {k} heads "
                     f"ablated {check['top_ablated']:.3f}; {k} other heads ablated "
                     + ", ".join(f"{v:.3f}" for v in check["random_ablated"]) + " (three random draws)")
    return result, "\n".join(lines)


def ablate(args: argparse.Namespace, model, tokenizer, text: str, out: Path):
    from llmlab.inspect import ablate as probe
    from llmlab.inspect.heads import ranked
    from llmlab.inspect.trace import parse_heads

    ids = _encode(tokenizer, text, "prompt", args.chat)
    result, lines, files = {}, [], []
    if args.head:
        effect = probe.ablation_effect(model, tokenizer, ids, parse_heads(args.head, model), args.mode, args.top_k)
        files.append(str(probe.plot_effect(effect, out / "ablate.png")))
        top = effect["top_token"]
        lines.append(f"{args.mode}-ablating {', '.join(effect['heads'])}: KL(before || after) = "
                     f"{effect['kl_nats']:.4f} nats; {top['token']!r} {top['prob_before']:.3f} -> "
                     f"{top['prob_after']:.3f} (rank {top['rank_after']} after)")
        for when in ("before", "after"):
            lines.append(f"  {when:>6}: " + "  ".join(f"{t['token']!r} {t['prob']:.3f}" for t in effect[f"top_{when}"]))
        result["effect"] = effect
    if args.scan:
        scores = probe.scan_heads(model, ids, args.mode)
        files.append(str(probe.plot_scan(scores, out / "ablate-scan.png")))
        best = ranked(scores)
        lines.append(f"every head ablated alone ({args.mode}); the largest KL(before || after), nats:")
        lines += [f"  {b['head']:>6}  {b['score']:.4f}" for b in best[:10]]
        result["scan"] = {"kl_nats": [[round(float(v), 6) for v in row] for row in scores], "ranked": best}
    return {**result, "files": files}, "\n".join(lines)


def embeddings(args: argparse.Namespace, model, tokenizer, text, out: Path):
    from llmlab.inspect.embeddings import embedding_projection, plot_embeddings

    words = [w for w in args.tokens.split(",")]
    result = embedding_projection(model, tokenizer, words, table=args.table, neighbours=args.neighbours)
    files = [str(plot_embeddings(result, out / "embeddings.png"))]
    return {**result, "files": files}, _embeddings_report(result)


def _embeddings_report(result: dict) -> str:
    ratio = result["explained_variance"]
    lines = [f"PCA of the chosen tokens' {result['table']} embeddings: "
             + ", ".join(f"PC{i + 1} {r:.0%} of the variance" for i, r in enumerate(ratio))]
    for w in result["words"]:
        pieces = f"  (mean of {len(w['pieces'])} tokens)" if w["multi_token"] else ""
        near = ", ".join(f"{n['token']!r} {n['cosine']:.2f}" for n in w["neighbours"] or [])
        lines.append(f"  {w['word']!r}{pieces}" + (f"  nearest: {near}" if near else ""))
    return "\n".join(lines)


RUNNERS = {"attention": attention, "logit-lens": logit_lens, "surprise": surprise, "activations": activations,
           "heads": heads, "ablate": ablate, "embeddings": embeddings}
