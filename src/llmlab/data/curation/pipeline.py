"""The pipeline's configuration: one dataclass per stage, one TOML file for all, named recipes.

A pipeline.toml has one table per section; every key is a field below (unknown keys are an
error that lists the valid ones), and a key left out keeps its default:

    [input]
    paths = ["raw/"]          # files or directories, relative to this file
    text_field = "text"
    [output]
    dir = "clean/"
    format = "jsonl"          # or "parquet"
    [langid]
    languages = ["en"]
    threshold = 0.5
    [quality]
    min_words = 50
    [minhash]
    bands = 20                # 20 x 6: P(candidate) = 0.99 at Jaccard 0.8 (9 x 13: 0.40)
    rows = 6
    [execution]
    workers = 2

`llmlab data run --recipe web-basic --input raw/ --out clean/` starts from a recipe instead, and
`llmlab data recipe web-basic` prints that recipe as a complete pipeline.toml (`recipe_toml`).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.core.config import config_from_dict, read_toml
from llmlab.core.errors import LLMLabError
from llmlab.data.curation.minhash import MinHashConfig
from llmlab.data.curation.pii import PIIConfig
from llmlab.data.curation.quality import QualityConfig
from llmlab.data.curation.repetition import RepetitionConfig


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list, metadata={"help": "input files or directories"})
    text_field: str = field(default="text", metadata={"help": "JSONL/Parquet field holding the text"})


@dataclass
class OutputConfig:
    dir: str = field(default="clean", metadata={"help": "output directory"})
    compression: str = field(default="gzip", metadata={"help": "gzip (part-*.jsonl.gz) or none (part-*.jsonl)",
                                                        "choices": ["gzip", "none"]})
    format: str = field(default="jsonl", metadata={"help": "jsonl (part-*.jsonl[.gz], see compression) or parquet "
                                                   "(part-*.parquet, zstd; needs pyarrow)",
                                                   "choices": ["jsonl", "parquet"]})


@dataclass
class NormalizeConfig:
    enabled: bool = field(default=True, metadata={"help": "NFC, control characters, whitespace"})
    fix_encoding: bool = field(default=False, metadata={"help": "fix mojibake with ftfy (optional extra)"})


@dataclass
class LangIdConfig:
    enabled: bool = field(default=True, metadata={"help": "language identification (py3langid)"})
    languages: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "languages to keep"})
    threshold: float = field(default=0.5, metadata={"help": "lowest probability of the kept language"})


@dataclass
class ExactDedupConfig:
    enabled: bool = field(default=True, metadata={"help": "drop documents with identical normalised text"})


@dataclass
class DecontamConfig:
    enabled: bool = field(default=True, metadata={"help": "drop documents overlapping evaluation files"})
    eval_files: list[str] = field(default_factory=list, metadata={"help": "evaluation text/JSONL files"})
    ngram: int = field(default=13, metadata={"help": "overlap length in words (GPT-3: 13)"})


@dataclass
class ExecutionConfig:
    workers: int = field(default=1, metadata={"help": "parallel worker processes"})
    batch_size: int = field(default=1000, metadata={"help": "documents per batch (bounds memory)"})
    engine: str = field(default="local", metadata={"help": "local processes or a Dask cluster",
                                                   "choices": ["local", "dask"]})
    dask_address: str = field(default="", metadata={"help": "Dask scheduler address ('' = local cluster)"})


@dataclass
class PipelineConfig:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """What decides the output (not where it goes, nor how many workers compute it)."""
        d = self.to_dict()
        d.pop("execution")
        d["output"].pop("dir")
        if d["output"]["format"] == "jsonl":   # the default: runs made before the option still resume
            d["output"].pop("format")
        return json.dumps(d, sort_keys=True)


SECTIONS = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}


def config_from_mapping(data: dict, source: str = "config") -> PipelineConfig:
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise LLMLabError(f"{source}: unknown section(s) {unknown}; valid sections: {sorted(SECTIONS)}")
    values = {}
    for f in dataclasses.fields(PipelineConfig):
        section = data.get(f.name, {})
        if not isinstance(section, dict):
            raise LLMLabError(f"{source}: [{f.name}] must be a table of settings")
        cls = f.default_factory().__class__
        try:
            values[f.name] = config_from_dict(cls, section)
        except LLMLabError as e:
            raise LLMLabError(f"{source} [{f.name}]: {e}") from None
    return PipelineConfig(**values)


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    data = read_toml(path, "write a pipeline config (see `llmlab data run --help`) or use --recipe")
    cfg = config_from_mapping(data, str(path))
    # Relative paths in the file are relative to the file, so a config works from any directory.
    base = path.parent
    cfg.input.paths = [str(base / p) if not Path(p).is_absolute() else p for p in cfg.input.paths]
    cfg.decontam.eval_files = [str(base / p) if not Path(p).is_absolute() else p for p in cfg.decontam.eval_files]
    if "output" in data and "dir" in data["output"] and not Path(cfg.output.dir).is_absolute():
        cfg.output.dir = str(base / cfg.output.dir)
    return cfg


# Named starting points, as overrides of the defaults (which are web-basic's values).
RECIPES: dict[str, dict] = {
    "web-basic": {},
    "prose": {"langid": {"enabled": False}, "quality": {"min_terminal_punct_line_fraction": 0.0}},
    "dedup-only": {"langid": {"enabled": False}, "quality": {"enabled": False}, "repetition": {"enabled": False},
                   "pii": {"enabled": False}, "decontam": {"enabled": False}},
}
RECIPE_NOTES: dict[str, str] = {
    "web-basic": "crawled web pages: every filter at the papers' thresholds. It drops a document when fewer "
                 "than 12% of its lines end in punctuation, so one-line texts without a final full stop "
                 "(posts, titles, chat turns) and verse go.",
    "prose": "books, docs, forum posts: web-basic without language identification and without the "
             "terminal-punctuation rule (the other Gopher rules, incl. English stop words, stay).",
    "dedup-only": "text that is already clean: normalise, then exact and near dedup, nothing else.",
}


def recipe_config(name: str, inputs: list[str], out: str) -> PipelineConfig:
    if name not in RECIPES:
        raise LLMLabError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    data = json.loads(json.dumps(RECIPES[name]))
    data.setdefault("input", {})["paths"] = [str(p) for p in inputs]
    data.setdefault("output", {})["dir"] = str(out)
    return config_from_mapping(data, f"recipe {name}")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def config_to_toml(cfg: PipelineConfig, header: str = "") -> str:
    """`cfg` as a complete pipeline.toml: every section and key, each with its help as a comment.
    `load_config` reads it back to an equal config (paths are then relative to the file)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for section in dataclasses.fields(cfg):
        lines += ["", f"[{section.name}]"]
        part = getattr(cfg, section.name)
        rows = [(f"{f.name} = {_toml_value(getattr(part, f.name))}", f.metadata.get("help", ""))
                for f in dataclasses.fields(part)]
        width = max(len(r) for r, _ in rows)
        lines += [f"{r:<{width}}  # {h}" if h else r for r, h in rows]
    return "\n".join(lines).lstrip("\n") + "\n"


def recipe_toml(name: str, inputs: list[str] | None = None, out: str = "clean/") -> str:
    """The recipe `name` as a complete pipeline.toml (what `llmlab data recipe NAME` prints)."""
    cfg = recipe_config(name, inputs or ["raw/"], out)
    changed = [f"  {s}.{k} = {_toml_value(v)}" for s, table in RECIPES[name].items() for k, v in table.items()]
    header = "\n".join([textwrap.fill(f"pipeline.toml for the built-in recipe {name!r}: {RECIPE_NOTES[name]}", 98),
                        "Differs from the defaults in:" + ("\n" + "\n".join(changed) if changed
                                                          else " nothing (the defaults are this recipe)"),
                        "Relative paths are relative to this file. Run: llmlab data run THIS_FILE"])
    return config_to_toml(cfg, header)
