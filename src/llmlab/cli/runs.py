"""`llmlab runs compare A B ...`: config differences, final/best losses, overlaid loss curves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # metavar: argparse names it in "the following arguments are required: compare".
    sub = parser.add_subparsers(dest="action", required=True, metavar="compare")
    compare = sub.add_parser("compare", help="compare two or more run directories")
    compare.add_argument("runs", nargs="+", type=Path, help="run directories")
    compare.add_argument("--plot", type=Path, default=Path("runs/compare.png"),
                         help="where to write the overlaid loss curves (PNG)")
    compare.add_argument("--labels", type=lambda text: text.split(","), default=None,
                         help="comma-separated names for the runs, in order, used in the table and the "
                              "plot's legend instead of the directory names, e.g. \"Llama block,GPT-2 block\"")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    from llmlab.train.compare import compare_runs, format_table

    result = compare_runs(args.runs, args.plot, labels=args.labels)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"\ncurves: {args.plot}")
    return 0
