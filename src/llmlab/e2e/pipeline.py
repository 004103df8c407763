"""The e2e pipeline: stages run in order, each cached by a content hash and resumable.

    curate -> tokenizer -> [sweep points -> sweep] -> pretrain -> sft -> eval -> report

A stage's key is the sha256 of its settings (the recipe sections it reads, without the ones that
only say *where or how fast* it runs: device, threads, workers), the keys of the stages it
reads from, and its code version (CODE_VERSION: bumped when a stage's output changes meaning).
Its output lives in OUT/<stage>/, and OUT/<stage>/stage.json says {key, done, seconds, facts}.
stage.json is written (atomically) when a stage starts, with done = false, and again at the end.

A finished stage also records an output id (new each time it runs) and the output ids of the
stages it read, so a stage is only reused if it was built from the outputs that are there now:
deleting a stage's stage.json reruns it and every stage after it, even where their settings
did not change.

On every run, for each stage in order:
    stage.json with this key and inputs,    skip: the stage is cached ("cached" line)
    done
    stage.json with this key and inputs,    resume: the stage continues its own work where it
                                            stopped (curation and tokenizing skip finished shards;
                                            pretrain and sft resume from their checkpoint at the
                                            exact step, through the trainers' resume)
    anything else                           OUT/<stage>/ is emptied and the stage runs afresh
A changed setting changes that stage's key and, through the keys, every key after it: exactly
that stage and the later ones run again.

Stopping. Ctrl-C or SIGTERM during training: the trainer finishes the step and saves a checkpoint
(llmlab.train.trainer), the stage stays "not done" and `llmlab e2e --resume OUT` continues it at
that step. Anywhere else, SIGTERM is turned into the same KeyboardInterrupt as Ctrl-C, the
stage's time so far is recorded, and the next run resumes it.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_json, read_json_object
from llmlab.e2e.recipe import Recipe, save_recipe

STAGE_FILE = "stage.json"
MAIN_STAGES = ("curate", "tokenizer", "pretrain", "sft", "eval", "report")
STAGE_CHOICES = ("curate", "tokenizer", "sweep", "pretrain", "sft", "eval", "report")
# Bump a stage's number when what it writes changes meaning: its cache (and every later one) is then redone.
CODE_VERSION = {"curate": 1, "tokenizer": 1, "pretrain": 1, "sft": 1, "eval": 1, "report": 1, "sweep-point": 1,
                "sweep": 1, "reference": 1}
# Settings that say where or how fast a stage runs, not what it computes: left out of the keys, so a
# run moved to another machine (or given more workers) still finds its cache.
NOT_IN_KEY = {"device", "threads", "compile", "tensorboard", "wandb", "peak_tflops", "workers", "log_every"}


class StageInterrupted(Exception):
    """A trainer stopped on Ctrl-C / SIGTERM and saved its checkpoint; the stage is not done."""

    def __init__(self, stage: str, step: int, out: Path):
        super().__init__(f"{stage} stopped at step {step}; continue with `llmlab e2e --resume {out}`")
        self.stage, self.step, self.out = stage, step, out


@dataclass
class StageContext:
    recipe: Recipe
    out: Path
    name: str
    keys: dict[str, str]
    facts: dict[str, dict]          # facts of the stages finished before this one (this run or cached)
    resumed: bool = False

    @property
    def dir(self) -> Path:
        return self.out / self.name

    def stage_dir(self, name: str) -> Path:
        return self.out / name


@dataclass
class Stage:
    name: str
    inputs: tuple[str, ...]                        # stages whose keys (and outputs) this one uses
    settings: Callable[[Recipe], dict]             # the recipe settings that decide the output
    run: Callable[[StageContext], dict]            # does the work, returns the facts for stage.json
    code: str = ""                                 # CODE_VERSION entry (default: the name)


def without_runtime(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in NOT_IN_KEY}


def stage_key(stage: Stage, recipe: Recipe, keys: dict[str, str]) -> str:
    material = {"stage": stage.name, "code": CODE_VERSION.get(stage.code or stage.name, 0),
                "settings": stage.settings(recipe), "inputs": {n: keys[n] for n in stage.inputs}}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def read_stage(directory: Path) -> dict | None:
    path = directory / STAGE_FILE
    if not path.is_file():
        return None
    try:
        return read_json_object(path, "delete it to run the stage again")
    except LLMLabError:
        return None   # a damaged record: the stage simply runs again


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (curation/tokenize workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _log(message: str) -> None:
    print(f"llmlab e2e: {message}", file=sys.stderr, flush=True)


@dataclass
class Pipeline:
    recipe: Recipe
    out: Path
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            from llmlab.e2e.stages import all_stages
            self.stages = all_stages(self.recipe)
        self.out = Path(self.out)

    def keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for stage in self.stages:
            keys[stage.name] = stage_key(stage, self.recipe, keys)
        return keys

    def status(self) -> list[dict]:
        """Per stage: name, key, and whether its output is cached, half done or missing."""
        rows, outputs = [], {}
        for stage, key in zip(self.stages, self.keys().values()):
            record = read_stage(self.out / stage.name)
            inputs = {n: outputs.get(n) for n in stage.inputs}
            state = "to run" if record is None or record.get("key") != key or record.get("inputs") != inputs else \
                "done" if record.get("done") else "partial"
            outputs[stage.name] = (record or {}).get("output") if state == "done" else None
            rows.append({"stage": stage.name, "key": key[:12], "state": state,
                         "seconds": (record or {}).get("seconds")})
        return rows

    def run(self, upto: str | None = None) -> dict:
        """Run (or resume) every stage up to and including `upto` (default: all). Returns the summary."""
        names = [s.name for s in self.stages]
        last = len(self.stages) - 1
        if upto is not None:
            matches = [i for i, n in enumerate(names) if n == upto]
            if not matches:
                raise LLMLabError(f"--stages {upto}: not a stage of this pipeline (stages: {', '.join(names)}); "
                                  "use --sweep to add the sweep")
            last = matches[-1]
        self.out.mkdir(parents=True, exist_ok=True)
        save_recipe(self.recipe, self.out)
        keys: dict[str, str] = {}
        facts: dict[str, dict] = {}
        outputs: dict[str, str] = {}
        summary = {"out": str(self.out), "recipe": self.recipe.name, "stages": []}
        restore = _sigterm_as_interrupt()
        try:
            for i, stage in enumerate(self.stages):
                keys[stage.name] = stage_key(stage, self.recipe, keys)
                if i > last:
                    break
                row = self._run_stage(stage, i, keys, facts, outputs)
                summary["stages"].append(row)
        finally:
            restore()
        return summary

    def _run_stage(self, stage: Stage, index: int, keys: dict[str, str], facts: dict[str, dict],
                   outputs: dict[str, str]) -> dict:
        key = keys[stage.name]
        directory = self.out / stage.name
        record = read_stage(directory)
        tag = f"[{index + 1}/{len(self.stages)}] {stage.name}"
        inputs = {n: outputs[n] for n in stage.inputs}
        same = record is not None and record.get("key") == key and record.get("inputs") == inputs
        if same and record.get("done"):
            facts[stage.name] = record.get("facts", {})
            outputs[stage.name] = record.get("output", "")
            _log(f"{tag}: cached (key {key[:12]}, {record.get('seconds', 0):.1f}s when it ran)")
            return {"stage": stage.name, "key": key, "status": "cached", "seconds": record.get("seconds", 0.0),
                    "cpu_seconds": record.get("cpu_seconds", 0.0)}
        resumed = same
        if not resumed and directory.exists():
            shutil.rmtree(directory)   # other settings or inputs, or no record: nothing in it can be trusted
        directory.mkdir(parents=True, exist_ok=True)
        spent, spent_cpu = (record.get("seconds", 0.0), record.get("cpu_seconds", 0.0)) if resumed else (0.0, 0.0)
        atomic_write_json(directory / STAGE_FILE, {"stage": stage.name, "key": key, "done": False, "seconds": spent,
                                                   "cpu_seconds": spent_cpu, "inputs": inputs})
        _log(f"{tag}: {'resuming' if resumed else 'start'} (key {key[:12]})")
        t0, c0 = time.perf_counter(), cpu_seconds()
        done = False
        try:
            ctx = StageContext(self.recipe, self.out, stage.name, dict(keys), dict(facts), resumed)
            stage_facts = stage.run(ctx) or {}
            done = True
        finally:
            seconds = spent + time.perf_counter() - t0
            cpu = spent_cpu + cpu_seconds() - c0
            final = {"stage": stage.name, "key": key, "done": done, "seconds": round(seconds, 3),
                     "cpu_seconds": round(cpu, 3), "inputs": inputs}
            if done:
                final["output"] = outputs[stage.name] = uuid.uuid4().hex
                final["facts"] = stage_facts
            atomic_write_json(directory / STAGE_FILE, final)
            if not done:
                _log(f"{tag}: stopped after {seconds:.1f}s; `llmlab e2e --resume {self.out}` continues it")
        facts[stage.name] = stage_facts
        _log(f"{tag}: done in {seconds:.1f}s")
        return {"stage": stage.name, "key": key, "status": "resumed" if resumed else "ran", "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu, 3)}


def _sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM -> KeyboardInterrupt (what Ctrl-C raises), so a scheduler's stop records the stage's
    time and leaves it resumable. Trainers install their own handler while they run (finish the
    step, save) and put this one back after. Returns the function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def stage_records(out: Path) -> dict[str, dict]:
    """{stage name: stage.json} of every stage directory in OUT (for the report and --json)."""
    records = {}
    for path in sorted(Path(out).glob(f"*/{STAGE_FILE}")):
        record = read_stage(path.parent)
        if record is not None:
            records[path.parent.name] = record
    return records
