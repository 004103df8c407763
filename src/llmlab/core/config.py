"""Typed dataclass configs <-> command-line flags, one mechanism for every verb.

A config is a dataclass whose fields carry help text in `metadata["help"]`. `add_config_flags`
turns every field into a `--kebab-case` flag (bools take true/false), `apply_flags` writes the
flags the user actually gave onto a config (so presets fill the rest), and `config_to_dict` /
`config_from_dict` save and restore the resolved config next to every artifact.

Configs validate themselves when they are built (`__post_init__`), with `check_fields` for the
generic part (types, choices) and `ConfigError` for the message: it names the field, its flag, the
value and what would fit, so a bad flag fails before any data or model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import types
import typing
from typing import Any, TypeVar

from llmlab.core.errors import LLMLabError

T = TypeVar("T")


class ConfigError(LLMLabError, ValueError):
    """A config value that cannot work. Also a ValueError, so library callers that guard a config
    construction with `except ValueError` keep working."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_name(name: str) -> str:
    """The command-line flag of a config field: n_kv_head -> --n-kv-head."""
    return _flag(name)


def field_error(config: Any, name: str, need: str) -> ConfigError:
    """'--block-size 0: block_size must be at least 1' -- the flag and value first (what the person
    typed), then the rule in terms of the field (what a config.json or library caller set)."""
    return ConfigError(f"{_flag(name)} {getattr(config, name)!r}: {name} {need}")


def check(config: Any, name: str, ok: bool, need: str) -> None:
    if not ok:
        raise field_error(config, name, need)


def check_fields(config: Any) -> None:
    """Generic checks on a dataclass config: each value has its field's type (None only where the
    type allows it) and is one of the field's `choices`. Ints are accepted where floats are."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        value, tp = getattr(config, f.name), hints[f.name]
        optional = (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union) \
            and type(None) in typing.get_args(tp)
        if value is None:
            check(config, f.name, optional, "must be set")
            continue
        tp = _field_type(type(config), f)
        if tp is bool:
            check(config, f.name, isinstance(value, bool), "must be true or false")
        elif tp is int:
            check(config, f.name, isinstance(value, numbers.Integral) and not isinstance(value, bool),
                  "must be a whole number")
        elif tp is float:
            check(config, f.name, isinstance(value, numbers.Real) and not isinstance(value, bool), "must be a number")
        elif tp is str:
            check(config, f.name, isinstance(value, str), "must be a string")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise field_error(config, f.name, f"must be one of {', '.join(map(str, choices))}")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    tp = hints[f.name]
    # `int | None` -> int: the flag takes the inner type; None stays the default.
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str | None = None,
                     skip: tuple[str, ...] = (), prefix: str = "", shown: Any = None) -> None:
    """Add one flag per dataclass field. Defaults are SUPPRESSed so presets are not overwritten.
    prefix "lora" names field r's flag --lora-r (give apply_flags the same prefix). `shown`: an
    instance (a preset's config) whose values --help shows as the defaults, instead of the class's."""
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        tp = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else None
        if shown is not None:
            default = getattr(shown, f.name)
            default = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"(default: {default})"
        dest = f"{prefix}_{f.name}" if prefix else f.name
        kwargs: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=help_text)
        if tp is bool:
            kwargs.update(type=_parse_bool, metavar="true|false", nargs="?", const=True)
        elif tp in (int, float, str):
            kwargs.update(type=tp, metavar=tp.__name__.upper())
        elif typing.get_origin(tp) in (list, tuple):
            inner = typing.get_args(tp)[0]
            kwargs.update(type=inner, nargs="+")
        else:
            kwargs.update(type=str)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(_flag(dest), **kwargs)


def given_flags(cls_or_config: Any, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """{field: value} of the config's fields whose flags were given."""
    dest = (lambda name: f"{prefix}_{name}") if prefix else (lambda name: name)
    return {f.name: getattr(args, dest(f.name)) for f in dataclasses.fields(cls_or_config) if hasattr(args, dest(f.name))}


def apply_flags(config: T, args: argparse.Namespace, prefix: str = "") -> T:
    """A copy of `config` with every field whose flag appears in `args` replaced."""
    given = given_flags(config, args, prefix)
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = type(getattr(config, name))(value) if getattr(config, name) is not None else value
    # A config with derived fields (ModelConfig) knows how to re-derive them.
    return config.replace(**given) if hasattr(config, "replace") else dataclasses.replace(config, **given)


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config saved by `config_to_dict`; unknown keys are an error naming the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"a saved {cls.__name__} must be a JSON object of fields, not {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LLMLabError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            values[f.name] = tuple(v) if isinstance(getattr(cls, f.name, None), tuple) and isinstance(v, list) else v
    return cls(**values)


def get_preset(presets: dict[str, T], name: str, kind: str = "preset") -> T:
    if name not in presets:
        raise LLMLabError(f"unknown {kind} {name!r}; choose one of: {', '.join(presets)}")
    return presets[name]


def read_toml(path, missing: str) -> dict:
    """A TOML config file as a dict; a missing file or bad TOML is one LLMLabError (`missing` says
    what to do instead when the file does not exist)."""
    import tomllib
    from pathlib import Path

    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMLabError(f"{path}: no such file; {missing}") from None
    except tomllib.TOMLDecodeError as e:
        raise LLMLabError(f"{path} is not valid TOML: {e}") from None
