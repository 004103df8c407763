"""`llmlab train`, `sample` and `runs compare` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llmlab.cli import main

TINY = ["--preset", "shakespeare-char", "--data", "shakespeare-tiny", "--n-layer", "1", "--n-head", "2",
        "--n-embd", "32", "--block-size", "32", "--batch-size", "4", "--eval-iters", "2", "--tensorboard", "false"]


def test_train_then_sample_then_compare(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *TINY, "--max-iters", "6", "--eval-every", "3", "--out", str(a)]) == 0
    assert main(["train", *TINY, "--max-iters", "6", "--eval-every", "3", "--lr", "1e-2", "--out", str(b)]) == 0
    for name in ("config.json", "metrics.jsonl", "loss.png", "ckpt.pt", "best.pt", "samples.txt"):
        assert (a / name).is_file(), name
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "time_s", "lr", "train_loss", "tokens_per_s"} <= set(rows[0])
    assert any("val_loss" in r for r in rows)
    capsys.readouterr()

    assert main(["sample", str(a), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) > 30
    main(["sample", str(a), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"])
    assert capsys.readouterr().out == first  # seeded: reproducible

    assert main(["runs", "compare", str(a), str(b), "--plot", str(tmp_path / "c.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["differences"] == {"train.lr": {"a": 2e-3, "b": 1e-2}}
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_bad_input_gets_a_clear_message(tmp_path, capsys):
    assert main(["train", "--n-layers", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --n-layers" in err and "did you mean --n-layer?" in err
    assert main(["sample", str(tmp_path)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    (tmp_path / "ckpt.pt").write_bytes(b"\x00" * 100)
    assert main(["sample", str(tmp_path)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["train", *TINY, "--data", "nonexistent-corpus", "--max-iters", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown data source 'nonexistent-corpus'" in capsys.readouterr().err
    assert main(["train", *TINY, "--max-time", "ten minutes", "--out", str(tmp_path / "y")]) == 2
    assert "cannot read duration 'ten minutes'" in capsys.readouterr().err


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("train", "sample", "runs"):
        assert f"  {verb} " in out


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmlab.cli", "train", *TINY, "--max-iters", "100000",
                             "--eval-every", "1000000", "--ckpt-every", "1000000", "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and
                                          len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: llmlab train --resume" in err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    stopped_at = steps[-1]
    assert main(["train", "--resume", str(run), "--max-iters", str(stopped_at + 5)]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == stopped_at + 5 and steps == sorted(steps)


def test_help_shows_the_chosen_presets_values_and_print_config_resolves_flags(tmp_path, capsys):
    from llmlab.train.config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help", "--preset", "small-llama"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"context length in tokens (default: {PRESETS['small-llama'].model.block_size})" in help_text
    assert "defaults of preset small-llama" in help_text
    preset_help = help_text.split("named starting configuration")[1].split("--print-config")[0]
    assert preset_help.count("(default:") == 1
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"(default: {PRESETS['shakespeare-char'].model.block_size})" in capsys.readouterr().out
    assert main(["train", "--preset", "small-llama", "--n-layer", "2", "--print-config", "--out", str(tmp_path / "r")]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["model"]["n_layer"] == 2
    assert config["model"]["n_embd"] == PRESETS["small-llama"].model.n_embd
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written
