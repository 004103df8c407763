"""The same pipeline on a local Dask cluster of 2 worker processes: byte-identical output."""

from __future__ import annotations

import pytest

from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.pipeline import recipe_config


@pytest.mark.slow
def test_dask_two_workers_matches_local_executor(curation_corpus, tmp_path):
    pytest.importorskip("distributed")
    root, _ = curation_corpus
    local = recipe_config("web-basic", [str(root / "raw")], str(tmp_path / "local"))
    dask = recipe_config("web-basic", [str(root / "raw")], str(tmp_path / "dask"))
    dask.execution.engine, dask.execution.workers = "dask", 2
    s_local, s_dask = run_pipeline(local), run_pipeline(dask)
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("part-*"))
    assert len(files) == 10  # 5 outputs + 5 removal logs
    for f in files:
        assert (tmp_path / "local" / f).read_bytes() == (tmp_path / "dask" / f).read_bytes(), f
    assert s_local["stages"] == s_dask["stages"] and s_local["input_errors"] == s_dask["input_errors"]
