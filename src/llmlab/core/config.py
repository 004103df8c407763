"""Typed dataclass configs <-> command-line flags, one mechanism for every verb.

A config is a dataclass whose fields carry help text in `metadata["help"]`. `add_config_flags`
turns every field into a `--kebab-case` flag (bools take true/false), `apply_flags` writes the
flags the user actually gave onto a config (so presets fill the rest), and `config_to_dict` /
`config_from_dict` save and restore the resolved config next to every artifact.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from llmlab.core.errors import LLMLabError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
                     skip: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field. Defaults are SUPPRESSed so presets are not overwritten."""
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        tp = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"(default: {default})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
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
        group.add_argument(_flag(f.name), **kwargs)


def apply_flags(config: T, args: argparse.Namespace) -> T:
    """A copy of `config` with every field that appears in `args` replaced."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)}
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = type(getattr(config, name))(value) if getattr(config, name) is not None else value
    # A config with derived fields (ModelConfig) knows how to re-derive them.
    return config.replace(**given) if hasattr(config, "replace") else dataclasses.replace(config, **given)


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config saved by `config_to_dict`; unknown keys are an error naming the valid ones."""
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
