"""Bad input, as a person types it, gets one clear paragraph naming the input, never a traceback.

Every invocation runs the real `llmlab` in a subprocess (so nothing the test process set up can
hide a traceback). The subprocesses of the table run a few at a time once per module; each case
then asserts on its own result, so a failure names the invocation.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llmlab.cli import VERBS

TINY = ["--data-file", "small.txt", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
        "--batch-size", "2", "--max-iters", "1", "--eval-iters", "1", "--tensorboard", "false", "--out", "run_x"]

# (id, argv, strings of which at least one must appear in the message: the offending input)
CASES = [
    ("gqa-heads", ["train", *TINY, "--n-head", "6", "--n-kv-head", "4", "--n-embd", "48"], ["--n-kv-head"]),
    ("rope-odd-head-dim", ["train", *TINY, "--n-embd", "66", "--n-head", "2"], ["head_dim"]),
    ("rope-indivisible", ["train", *TINY, "--n-embd", "100", "--n-head", "3"], ["--n-head"]),
    ("explicit-odd-head-dim", ["train", *TINY, "--head-dim", "15"], ["--head-dim"]),
    ("n-layer-0", ["train", *TINY, "--n-layer", "0"], ["--n-layer"]),
    ("block-size-0", ["train", *TINY, "--block-size", "0"], ["--block-size"]),
    ("dropout-1", ["train", *TINY, "--dropout", "1.0"], ["--dropout"]),
    ("norm-eps-0", ["train", *TINY, "--norm-eps", "0"], ["--norm-eps"]),
    ("lr-negative", ["train", *TINY, "--lr", "-1"], ["--lr"]),
    ("min-lr-above-lr", ["train", *TINY, "--lr", "1e-4", "--min-lr", "1e-3"], ["--min-lr"]),
    ("batch-size-0", ["train", *TINY, "--batch-size", "0"], ["--batch-size"]),
    ("eval-every-0", ["train", *TINY, "--eval-every", "0"], ["--eval-every"]),
    ("beta2-1", ["train", *TINY, "--beta2", "1"], ["--beta2"]),
    ("val-fraction", ["train", *TINY, "--val-fraction", "1.5"], ["--val-fraction"]),
    ("dtype", ["train", *TINY, "--dtype", "float8"], ["--dtype"]),
    ("bpe-spec", ["train", *TINY, "--tokenizer", "bpe:lots"], ["bpe:lots"]),
    ("max-time", ["train", *TINY, "--max-time", "10x"], ["--max-time"]),
    ("data-file-missing", ["train", *TINY[2:], "--data-file", "missing.txt"], ["missing.txt"]),
    ("resume-missing", ["train", "--resume", "missing_dir"], ["missing_dir"]),
    ("init-missing", ["train", *TINY, "--init", "nope.gguf"], ["nope.gguf"]),
    ("argparse-int", ["train", "--n-layer", "abc"], ["--n-layer"]),
    ("argparse-choice", ["train", "--position", "alibi"], ["--position"]),
    ("argparse-bool", ["train", "--bias", "maybe"], ["--bias"]),
    ("out-is-a-file", ["train", *TINY, "--out", "small.txt"], ["small.txt"]),
    ("unknown-option", ["train", "--n-layers", "3"], ["--n-layers"]),
    ("sample-missing", ["sample", "missing_run"], ["missing_run"]),
    ("sample-corrupt", ["sample", "corrupt"], ["corrupt/ckpt.pt"]),
    ("sample-shape-mismatch", ["sample", "mismatch.pt"], ["mismatch.pt"]),
    ("sample-top-p", ["sample", "corrupt", "--top-p", "0"], ["--top-p"]),
    ("export-missing", ["export", "missing", "--to", "hf", "out"], ["missing"]),
    ("export-gguf-into-dir", ["export", "mismatch.pt", "--to", "gguf", "emptydir"], ["emptydir"]),
    ("generate-gguf-missing", ["generate", "--model", "nope.gguf", "--prompt", "hi"], ["nope.gguf"]),
    ("generate-empty-dir", ["generate", "--model", "emptydir", "--prompt", "hi"], ["emptydir"]),
    ("runs-compare-missing", ["runs", "compare", "missing_a", "missing_b"], ["missing_a"]),
    ("runs-compare-bad-json", ["runs", "compare", "badjson", "badjson2"], ["badjson"]),
    ("runs-no-action", ["runs"], ["compare"]),
    ("rag-overlap", ["rag", "index", "small.txt", "--store", "kb_new", "--chunking", "fixed", "--overlap", "300"],
     ["--overlap"]),
    ("rag-k", ["rag", "eval", "kb", "--qa", "qa.jsonl", "--k", "1,five"], ["1,five"]),
    ("tokenizer-text-file", ["tokenizer", "encode", "tok", "--text-file", "missing.txt"], ["missing.txt"]),
    ("tokenizer-config", ["tokenizer", "encode", "hftok", "hello"], ["hftok/tokenizer_config.json"]),
    # finetune: the cases that fail before a model loads (those that need a base: tests/finetune/test_finetune_run.py)
    ("finetune-no-data", ["finetune"], ["--task"]),
    ("finetune-data-missing", ["finetune", "--data", "missing.jsonl"], ["missing.jsonl"]),
    ("finetune-method", ["finetune", "--task", "facts", "--method", "nosuch"], ["--method"]),
    ("finetune-resume-missing", ["finetune", "--resume", "missing_dir"], ["missing_dir"]),
    ("finetune-resume-corrupt", ["finetune", "--resume", "corrupt"], ["corrupt/ckpt.pt"]),
    ("finetune-resume-with-out", ["finetune", "--resume", "corrupt", "--out", "run_y"], ["--out"]),
    ("finetune-eval-missing", ["finetune", "eval", "missing_run", "--task", "facts"], ["missing_run"]),
    ("finetune-eval-forgetting", ["finetune", "eval", "corrupt", "--forgetting", "maybe"], ["--forgetting"]),
    ("finetune-eval-task-and-data", ["finetune", "eval", "corrupt", "--task", "facts", "--data", "qa.jsonl"],
     ["--task", "--data"]),
]


IDS = [case[0] for case in CASES]


def _make_inputs(root: Path) -> None:
    """Every file the table refers to, made without the CLI (about a second)."""
    from llmlab.model.checkpoint import save_checkpoint
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer import CharTokenizer, train_bpe
    from llmlab.tokenizer.formats import save_hf_tokenizer

    text = "".join(f"ROMEO:\nline {i} of a small play, spoken twice.\n\n" for i in range(300))
    (root / "small.txt").write_text(text, encoding="utf-8")
    (root / "emptydir").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "ckpt.pt").write_bytes(b"\x00not a checkpoint" * 8)
    for name in ("badjson", "badjson2"):
        (root / name).mkdir()
        (root / name / "config.json").write_text("{not json", encoding="utf-8")

    # A checkpoint whose weights were made for a wider model than its model_config says.
    char = CharTokenizer.train(text)
    config = ModelConfig(vocab_size=char.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    state = Transformer(config).state_dict()
    narrow = {**dataclasses.asdict(config), "n_embd": 48, "head_dim": 24, "mlp_hidden": 128}
    save_checkpoint(root / "mismatch.pt", {"model": state, "model_config": narrow, "tokenizer": char.to_dict()})
    char.save(root / "tok")
    hf = root / "hftok"
    save_hf_tokenizer(train_bpe(text, 270, "gpt4"), hf)
    (hf / "tokenizer_config.json").write_text('{"chat_template": ', encoding="utf-8")
    (root / "qa.jsonl").write_text('{"question": "who speaks?", "gold_text": "ROMEO"}\n', encoding="utf-8")
    from llmlab.rag.store import Store
    Store(root / "kb", create=True).close()


def _run(root: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmlab.cli", *argv], cwd=root, env=env, text=True,
                          capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("bad_input")
    _make_inputs(root)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, root, argv) for name, argv, _ in CASES}
        return {name: f.result() for name, f in futures.items()}


def assert_one_paragraph(proc: subprocess.CompletedProcess, needles: list[str]) -> None:
    err = proc.stderr.strip()
    assert proc.returncode != 0, f"exit 0 for bad input:\n{proc.stdout}\n{err}"
    assert "Traceback" not in err, err
    assert err, "no message at all"
    lines = err.splitlines()
    assert len(lines) <= 6 and all(line.strip() for line in lines), f"not one short paragraph:\n{err}"
    assert any(n in err for n in needles), f"the message does not name the input {needles}:\n{err}"


@pytest.mark.slow  # the table: ~40 subprocesses, a few of them import torch
@pytest.mark.parametrize("name, argv, needles", CASES, ids=IDS)
def test_bad_invocation_gets_one_clear_paragraph(name, argv, needles, results):
    assert_one_paragraph(results[name], needles)


@pytest.mark.slow  # the table: ~40 subprocesses, a few of them import torch
def test_shape_mismatch_names_the_tensor_and_both_shapes(results):
    err = results["sample-shape-mismatch"].stderr
    assert "Traceback" not in err
    assert "mismatch.pt" in err and "tok_emb.weight" in err and "(34, 32)" in err and "(34, 48)" in err, err


@pytest.mark.slow  # the table: ~40 subprocesses, a few of them import torch
def test_config_messages_say_what_would_fit(results):
    assert "choose --n-kv-head 1, 2, 3 or 6" in results["gqa-heads"].stderr
    assert "--position learned" in results["rope-odd-head-dim"].stderr
    assert "--n-head 1, 2, 5 or 10" in results["rope-indivisible"].stderr  # 100 / n even, for RoPE
    assert "try --min-lr 1e-05" in results["min-lr-above-lr"].stderr


def test_config_errors_fail_before_torch_is_imported():
    """A bad flag costs a fraction of a second: nothing that imports torch runs before validation."""
    code = ("import sys; from llmlab.cli import main; rc = main(['train', '--block-size', '0']); "
            "sys.exit(10 if 'torch' in sys.modules else rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr


def test_debug_still_shows_the_traceback(tmp_path):
    proc = _run(tmp_path, ["--debug", "train", "--block-size", "0", "--max-iters", "1"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _raising(monkeypatch, error: BaseException) -> None:
    def run(args):
        raise error
    monkeypatch.setattr("llmlab.cli.runs.run", run)


def test_internal_errors_are_one_paragraph_asking_for_a_report(monkeypatch, capsys):
    from llmlab import cli

    _raising(monkeypatch, TypeError("unsupported operand\n  with a second line"))
    assert cli.main(["runs", "compare", "a"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmlab runs: internal error (TypeError: unsupported operand with a second line)")
    assert "--debug" in err and len(err.splitlines()) == 1
    with pytest.raises(TypeError):
        cli.main(["--debug", "runs", "compare", "a"])


def test_os_errors_name_the_path(monkeypatch, capsys):
    from llmlab import cli

    _raising(monkeypatch, FileNotFoundError(2, "No such file or directory", "notes/q.txt"))
    assert cli.main(["runs", "compare", "a"]) == 2
    assert capsys.readouterr().err.strip() == "llmlab runs: error: notes/q.txt: no such file or directory"
    _raising(monkeypatch, PermissionError(13, "Permission denied", "/root/x"))
    assert cli.main(["runs", "compare", "a"]) == 2
    assert capsys.readouterr().err.strip() == "llmlab runs: error: /root/x: permission denied"


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_help(verb, capsys):
    from llmlab import cli

    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    assert f"usage: llmlab {verb}" in capsys.readouterr().out
