"""`llmlab eval run` and `llmlab eval compare` end to end on tiny saved models and real benchmark items:
the printed scores are the harness's, results round-trip through --out, and bad input is one clear line."""

from __future__ import annotations

import json

import pytest

from llmlab.cli import main
from llmlab.core.config import config_to_dict
from llmlab.eval.harness import evaluate
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.config import ModelConfig
from llmlab.tokenizer.bpe import train_bpe

TEXT = "Question: Which gas do plants take in?\nAnswer: carbon dioxide. A man is sitting on a roof. " * 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory, varied_model):
    root = tmp_path_factory.mktemp("eval_run")
    tokenizer = train_bpe(TEXT, 300)
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        model = varied_model(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2,
                                         n_embd=32), seed)
        (root / name).mkdir()
        save_checkpoint(root / name / "ckpt.pt", {"model": model.state_dict(), "model_config": config_to_dict(model.config),
                                                  "tokenizer": tokenizer.to_dict()})
        models[name] = model
    return root, tokenizer, models


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_prints_the_harness_scores_and_writes_a_result(runs, capsys):
    root, tokenizer, models = runs
    rc, out, _ = cli(capsys, "eval", "run", "--model", str(root / "a"), "--tasks", "arc_easy,winogrande",
                     "--limit", "6", "--json", "--out", str(root / "a.json"), "--device", "cpu")
    assert rc == 0
    printed = json.loads(out)["tasks"]
    direct = evaluate(models["a"], tokenizer, "arc_easy,winogrande", limit=6, progress=False)["tasks"]
    for task in ("arc_easy", "winogrande"):
        assert printed[task]["n"] == 6
        for metric in ("acc", "acc_norm"):
            assert printed[task][metric] == pytest.approx(direct[task][metric])
    saved = json.loads((root / "a.json").read_text())
    assert saved["format_version"] == 1 and len(saved["items"]["arc_easy"]) == 6


def test_compare_pairs_the_items_of_two_results(runs, capsys):
    root, _, _ = runs
    for name in ("a", "b"):
        if not (root / f"{name}.json").exists():
            assert cli(capsys, "eval", "run", "--model", str(root / name), "--tasks", "arc_easy,winogrande",
                       "--limit", "6", "--out", str(root / f"{name}.json"), "--device", "cpu")[0] == 0
    rc, out, _ = cli(capsys, "eval", "compare", str(root / "a.json"), str(root / "b.json"), "--json")
    assert rc == 0
    rows = json.loads(out)["rows"]
    assert {(r["task"], r["metric"]) for r in rows} >= {("arc_easy", "acc"), ("winogrande", "acc")}
    assert all("McNemar" in r["test"] and 0 <= r["p"] <= 1 for r in rows)
    rc, out, _ = cli(capsys, "eval", "compare", str(root / "a.json"), str(root / "b.json"))
    assert rc == 0 and "B - A" in out


@pytest.mark.parametrize("argv, message", [
    (["eval", "run", "--tasks", "arc_eazy"], "unknown task 'arc_eazy'"),
    (["eval", "run", "--tasks", "arc_easy", "--split", "train"], "has no such split"),
    (["eval", "run", "--tasks", "arc_easy", "--limit", "0"], "limit"),
    (["eval", "compare", "missing-a.json", "missing-b.json"], "missing-a.json"),
])
def test_bad_input_is_one_clear_line(capsys, argv, message):
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and message in err and "Traceback" not in err


def test_compare_refuses_files_that_are_not_results(runs, capsys, tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    rc, _, err = cli(capsys, "eval", "compare", str(tmp_path / "x.json"), str(tmp_path / "x.json"))
    assert rc == 2 and "not an llmlab evaluation result" in err


def test_tasks_list_names_the_suites(capsys):
    rc, out, _ = cli(capsys, "eval", "run", "--tasks", "list")
    assert rc == 0 and "core-lite" in out and "hellaswag" in out and "mmlu_<subject>" in out
