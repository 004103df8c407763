"""`llmlab quantize` on a tiny char-tokenizer run directory: the directory it writes opens with every
--model flag (here `llmlab generate`), and bad input exits with status 2 and one clear message."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.core.config import config_to_dict
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.config import ModelConfig
from llmlab.model.source import resolve_source
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import CharTokenizer

TEXT = "".join(f"ROMEO: line {i} of a small play, spoken twice.\n" for i in range(12))
TOK = CharTokenizer.train(TEXT)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `llmlab train` leaves it; n_embd 32 and the MLP's 128 take groups of 32."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=TOK.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    path = tmp_path_factory.mktemp("quantize") / "run"
    path.mkdir()
    save_checkpoint(path / "ckpt.pt", {"model": model.state_dict(), "model_config": config_to_dict(model.config),
                                       "tokenizer": TOK.to_dict()})
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:   # argparse's own errors and --help
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clear_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert all(n in err for n in needles), err


def test_quantize_then_generate_from_the_directory(run_dir, tmp_path, capsys):
    out = tmp_path / "q4"
    rc, stdout, err = cli(capsys, "quantize", "--model", str(run_dir), "--method", "int4", "--group-size", "32",
                          "--out", str(out), "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["out"] == str(out) and report["method"] == "int4 4-bit g32"
    assert report["quantized_weights"] > 0 and report["float_linear_weights"] == 0
    assert 4.5 <= report["bits_per_weight"] < 8
    for name in ("config.json", "model.safetensors", "llmlab-tokenizer.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["kind"] == "run" and len(config["source"]["sha256"]) == 64
    assert config["quantize"]["method"] == "int4" and config["quantize"]["group_size"] == 32
    assert {r["type"] for r in config["layers"].values()} == {"int4"} and config["embedding"] == "lm_head"
    assert resolve_source(out).kind == "quantized"

    rc, stdout, err = cli(capsys, "generate", "--model", str(out), "--prompt", "ROMEO", "--max-new-tokens", "5",
                          "--temperature", "0", "--json")
    assert rc == 0, err
    result = json.loads(stdout)
    assert len(result["token_ids"]) == 5 and result["finish_reason"] == "length"
    assert result["text"] == TOK.decode(result["token_ids"])
    rc, stdout, err = cli(capsys, "generate", "--model", str(out), "--prompt", "ROMEO", "--max-new-tokens", "3",
                          "--temperature", "0", "--dtype", "bfloat16", "--json")
    assert rc == 0, err
    assert len(json.loads(stdout)["token_ids"]) == 3

    # the same tokens as the library's greedy decoding of the loaded directory
    from llmlab.infer.generate import decode_steps
    from llmlab.infer.sampling import SamplingConfig
    from llmlab.quant.artifact import load_quantized

    model, tokenizer = load_quantized(out)
    steps = decode_steps(model, [tokenizer.encode("ROMEO")], SamplingConfig(max_new_tokens=5, temperature=0.0))
    assert [int(s.ids[0]) for s in steps] == result["token_ids"]


def test_refuses_to_overwrite_without_force(run_dir, tmp_path, capsys):
    out = tmp_path / "q8"
    args = ["quantize", "--model", str(run_dir), "--method", "int8", "--out", str(out)]
    rc, stdout, err = cli(capsys, *args)
    assert rc == 0, err
    assert f"wrote {out}" in stdout and "bits per weight" in stdout
    written = (out / "model.safetensors").stat().st_mtime_ns
    rc, _, err = cli(capsys, *args, "--method", "int4", "--group-size", "32")
    assert_clear_error(rc, err, str(out), "--force")
    assert (out / "model.safetensors").stat().st_mtime_ns == written      # left alone
    assert json.loads((out / "config.json").read_text())["quantize"]["method"] == "int8"
    rc, _, err = cli(capsys, *args, "--method", "int4", "--group-size", "32", "--force")
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text())["quantize"]["method"] == "int4"
    # a quantized directory is not a source to quantize again
    rc, _, err = cli(capsys, "quantize", "--model", str(out), "--method", "int8", "--out", str(tmp_path / "again"))
    assert_clear_error(rc, err, "already quantized")


def test_skip_keeps_the_head_in_float(run_dir, tmp_path, capsys):
    out = tmp_path / "skip"
    rc, stdout, err = cli(capsys, "quantize", "--model", str(run_dir), "--method", "int8", "--skip", "lm_head",
                          "--out", str(out), "--json")
    assert rc == 0, err
    config = json.loads((out / "config.json").read_text())
    assert "lm_head" not in config["layers"] and config["embedding"] == "float" and config["model"]["tie_embeddings"]
    assert json.loads(stdout)["float_linear_weights"] == TOK.vocab_size * 32


@pytest.mark.parametrize("argv, needles", [
    (["--method", "int3"], ["--method 'int3'", "int8, int4"]),
    (["--method", "int4", "--group-size", "48"], ["--group-size 48", "[32, 128]", ": 32"]),
    (["--method", "int4", "--group-size", "1"], ["group size 1", "even"]),
    (["--method", "int4", "--group-size", "0"], ["--group-size 0"]),
    (["--method", "int8", "--int8-groups", "--group-size", "24"], ["--group-size 24"]),
    (["--method", "int4", "--group-size", "many"], ["--group-size"]),
    (["--method", "int4", "--group-size", "32", "--skip", "lm_hed"], ["--skip lm_hed"]),
], ids=["method", "group-size-48", "group-size-odd", "group-size-0", "int8-groups", "group-size-not-a-number",
        "skip-typo"])
def test_bad_input_exits_2_with_one_clear_message(run_dir, tmp_path, capsys, argv, needles):
    out = tmp_path / "bad"
    rc, _, err = cli(capsys, "quantize", "--model", str(run_dir), *argv, "--out", str(out))
    assert_clear_error(rc, err, *needles)
    assert len(err.strip().splitlines()) <= 3, err
    assert not (out / "config.json").exists()


def test_missing_model_and_help(tmp_path, capsys):
    rc, _, err = cli(capsys, "quantize", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "q"))
    assert_clear_error(rc, err, "nope")
    rc, out, _ = cli(capsys, "quantize", "--help")
    assert rc == 0 and "usage: llmlab quantize" in out and "--group-size" in out and "--method" in out
