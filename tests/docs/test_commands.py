"""Every command a reader is told to run in the README and docs/ runs as written.

A fenced block whose info string is `bash run` is a follow-along block: each block runs as one bash
script, in order, in one scratch directory per document (so a later block can use what an earlier one wrote),
with the checkout's `examples/`, `docs/` and `notebooks/` linked in as a reader at the repository root
sees them, and `llmlab` / `python` from this interpreter's environment. A command that exits non-zero
fails the test with its output and the failing command. Plain `bash` blocks (long runs, GPU runs, benchmarks) are not run.

For authors: `python tests/docs/test_commands.py docs/01-gpt-from-scratch.md` runs one document's
blocks and prints each block's time and output, the numbers a follow-along box quotes (one block
per command gives one time per command).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = ("examples", "docs", "notebooks")
SECONDS_PER_BLOCK = 300
FENCE = re.compile(r"^```bash run\s*\n(.*?)^```", re.M | re.S)


@dataclass
class Block:
    document: Path
    line: int  # 1-based line of the block's first command in its document
    text: str


def follow_along_blocks(document: Path) -> list[Block]:
    """The `bash run` blocks of a document, in order."""
    source = document.read_text(encoding="utf-8")
    return [Block(document, source.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(source)]


def scratch_directory(root: Path) -> Path:
    for name in LINKED:
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    return root


# Each block runs as one bash script, so heredocs, loops and arrays work as a reader pasting it sees
# them; -e stops at the first failing command and the ERR trap names it.
PRELUDE = "set -eo pipefail\ntrap 'echo \"FAILED (exit $?): $BASH_COMMAND\" >&2' ERR\n"


def run_block(block: Block, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", PRELUDE + block.text], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=SECONDS_PER_BLOCK)
    return done, time.perf_counter() - start


WITH_BLOCKS = [d for d in DOCUMENTS if follow_along_blocks(d)]


@pytest.mark.slow
@pytest.mark.parametrize("document", WITH_BLOCKS, ids=[d.stem for d in WITH_BLOCKS])
def test_follow_along_commands_run_as_written(document: Path, tmp_path: Path) -> None:
    cwd = scratch_directory(tmp_path)
    for block in follow_along_blocks(document):
        done, seconds = run_block(block, cwd)
        print(f"{seconds:6.1f} s  {document.name}:{block.line}")
        if done.returncode != 0:
            pytest.fail(f"{document.name}: the `bash run` block at line {block.line} exited {done.returncode}\n"
                        f"{done.stdout[-3000:]}", pytrace=False)


def test_blocks_are_found_with_their_lines_and_failures_are_named(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text("x\n```bash run\nA=1\ncat <<EOF\nthe $A\nEOF\n```\n```bash\nnot run\n```\n"
                   "```bash run\ntrue\nfalse\necho never\n```\n", encoding="utf-8")
    first, second = follow_along_blocks(doc)
    assert (first.line, second.line) == (3, 12)
    done, _ = run_block(first, tmp_path)
    assert done.returncode == 0 and done.stdout == "the 1\n"
    done, _ = run_block(second, tmp_path)
    assert done.returncode == 1 and "FAILED (exit 1): false" in done.stdout and "never" not in done.stdout


def main(paths: list[str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        cwd = scratch_directory(Path(root))
        for path in paths:
            total = 0.0
            for block in follow_along_blocks(Path(path).resolve()):
                done, seconds = run_block(block, cwd)
                total += seconds
                print(f"--- {path}:{block.line}  {seconds:.1f} s, exit {done.returncode}\n{block.text}"
                      f"--- output\n{done.stdout}")
                if done.returncode != 0:
                    raise SystemExit(f"{path}:{block.line} failed")
            print(f"{path}: {total:.1f} s in all")


if __name__ == "__main__":
    main(sys.argv[1:])
