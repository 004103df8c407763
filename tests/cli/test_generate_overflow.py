"""`llmlab generate --overflow`: past a small model's context, `shift` keeps generating while `error`
refuses with the numbers (docs/03-inference.md, "The KV cache")."""

from __future__ import annotations

import json

import pytest

from llmlab.cli import main
from llmlab.model.config import ModelConfig
from llmlab.model.hf import save_hf_dir
from llmlab.tokenizer.char import CharTokenizer

ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]
CONFIG = ModelConfig(vocab_size=len(ALPHABET), block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
PROMPT = "To be, or not to be"  # 19 characters of a 32-character context


@pytest.fixture
def small_model(tmp_path, varied_model):
    save_hf_dir(varied_model(CONFIG).state_dict(), CONFIG, CharTokenizer(ALPHABET), tmp_path / "model")
    return str(tmp_path / "model")


def generate(model: str, capsys, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["generate", "--model", model, "--prompt", PROMPT, "--temperature", "0", "--ignore-eos",
                 "--device", "cpu", "--json", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shift_generates_past_the_context_and_error_refuses(small_model, capsys):
    fits = 32 - len(PROMPT)  # 13 new tokens fill the context exactly
    code, out, _ = generate(small_model, capsys, "--max-new-tokens", str(fits))
    assert code == 0
    within = json.loads(out)["token_ids"]
    assert len(within) == fits

    code, out, _ = generate(small_model, capsys, "--max-new-tokens", "80", "--overflow", "shift")
    assert code == 0
    shifted = json.loads(out)
    assert len(shifted["token_ids"]) == 80 and shifted["finish_reason"] == "length"
    # Until the context is full, shift is plain decoding: the same greedy tokens.
    assert shifted["token_ids"][:fits] == within
    assert shifted["usage"]["prompt_tokens"] == len(PROMPT)

    code, out, err = generate(small_model, capsys, "--max-new-tokens", "80")  # --overflow error is the default
    assert code == 2 and out == ""
    assert "prompt (19 tokens) + max_new_tokens (80) exceeds the model's context of 32 tokens" in err
    assert "Traceback" not in err


def test_shift_is_for_one_prompt_at_a_time(small_model, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    capsys.readouterr()
    assert main(["generate", "--model", small_model, "--prompts", str(prompts), "--overflow", "shift",
                 "--device", "cpu"]) == 2
    assert "--overflow shift works on one prompt at a time" in capsys.readouterr().err
