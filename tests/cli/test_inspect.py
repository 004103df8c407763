"""`llmlab inspect` on a tiny run directory: every command's JSON holds the library's numbers and
its pictures exist; bad input gets one clear message and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.core.config import config_to_dict
from llmlab.inspect.lens import lens_logits
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import CharTokenizer

TEXT = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: Ay me!\n"
TOK = CharTokenizer.train(TEXT)
CONFIG = ModelConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    run = tmp_path_factory.mktemp("insp") / "run"
    run.mkdir()
    save_checkpoint(run / "ckpt.pt", {"model": model.state_dict(), "model_config": config_to_dict(CONFIG),
                                      "tokenizer": TOK.to_dict()})
    return run, model


def inspect(capsys, *argv):
    code = main(["inspect", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_command_writes_json_and_pictures(run_dir, tmp_path, capsys):
    run, model = run_dir
    out = tmp_path / "pictures"
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    common = ["--model", str(run), "--out", str(out), "--json"]
    commands = {
        "attention": ["--prompt", "ROMEO: But soft", "--layers", "0,-1"],
        "logit-lens": ["--prompt", "ROMEO: But soft", "--target", "t"],
        "surprise": ["--text-file", str(text), "--window", "32"],
        "activations": ["--prompt", "JULIET: Ay me!"],
        "heads": ["--task", "previous-token", "--length", "20"],
        "ablate": ["--prompt", "JULIET: Ay", "--head", "1.0", "--scan"],
        "embeddings": ["--tokens", "R,O,M,E"],
    }
    results = {}
    for command, argv in commands.items():
        code, stdout, stderr = inspect(capsys, command, *common, *argv)
        assert code == 0, (command, stderr)
        results[command] = data = json.loads(stdout)
        assert data["command"] == command and data["files"]
        for path in data["files"]:
            assert open(path, "rb").read(8) == PNG or path.endswith(".html")
    assert [layer["layer"] for layer in results["attention"]["layers"]] == [0, 1]
    lens = results["logit-lens"]
    ids = torch.tensor([TOK.encode("ROMEO: But soft")])
    with torch.no_grad():
        probs = model(ids)["logits"][0, -1].softmax(-1)
        out_probs = lens_logits(model, model(ids, return_hidden_states=True)["hidden_states"][-1][0])[-1].softmax(-1)
    torch.testing.assert_close(out_probs, probs)
    assert abs(lens["layers"][-1]["target_prob"] - float(probs[TOK.encode("t")[0]])) < 1e-5
    assert len(results["surprise"]["tokens"]) == len(TOK.encode(TEXT))
    assert len(results["activations"]["residual_norm"]) == CONFIG.n_layer + 1
    assert len(results["heads"]["ranked"]) == CONFIG.n_layer * CONFIG.n_head
    assert results["ablate"]["effect"]["heads"] == ["1.0"] and len(results["ablate"]["scan"]["ranked"]) == 4
    assert [w["word"] for w in results["embeddings"]["words"]] == ["R", "O", "M", "E"]
    assert (out / "surprise.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_plain_output_is_a_readable_report(run_dir, tmp_path, capsys):
    run, _ = run_dir
    code, stdout, _ = inspect(capsys, "logit-lens", "--model", str(run), "--prompt", "ROMEO", "--out", str(tmp_path))
    assert code == 0
    assert stdout.splitlines()[0].split()[0] == "layer" and "emb" in stdout and "out" in stdout
    assert "wrote" in stdout and (tmp_path / "logit-lens.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["attention"], "--prompt"),
    (["attention", "--prompt", "ROMEO", "--layers", "7"], "layers 0..1"),
    (["attention", "--prompt", "ROMEO", "--layers", "a,b"], "comma-separated integers"),
    (["logit-lens", "--prompt", "ROMEO", "--target", "ab"], "give one token"),
    (["logit-lens", "--prompt", "ROMEO~"], "--prompt"),
    (["ablate", "--prompt", "ROMEO"], "--head LAYER.HEAD"),
    (["ablate", "--prompt", "ROMEO", "--head", "0.1", "--chat"], "no chat template"),
    (["ablate", "--prompt", "ROMEO", "--head", "0.9"], "heads 0..1"),
    (["embeddings", "--tokens", "R"], "--tokens"),
    (["surprise", "--text", "ROMEO", "--window", "1000"], "--window"),
    ([], "say what to look at"),
])
def test_bad_input_is_one_clear_message(run_dir, tmp_path, capsys, argv, message):
    run, _ = run_dir
    extra = ["--model", str(run), "--out", str(tmp_path)] if argv else []
    code, stdout, stderr = inspect(capsys, *argv, *extra)
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr
