"""ModelConfig validates itself when built: every constraint, with a message saying what would fit."""

from __future__ import annotations

import dataclasses

import pytest

from llmlab.core.config import ConfigError, config_from_dict
from llmlab.model.config import MODEL_PRESETS, ModelConfig


@pytest.mark.parametrize("kwargs, flag", [
    ({"block_size": 0}, "--block-size 0"),
    ({"n_layer": 0}, "--n-layer 0"),
    ({"n_head": 0}, "--n-head 0"),
    ({"n_embd": -8}, "--n-embd -8"),
    ({"vocab_size": -1}, "--vocab-size -1"),
    ({"n_kv_head": 0}, "--n-kv-head 0"),
    ({"head_dim": 0}, "--head-dim 0"),
    ({"mlp_hidden": 0}, "--mlp-hidden 0"),
    ({"dropout": 1.0}, "--dropout 1.0"),
    ({"dropout": -0.1}, "--dropout -0.1"),
    ({"norm_eps": 0.0}, "--norm-eps 0.0"),
    ({"rope_theta": 0.0}, "--rope-theta 0.0"),
    ({"position": "alibi"}, "--position 'alibi'"),
    ({"norm": "batchnorm"}, "--norm 'batchnorm'"),
    ({"mlp": "relu"}, "--mlp 'relu'"),
    ({"attention": "flash"}, "--attention 'flash'"),
    ({"n_layer": "4"}, "--n-layer '4'"),
    ({"bias": "false"}, "--bias 'false'"),
])
def test_each_bad_field_is_refused_naming_its_flag(kwargs, flag):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**kwargs)
    assert str(e.value).startswith(flag), str(e.value)


def test_gqa_heads_must_divide_and_the_message_lists_what_fits():
    with pytest.raises(ValueError) as e:  # a ConfigError is a ValueError too
        ModelConfig(n_head=6, n_kv_head=4, n_embd=48)
    assert str(e.value) == "n_head (6) must be a multiple of n_kv_head (4): choose --n-kv-head 1, 2, 3 or 6"


def test_width_must_split_into_whole_heads_unless_head_dim_is_given():
    with pytest.raises(ConfigError) as e:
        ModelConfig(n_embd=100, n_head=3)  # 33.3 dimensions per head
    assert "n_embd (100) must be divisible by n_head (3)" in str(e.value)
    assert "--n-head 1, 2, 5 or 10" in str(e.value) and "--n-embd 96 or 102" in str(e.value)  # even for RoPE
    assert ModelConfig(n_embd=100, n_head=3, head_dim=32).head_dim == 32  # explicit: q/k/v project to 3*32


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ConfigError) as e:
        ModelConfig(n_embd=66, n_head=2)
    assert "head_dim 33 must be even with --position rope" in str(e.value)
    assert "--n-head 1, 3, 11 or 33" in str(e.value) and "--position learned" in str(e.value)
    with pytest.raises(ConfigError, match="--head-dim 15: .* choose --head-dim 14 or 16"):
        ModelConfig(head_dim=15)
    assert ModelConfig(n_embd=66, n_head=2, position="learned").head_dim == 33  # no rotation, no constraint


def test_presets_and_replace_stay_valid_and_replace_validates():
    for preset in MODEL_PRESETS.values():
        assert preset.replace() == preset
    small = MODEL_PRESETS["small-llama"]  # 6 query heads, 2 key/value heads
    assert small.replace(n_head=4, n_embd=256).head_dim == 64
    with pytest.raises(ConfigError, match="choose --n-kv-head 1, 2, 3 or 6"):
        small.replace(n_kv_head=4)


def test_a_saved_config_with_a_bad_value_is_refused():
    saved = {**dataclasses.asdict(ModelConfig()), "n_layer": "six"}
    with pytest.raises(ConfigError, match="--n-layer 'six': n_layer must be a whole number"):
        config_from_dict(ModelConfig, saved)
