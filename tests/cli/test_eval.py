"""`llmlab eval ppl` on tiny saved run directories: the numbers it prints are the library's, the
reference comparison behaves, and bad input gets one clear message with exit status 2."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from llmlab.cli import main
from llmlab.core.config import config_to_dict
from llmlab.data import sources
from llmlab.eval import compare, perplexity
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import CharTokenizer

TEXT = "".join(f"ROMEO: line {i} of a small play, spoken twice.\n" for i in range(12))
TOK = CharTokenizer.train(TEXT)
BLOCK = 32


def tiny_model(seed: int = 0, noise: float = 0.0, vocab: int = TOK.vocab_size) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab, block_size=BLOCK, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
                p.add_(noise * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * p.abs().mean())
    return model


def save_run(path, model: Transformer, tokenizer) -> str:
    path.mkdir()
    save_checkpoint(path / "ckpt.pt", {"model": model.state_dict(), "model_config": config_to_dict(model.config),
                                       "tokenizer": tokenizer.to_dict()})
    return str(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    save_run(root / "run", tiny_model(), TOK)
    save_run(root / "noisy", tiny_model(noise=0.1), TOK)
    other = CharTokenizer.train(TEXT + "XYZ")                          # another vocabulary size
    save_run(root / "other_vocab", tiny_model(vocab=other.vocab_size), other)
    shuffled = CharTokenizer(TOK.chars[::-1])                          # same size, other ids
    save_run(root / "shuffled", tiny_model(), shuffled)
    return root


def eval_ppl(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(["eval", "ppl", *argv])
    except SystemExit as e:   # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_numbers_are_the_librarys(root, capsys):
    rc, out, err = eval_ppl(capsys, "--model", str(root / "run"), "--data-file", str(root / "text.txt"),
                            "--ctx", "16", "--stride", "8", "--device", "cpu", "--json")
    assert rc == 0, err
    report = json.loads(out)
    ids = TOK.encode(TEXT)
    expected = perplexity(tiny_model(), ids, 16, 8)
    assert report["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert report["tokens"] == len(TEXT) - 1 and report["ctx"] == 16 and report["stride"] == 8
    scored_bytes = len(TEXT.encode("utf-8")) - 1                       # the first character is only context
    assert report["bits_per_byte"] == pytest.approx(expected["nll"] * report["tokens"] / math.log(2) / scored_bytes)
    assert report["model"] == str(root / "run") and report["data"] == str(root / "text.txt")
    assert "reference" not in report and "mean_kld" not in report


def test_reference_gives_kld_and_top1(root, capsys):
    rc, out, err = eval_ppl(capsys, "--model", str(root / "noisy"), "--reference", str(root / "run"),
                            "--data-file", str(root / "text.txt"), "--ctx", "16", "--device", "cpu", "--json")
    assert rc == 0, err
    report = json.loads(out)
    expected = compare(tiny_model(noise=0.1), TOK.encode(TEXT), 16, 16, tiny_model())
    for key in ("perplexity", "mean_kld", "kld_p99", "kld_max", "top1_agreement", "ppl_ratio", "delta_ppl_percent"):
        assert report[key] == pytest.approx(expected[key], rel=1e-5), key
    assert report["reference"] == {"perplexity": pytest.approx(expected["reference_perplexity"]),
                                   "model": str(root / "run")}
    assert report["mean_kld"] > 1e-3 and 0 < report["top1_agreement"] < 1

    rc, out, _ = eval_ppl(capsys, "--model", str(root / "run"), "--reference", str(root / "run"),
                          "--data-file", str(root / "text.txt"), "--ctx", "16", "--device", "cpu", "--json")
    itself = json.loads(out)
    assert itself["mean_kld"] == pytest.approx(0, abs=1e-7) and itself["top1_agreement"] == 1.0
    assert itself["ppl_ratio"] == pytest.approx(1.0)


def test_table_limit_and_ctx_capped_at_the_block_size(root, capsys):
    rc, out, err = eval_ppl(capsys, "--model", str(root / "run"), "--reference", str(root / "noisy"),
                            "--data-file", str(root / "text.txt"), "--ctx", "1000", "--limit-tokens", "50",
                            "--device", "cpu")
    assert rc == 0, err
    assert f"--ctx 1000 is more than {root / 'run'}'s context ({BLOCK} tokens): using --ctx {BLOCK}" in err
    assert f"50 tokens, ctx {BLOCK}, stride {BLOCK}" in out
    for label in ("perplexity", "bits per byte", "ppl ratio", "mean KLD", "same top-1"):
        assert label in out


def test_named_remote_data_is_found_in_a_shared_folder_offline(root, tmp_path, monkeypatch, capsys):
    """--data wikitext-2 with no cache and no network: a copy in $LLMLAB_SHARED_DATA or ../shared/data
    (from the current directory) is used when its sha256 is the expected one, and only then."""
    fake = TEXT[::-1].encode("utf-8")   # stands in for WikiText-2: its characters are in TOK
    monkeypatch.setitem(sources.REMOTE, "wikitext-2", sources.RemoteText(
        "https://example.invalid/valid.txt", hashlib.sha256(fake).hexdigest(), "wikitext-2-valid.txt",
        "wikitext-2/valid.txt"))
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    argv = ["--model", str(root / "run"), "--data", "wikitext-2", "--ctx", "16", "--device", "cpu", "--json"]

    env_copy = tmp_path / "env_shared" / "wikitext-2" / "valid.txt"
    env_copy.parent.mkdir(parents=True)
    env_copy.write_bytes(fake)
    monkeypatch.setenv("LLMLAB_SHARED_DATA", str(tmp_path / "env_shared"))
    rc, out, err = eval_ppl(capsys, *argv)
    assert rc == 0, err
    assert json.loads(out)["tokens"] == len(TEXT) - 1 and json.loads(out)["data"] == "wikitext-2"

    monkeypatch.delenv("LLMLAB_SHARED_DATA")
    beside = tmp_path / "shared" / "data" / "wikitext-2" / "valid.txt"
    beside.parent.mkdir(parents=True)
    beside.write_bytes(fake)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    rc, out, err = eval_ppl(capsys, *argv)
    assert rc == 0, err

    beside.write_bytes(fake[:-3])     # a damaged copy is not used: the offline hint instead
    rc, out, err = eval_ppl(capsys, *argv)
    assert rc == 2 and "could not download wikitext-2" in err and "--data-file" in err and "Traceback" not in err


BAD = [
    ("data-file-missing", ["--data-file", "missing.txt"], "missing.txt"),
    ("ctx-0", ["--data-file", "text.txt", "--ctx", "0"], "--ctx 0"),
    ("stride-above-ctx", ["--data-file", "text.txt", "--ctx", "16", "--stride", "17"], "--stride 17"),
    ("limit-0", ["--data-file", "text.txt", "--limit-tokens", "0"], "--limit-tokens 0"),
    ("data-and-file", ["--data", "pydocs", "--data-file", "text.txt"], "not both"),
    ("unknown-data", ["--data", "wikitext-103"], "--data"),
    ("reference-vocab", ["--data-file", "text.txt", "--reference", "other_vocab"], "vocabulary"),
    ("reference-ids", ["--data-file", "text.txt", "--reference", "shuffled"], "other ids"),
    ("reference-missing", ["--data-file", "text.txt", "--reference", "nope_dir"], "nope_dir"),
    ("native-gguf-not-gguf", ["--data-file", "text.txt", "--native-gguf"], "--native-gguf"),
    ("empty-text", ["--data-file", "empty.txt"], "at least 2"),
]


@pytest.mark.parametrize("argv, needle", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_is_one_clear_message_with_status_2(root, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(root)
    (root / "empty.txt").write_text("R", encoding="utf-8")
    rc, out, err = eval_ppl(capsys, "--model", "run", "--device", "cpu", *argv)
    assert rc == 2 and not out
    assert "Traceback" not in err and needle in err, err
    assert len(err.strip().splitlines()) <= 2, err


def test_eval_without_a_subcommand_says_what_to_give(capsys):
    assert main(["eval"]) == 2
    assert "llmlab eval ppl" in capsys.readouterr().err


@pytest.mark.slow  # loads SmolLM2 twice (~25 s on 2 cores)
def test_smollm2_against_itself_has_zero_kld(tmp_path, capsys):
    from llmlab.core.assets import pydocs_topics

    (tmp_path / "docs.txt").write_text(pydocs_topics()["with"], encoding="utf-8")
    rc, out, err = eval_ppl(capsys, "--model", "smollm2", "--reference", "smollm2", "--data-file",
                            str(tmp_path / "docs.txt"), "--limit-tokens", "300", "--ctx", "128", "--stride", "64",
                            "--device", "cpu", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["tokens"] == 300 and 1.5 < report["perplexity"] < 100
    assert report["mean_kld"] == pytest.approx(0, abs=1e-6) and report["top1_agreement"] == 1.0
