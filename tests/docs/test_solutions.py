"""The guide's exercise solutions (examples/solutions/NN_*.py) run and their checks pass.

Each solution is a script that prints what it checks and exits non-zero when a check fails, so an
exercise whose answer drifts from the library fails CI here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SOLUTIONS = sorted((Path(__file__).resolve().parents[2] / "examples" / "solutions").glob("[0-9][0-9]_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SOLUTIONS, ids=[s.stem for s in SOLUTIONS])
def test_solution_runs_and_its_checks_pass(script: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, text=True, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, f"{script.name} exited {done.returncode}\n{done.stdout[-3000:]}"
    assert done.stdout.strip(), f"{script.name} printed nothing: a solution says what it checked"
