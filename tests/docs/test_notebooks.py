"""Every notebook in notebooks/ runs top to bottom in a fresh kernel (issue: notebooks executed in CI).

The notebooks are jupytext percent-format `.py` files (the readable source); here each is read into a
notebook, executed by nbclient in a temporary working directory, and any cell error fails the test with
the cell's traceback. The time limit per notebook is a guard against a runaway cell, not a speed goal.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]-*.py"))
SECONDS_PER_NOTEBOOK = 240


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=SECONDS_PER_NOTEBOOK, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name}: a cell failed\n{error}", pytrace=False)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    assert seconds < SECONDS_PER_NOTEBOOK, f"{path.name} took {seconds:.0f} s (limit {SECONDS_PER_NOTEBOOK} s)"
    produced = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert produced, f"{path.name} printed and plotted nothing"
