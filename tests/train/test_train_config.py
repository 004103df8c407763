"""TrainConfig and DataConfig validate themselves when built, naming the flag of a bad field."""

from __future__ import annotations

import dataclasses

import pytest

from llmlab.core.config import ConfigError
from llmlab.train.config import PRESETS, DataConfig, RunConfig, TrainConfig


@pytest.mark.parametrize("kwargs, flag", [
    ({"batch_size": 0}, "--batch-size 0"),
    ({"grad_accum": 0}, "--grad-accum 0"),
    ({"lr": -1.0}, "--lr -1.0"),
    ({"min_lr": -1e-4}, "--min-lr -0.0001"),
    ({"lr": 1e-4, "min_lr": 1e-3}, "--min-lr 0.001"),
    ({"warmup_iters": -1}, "--warmup-iters -1"),
    ({"weight_decay": -0.1}, "--weight-decay -0.1"),
    ({"beta1": 1.0}, "--beta1 1.0"),
    ({"beta2": -0.5}, "--beta2 -0.5"),
    ({"grad_clip": -1.0}, "--grad-clip -1.0"),
    ({"max_iters": 0}, "--max-iters 0"),
    ({"lr_decay_iters": 0}, "--lr-decay-iters 0"),
    ({"seq_len": 0}, "--seq-len 0"),
    ({"max_time": "10x"}, "--max-time 10x"),
    ({"max_time": "0m"}, "--max-time '0m'"),
    ({"eval_every": 0}, "--eval-every 0"),
    ({"eval_iters": 0}, "--eval-iters 0"),
    ({"ckpt_every": 0}, "--ckpt-every 0"),
    ({"log_every": 0}, "--log-every 0"),
    ({"early_stop_patience": -1}, "--early-stop-patience -1"),
    ({"spike_factor": 0.0}, "--spike-factor 0.0"),
    ({"sample_tokens": -5}, "--sample-tokens -5"),
    ({"threads": -2}, "--threads -2"),
    ({"dtype": "float8"}, "--dtype 'float8'"),
    ({"batch_size": "32"}, "--batch-size '32'"),
])
def test_bad_train_fields_are_refused_naming_their_flag(kwargs, flag):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kwargs)
    assert str(e.value).startswith(flag), str(e.value)


@pytest.mark.parametrize("kwargs, flag", [
    ({"val_fraction": 1.5}, "--val-fraction 1.5"),
    ({"val_fraction": 0.0}, "--val-fraction 0.0"),
    ({"tokenizer": "bpe:lots"}, "--tokenizer 'bpe:lots'"),
    ({"tokenizer": "bpe:200"}, "--tokenizer 'bpe:200'"),  # not even the 256 byte tokens
    ({"data": " "}, "--data ' '"),
    ({"data_file": ""}, "--data-file ''"),
])
def test_bad_data_fields_are_refused_naming_their_flag(kwargs, flag):
    with pytest.raises(ConfigError) as e:
        DataConfig(**kwargs)
    assert str(e.value).startswith(flag), str(e.value)


def test_presets_are_valid_and_an_evaluation_only_run_is_allowed():
    for preset in PRESETS.values():
        assert RunConfig.from_dict(preset.to_dict()) == preset
    TrainConfig(lr=0.0, min_lr=0.0)  # lr 0: weights never move (the early-stopping test relies on it)
    DataConfig(tokenizer="bpe:1024:gpt4")
    TrainConfig(max_time="90s", dtype="bf16")


def test_min_lr_above_lr_suggests_a_fitting_value():
    with pytest.raises(ConfigError, match=r"min_lr must not exceed lr \(0.0001\).*try --min-lr 1e-05"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_resume_overrides_are_validated_too():
    # `llmlab train --resume` applies its overrides with dataclasses.replace, which runs __post_init__.
    with pytest.raises(ConfigError, match="--eval-every 0"):
        dataclasses.replace(PRESETS["shakespeare-char"].train, eval_every=0)
