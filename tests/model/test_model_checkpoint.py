"""`load_run_model` and `load_checkpoint`: a file that does not fit gets a message naming it."""

from __future__ import annotations

import dataclasses

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.model.checkpoint import load_checkpoint, load_run_model, save_checkpoint
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import CharTokenizer

TOK = CharTokenizer.train("abcdefgh ")
CONFIG = ModelConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)


def _save(path, model_config: dict) -> None:
    save_checkpoint(path, {"model": Transformer(CONFIG).state_dict(), "model_config": model_config,
                           "tokenizer": TOK.to_dict()})


def test_a_fitting_checkpoint_loads(tmp_path):
    _save(tmp_path / "ok.pt", dataclasses.asdict(CONFIG))
    model, tok, _ = load_run_model(tmp_path / "ok.pt")
    assert model.config == CONFIG and tok.vocab_size == TOK.vocab_size


def test_weights_of_another_shape_name_the_file_the_tensor_and_both_shapes(tmp_path):
    wider = {**dataclasses.asdict(CONFIG), "n_embd": 32, "head_dim": 16, "mlp_hidden": 128}
    _save(tmp_path / "m.pt", wider)
    with pytest.raises(LLMLabError) as e:
        load_run_model(tmp_path / "m.pt")
    msg = str(e.value)
    assert "m.pt" in msg and "tok_emb.weight" in msg and f"({TOK.vocab_size}, 16)" in msg \
        and f"({TOK.vocab_size}, 32)" in msg, msg


def test_an_invalid_model_config_names_the_file_and_the_field(tmp_path):
    _save(tmp_path / "bad.pt", {**dataclasses.asdict(CONFIG), "n_kv_head": 3})
    with pytest.raises(LLMLabError) as e:
        load_run_model(tmp_path / "bad.pt")
    assert str(e.value).startswith(f"{tmp_path / 'bad.pt'}: its model_config does not describe a valid model")
    assert "choose --n-kv-head 1 or 2" in str(e.value)


def test_a_damaged_file_says_so_in_one_sentence(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"\x00not a checkpoint" * 8)
    with pytest.raises(LLMLabError) as e:
        load_checkpoint(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'ckpt.pt'} is not a readable checkpoint (") and "truncated" in msg
    assert "weights_only" not in msg and len(msg) < 300, msg  # torch's torch.load advice does not apply
