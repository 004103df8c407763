"""`llmlab runs compare --labels`: the names a reader sees in the table and the plot's legend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmlab.train.compare as compare
from llmlab.cli import main
from llmlab.core.errors import LLMLabError


def fake_run(directory: Path, lr: float, val_losses: list[float]) -> Path:
    """A run directory as the trainer leaves it: config.json and metrics.jsonl (no training needed)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"train": {"lr": lr}, "model": {"n_layer": 2}}))
    rows = [{"step": 10 * (i + 1), "time_s": float(i), "train_loss": v + 0.1, "train_eval_loss": v - 0.05,
             "val_loss": v, "tokens_per_s": 1000.0} for i, v in enumerate(val_losses)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    return (fake_run(tmp_path / "tuneA", 2e-3, [2.5, 2.0, 1.8]),
            fake_run(tmp_path / "ablGPT2", 1e-2, [2.6, 2.2, 1.9]))


def test_labels_name_the_runs_in_the_legend_and_the_table(two_runs, tmp_path, monkeypatch, capsys):
    legends: list[list[str]] = []
    real_plot = compare.plot_losses

    def recording_plot(runs, path, title=""):
        legends.append(list(runs))
        real_plot(runs, path, title)

    monkeypatch.setattr(compare, "plot_losses", recording_plot)
    plot = tmp_path / "c.png"
    assert main(["runs", "compare", *map(str, two_runs), "--labels", "Llama block,GPT-2 block",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert legends == [["Llama block", "GPT-2 block"]]
    assert plot.stat().st_size > 1000
    assert "| | Llama block | GPT-2 block |" in out
    assert "tuneA" not in out and "ablGPT2" not in out
    assert "| train.lr | 0.0020 | 0.0100 |" in out

    assert main(["runs", "compare", *map(str, two_runs), "--labels", "A, B", "--plot", str(plot), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["runs"]) == ["A", "B"]
    assert result["runs"]["B"]["best_val_loss"] == 1.9
    assert result["differences"] == {"train.lr": {"A": 2e-3, "B": 1e-2}}


def test_without_labels_the_directory_names_are_used(two_runs, tmp_path):
    result = compare.compare_runs(list(two_runs), tmp_path / "c.png")
    assert list(result["runs"]) == ["tuneA", "ablGPT2"]


@pytest.mark.parametrize("labels, wanted", [(["only one"], r"1 name\(s\) for 2 runs"),
                                            (["same", "same"], "different"),
                                            (["a", " "], "non-empty")])
def test_bad_labels_say_what_is_wrong(two_runs, labels, wanted):
    with pytest.raises(LLMLabError, match=wanted):
        compare.compare_runs(list(two_runs), None, labels=labels)


def test_bad_labels_on_the_command_line_exit_with_a_message(two_runs, tmp_path, capsys):
    assert main(["runs", "compare", *map(str, two_runs), "--labels", "x,y,z", "--plot", str(tmp_path / "c.png")]) != 0
    assert "--labels has 3 name(s) for 2 runs" in capsys.readouterr().err
