"""Generic config validation (`check_fields`, `ConfigError`): types, choices, and what a message says."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llmlab.core.config import ConfigError, check_fields, config_from_dict, field_error
from llmlab.core.errors import LLMLabError


@dataclass
class Toy:
    n: int = 1
    rate: float = 0.5
    name: str = "a"
    flag: bool = False
    maybe: int | None = None
    mode: str = field(default="fast", metadata={"choices": ["fast", "slow"]})

    def __post_init__(self) -> None:
        check_fields(self)


def test_config_error_is_both_an_llmlab_error_and_a_value_error():
    # LLMLabError: the CLI prints it plainly. ValueError: `except ValueError` callers keep working.
    assert issubclass(ConfigError, LLMLabError) and issubclass(ConfigError, ValueError)


def test_a_valid_config_passes_and_ints_are_accepted_as_floats():
    Toy()
    Toy(rate=1, maybe=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": "4"}, "--n '4': n must be a whole number"),
    ({"n": 2.5}, "--n 2.5: n must be a whole number"),
    ({"n": True}, "--n True: n must be a whole number"),
    ({"rate": "fast"}, "--rate 'fast': rate must be a number"),
    ({"name": 3}, "--name 3: name must be a string"),
    ({"flag": "yes"}, "--flag 'yes': flag must be true or false"),
    ({"n": None}, "--n None: n must be set"),
    ({"mode": "warp"}, "--mode 'warp': mode must be one of fast, slow"),
])
def test_each_wrong_value_is_named_with_its_flag(kwargs, message):
    with pytest.raises(ConfigError) as e:
        Toy(**kwargs)
    assert str(e.value) == message


def test_field_error_names_the_flag_the_value_and_the_rule():
    assert str(field_error(Toy(n=0), "n", "must be at least 1")) == "--n 0: n must be at least 1"


def test_config_from_dict_refuses_a_non_object():
    with pytest.raises(ConfigError, match="must be a JSON object"):
        config_from_dict(Toy, ["n", 1])
    with pytest.raises(ConfigError, match="--n '4'"):
        config_from_dict(Toy, {"n": "4"})
