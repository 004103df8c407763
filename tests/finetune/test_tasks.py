"""Built-in tasks: deterministic, held-out splits really held out, scores, size knob, JSONL round trip."""

from __future__ import annotations

import json
import re

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.finetune import tasks
from llmlab.finetune.sft_data import read_examples
from llmlab.finetune.tasks import TASKS, build_task, prompt_and_reference, save_task_jsonl


def as_regex(template: str) -> re.Pattern:
    """A template's shape: its literal text, with any text where a {field} goes."""
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts) + r"\Z", re.DOTALL)


def order_text(example) -> str:
    user = example.messages[0]["content"]
    assert user.startswith(tasks.INSTRUCTION)
    return user[len(tasks.INSTRUCTION):]


@pytest.fixture(scope="module")
def orders():
    return build_task("extract-json")


@pytest.fixture(scope="module")
def facts():
    return build_task("facts", size=50)


def test_same_seed_same_task_other_seed_other_task(orders):
    for name in TASKS:
        a, b = build_task(name, size=40, seed=3), build_task(name, size=40, seed=3)
        assert (a.train, a.validation, a.test, a.test_kinds) == (b.train, b.validation, b.test, b.test_kinds)
        assert build_task(name, size=40, seed=4).train != a.train
    assert build_task("extract-json").train == orders.train


def test_every_example_is_one_user_and_one_assistant_turn(orders, facts):
    for task in (orders, facts):
        for example in task.train + task.validation + task.test:
            assert [m["role"] for m in example.messages] == ["user", "assistant"]
        assert len(task.test_kinds) == len(task.test)


def test_extract_json_sizes_and_references(orders):
    assert (len(orders.train), len(orders.validation), len(orders.test)) == (600, 100, 200)
    assert len(build_task("extract-json", size=50).train) == 50
    for example in orders.train[:50] + orders.test[:50]:
        record = json.loads(prompt_and_reference(example)[1])
        assert tuple(record) == tasks.RECORD_KEYS and isinstance(record["quantity"], int)
        text = order_text(example)
        assert record["name"] in text and record["address"] in text and record["time"] in text


def test_extract_json_test_templates_never_in_train(orders):
    train_shapes = [as_regex(t) for t in tasks.ORDER_TEMPLATES]
    test_shapes = [as_regex(t) for t in tasks.HELD_OUT_ORDER_TEMPLATES]
    for example in orders.train + orders.validation:
        text = order_text(example)
        assert any(s.match(text) for s in train_shapes) and not any(s.match(text) for s in test_shapes)
    for example in orders.test:
        text = order_text(example)
        assert any(s.match(text) for s in test_shapes) and not any(s.match(text) for s in train_shapes)
    used = {next(i for i, s in enumerate(test_shapes) if s.match(order_text(e))) for e in orders.test}
    assert used == set(range(len(test_shapes)))
    prompts = [e.messages[0]["content"] for e in orders.train + orders.validation + orders.test]
    assert len(set(prompts)) == len(prompts)


def test_score_json():
    reference = json.dumps({"name": "Dana", "item": "pepperoni pizza", "size": "large", "quantity": 3,
                            "address": "12 Elm Street", "time": "7pm"})
    shuffled = json.dumps(dict(reversed(list(json.loads(reference).items()))))
    assert tasks.score_json(f"  {shuffled}\n", reference) == {"json_valid": 1.0, "exact_match": 1.0, "field_accuracy": 1.0}
    wrong = reference.replace('"quantity": 3', '"quantity": "3"')
    assert tasks.score_json(wrong, reference) == {"json_valid": 1.0, "exact_match": 0.0, "field_accuracy": 5 / 6}
    for junk in ('{"name": "Dana"', "[1, 2]", "Sure! Here is the JSON", ""):
        assert tasks.score_json(junk, reference) == {"json_valid": 0.0, "exact_match": 0.0, "field_accuracy": 0.0}


def test_facts_size_knob_is_linear():
    sizes = {n: build_task("facts", size=n) for n in (10, 20, 40)}
    for n, task in sizes.items():
        assert len(task.train) == 8 * n                   # 4 attributes x 2 phrasings
        assert len(task.validation) + task.test_kinds.count("held-out-phrasing") == 4 * n
        assert task.test_kinds.count("reverse") == n // 5
    assert len(build_task("facts").train) == 8 * 250
    with pytest.raises(LLMLabError, match="distinct fictional people"):
        build_task("facts", size=10**6)


def test_facts_held_out_phrasing_never_in_train(facts):
    trained = [as_regex(q) for phrasings, _ in tasks.QUESTIONS.values() for q in phrasings]
    held_out = [as_regex(h) for _, h in tasks.QUESTIONS.values()]
    reverse = as_regex(tasks.REVERSE_QUESTION)
    for example in facts.train:
        q = example.messages[0]["content"]
        assert any(s.match(q) for s in trained) and not any(s.match(q) for s in held_out)
    for example, kind in zip(facts.validation + facts.test, ["held-out-phrasing"] * len(facts.validation) + facts.test_kinds):
        q = example.messages[0]["content"]
        assert not any(s.match(q) for s in trained)
        assert (reverse.match(q) if kind == "reverse" else any(s.match(q) for s in held_out))
    train_questions = {e.messages[0]["content"] for e in facts.train}
    assert not train_questions & {e.messages[0]["content"] for e in facts.validation + facts.test}


def test_facts_people_validation_and_test_disjoint_and_answers_consistent(facts):
    def person(q: str) -> str:
        return next(m.group(1) for _, h in tasks.QUESTIONS.values()
                    if (m := re.fullmatch(re.escape(h).replace(re.escape("{name}"), "(.+)"), q)))

    val_people = {person(e.messages[0]["content"]) for e in facts.validation}
    test_people = {person(e.messages[0]["content"]) for e, k in zip(facts.test, facts.test_kinds) if k != "reverse"}
    assert len(val_people) == 10 and len(test_people) == 40 and not val_people & test_people
    reverse_answers = [e.messages[1]["content"] for e, k in zip(facts.test, facts.test_kinds) if k == "reverse"]
    assert reverse_answers and set(reverse_answers) <= val_people | test_people
    train_text = {(e.messages[0]["content"], e.messages[1]["content"]) for e in facts.train}
    for example in facts.validation[:20]:   # the held-out answer is the one trained in another phrasing
        name, answer = person(example.messages[0]["content"]), example.messages[1]["content"]
        assert any(name in q and a == answer for q, a in train_text)


def test_score_facts():
    assert tasks.score_facts(" lisbon. ", "Lisbon") == {"exact_match": 1.0}
    assert tasks.score_facts("Chiang Mai\n", "chiang mai") == {"exact_match": 1.0}
    assert tasks.score_facts("Lisbon, Portugal", "Lisbon") == {"exact_match": 0.0}


def test_unknown_task_and_bad_size():
    with pytest.raises(LLMLabError, match="extract-json.*facts"):
        build_task("trivia")
    with pytest.raises(LLMLabError, match="at least 1"):
        build_task("facts", size=0)


def test_saved_jsonl_round_trips(tmp_path, facts):
    paths = save_task_jsonl(facts, tmp_path / "facts")
    assert sorted(p.name for p in paths.values()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    assert read_examples(paths["train"]) == facts.train
    assert read_examples(paths["validation"]) == facts.validation
    assert read_examples(paths["test"]) == facts.test
    kinds = [json.loads(line)["kind"] for line in paths["test"].read_text(encoding="utf-8").splitlines()]
    assert kinds == facts.test_kinds
