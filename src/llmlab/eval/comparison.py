"""Two evaluation results side by side: is model B's score different from model A's, or is it noise?

Per task and metric: A, B, B - A and a p-value. When both results hold per-item outcomes for the
same items (same task, split and number of shots), the test is paired: McNemar's exact test on the
items where exactly one model is right. Otherwise the two scores are treated as independent
samples (a two-proportion z-test), which needs a much larger difference to be significant.
"""

from __future__ import annotations

from llmlab.eval import metrics

PAIRED_METRICS = ("acc", "acc_norm", "acc_per_token", "exact_match")


def compare_results(a: dict, b: dict) -> list[dict]:
    """Rows {"task", "metric", "a", "b", "diff", "p", "test", "n"} for every task and 0/1 metric both results
    have (bits per byte: the difference and each side's stderr, no p-value)."""
    rows = []
    for task in [t for t in a["tasks"] if t in b["tasks"]]:
        sa, sb = a["tasks"][task], b["tasks"][task]
        items_a = {it["id"]: it for it in a.get("items", {}).get(task, [])}
        items_b = {it["id"]: it for it in b.get("items", {}).get(task, [])}
        common = [i for i in items_a if i in items_b]
        same_prompts = all(sa.get(k) == sb.get(k) for k in ("split", "shots"))
        for metric in [m for m in PAIRED_METRICS if m in sa and m in sb]:
            row = {"task": task, "metric": metric, "a": sa[metric], "b": sb[metric], "diff": sb[metric] - sa[metric]}
            if common and same_prompts:
                wins = sum(1 for i in common if items_b[i][metric] > items_a[i][metric])
                losses = sum(1 for i in common if items_b[i][metric] < items_a[i][metric])
                row.update(p=metrics.mcnemar_p(wins, losses), test=f"McNemar paired ({wins} vs {losses} of "
                           f"{len(common)} items differ)", n=len(common))
            else:
                row.update(p=metrics.two_proportion_p(sa[metric], sa["n"], sb[metric], sb["n"]),
                           test="two-proportion z (unpaired)", n=min(sa["n"], sb["n"]))
            rows.append(row)
        if "bits_per_byte" in sa and "bits_per_byte" in sb:
            rows.append({"task": task, "metric": "bits_per_byte", "a": sa["bits_per_byte"], "b": sb["bits_per_byte"],
                         "diff": sb["bits_per_byte"] - sa["bits_per_byte"], "p": None,
                         "test": f"stderr {sa['stderr']['bits_per_byte']:.4f} / {sb['stderr']['bits_per_byte']:.4f}",
                         "n": min(sa["n"], sb["n"])})
    return rows
