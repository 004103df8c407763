"""`evaluate` on hand-made tasks over a tiny model: each metric is what the per-request scores say,
few-shot prompts are fixed by the seed, and contamination is found where it was planted."""

from __future__ import annotations

import math

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.eval import metrics
from llmlab.eval.harness import check_result, evaluate
from llmlab.eval.scoring import Request, loglikelihoods
from llmlab.eval.tasks import Doc, Task
from llmlab.model.config import ModelConfig
from llmlab.tokenizer.bpe import train_bpe

TEXT = ("Question: What colour is the sky? Answer: blue. Question: What do cows drink? Answer: water. "
        "The cat sat on the mat and the dog sat on the log. Two plus two is four. ") * 4

QUESTIONS = [("What colour is the sky?", [" blue", " green", " loud"], 0),
             ("What do cows drink?", [" water", " milk of the moon", " stones"], 0),
             ("Where did the cat sit?", [" on the mat", " in the sea", " log"], 0),
             ("What is two plus two?", [" four", " five", " the mat"], 0),
             ("Who sat on the log?", [" the cat", " the dog", " nobody at all"], 1)]


def _mc_docs(split: str) -> list[Doc]:
    return [Doc(id=f"{split}-{i}", context=f"Question: {q}\nAnswer:", choices=tuple(c), gold=g)
            for i, (q, c, g) in enumerate(QUESTIONS)]


def _gen_docs(split: str) -> list[Doc]:
    return [Doc(id=str(i), context=f"Question: {q}\nAnswer:", references=(c[g].strip(),))
            for i, (q, c, g) in enumerate(QUESTIONS)]


MC = Task(name="toy_mc", kind="multiple_choice", splits=("test", "train"), default_split="test",
          fewshot_split="train", load=_mc_docs)
ONE = Task(name="toy_last_word", kind="multiple_choice", splits=("test",), default_split="test", fewshot_split=None,
           load=lambda split: [Doc(id="0", context="The cat sat on the", choices=(" mat.",), gold=0),
                               Doc(id="1", context="Two plus two is", choices=(" four.",), gold=0)])
GEN = Task(name="toy_qa", kind="generate", splits=("test",), default_split="test", fewshot_split="test",
           load=_gen_docs, stop=("\n", "."), max_new_tokens=6, extract=lambda s: s.strip())
ROLL = Task(name="toy_text", kind="rolling", splits=("test",), default_split="test", fewshot_split=None,
            load=lambda split: [Doc(id=str(i), context="", text=t) for i, t in enumerate(TEXT.split(". ")[:4])])


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXT, 320)


@pytest.fixture(scope="module")
def model(tokenizer, varied_model):
    return varied_model(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32), 3)


def test_multiple_choice_metrics_come_from_the_choices_loglikelihoods(model, tokenizer):
    result = evaluate(model, tokenizer, [MC], progress=False)
    summary, items = result["tasks"]["toy_mc"], result["items"]["toy_mc"]
    assert summary["n"] == len(QUESTIONS) and summary["split"] == "test"
    assert summary["chance"] == pytest.approx(1 / 3)
    for doc, item in zip(_mc_docs("test"), items):
        lls = [r.logprob for r in loglikelihoods(model, tokenizer, [Request(doc.context, c) for c in doc.choices])]
        assert item["logprobs"] == pytest.approx(lls, abs=1e-4)
        assert item["acc"] == float(metrics.argmax(lls) == doc.gold)
    acc = [it["acc"] for it in items]
    assert summary["acc"] == pytest.approx(sum(acc) / len(acc))
    assert summary["stderr"]["acc"] == pytest.approx(metrics.mean_stderr(acc)) or math.isnan(summary["stderr"]["acc"])


def test_few_shot_prompts_are_fixed_by_the_seed(model, tokenizer):
    a = evaluate(model, tokenizer, [MC], shots=2, seed=7, progress=False)
    b = evaluate(model, tokenizer, [MC], shots=2, seed=7, progress=False)
    zero = evaluate(model, tokenizer, [MC], shots=0, progress=False)
    assert a["items"] == b["items"]
    assert a["items"]["toy_mc"][0]["logprobs"] != zero["items"]["toy_mc"][0]["logprobs"]
    with pytest.raises(LLMLabError, match="few-shot"):
        evaluate(model, tokenizer, [ONE], shots=1, progress=False)


def test_a_single_choice_is_right_when_it_is_the_greedy_continuation(model, tokenizer):
    result = evaluate(model, tokenizer, [ONE], progress=False)
    for doc, item in zip(ONE.load("test"), result["items"]["toy_last_word"]):
        greedy = loglikelihoods(model, tokenizer, [Request(doc.context, doc.choices[0])])[0].is_greedy
        assert item["acc"] == float(greedy)
    assert set(result["tasks"]["toy_last_word"]) >= {"acc", "perplexity", "stderr"}


def test_generation_is_scored_by_exact_match(model, tokenizer):
    result = evaluate(model, tokenizer, [GEN], progress=False)
    for item in result["items"]["toy_qa"]:
        assert "\n" not in item["output"] and "." not in item["output"]
        assert item["exact_match"] == metrics.exact_match(item["answer"], item["references"])
    # the same generations with a reference planted to match: exact match follows
    assert result["tasks"]["toy_qa"]["exact_match"] == pytest.approx(
        sum(it["exact_match"] for it in result["items"]["toy_qa"]) / len(QUESTIONS))


def test_rolling_gives_bits_per_byte(model, tokenizer):
    s = evaluate(model, tokenizer, [ROLL], progress=False)["tasks"]["toy_text"]
    items = evaluate(model, tokenizer, [ROLL], progress=False)["items"]["toy_text"]
    nll = -sum(it["logprob"] for it in items)
    assert s["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(it["bytes"] for it in items))
    assert s["stderr"]["bits_per_byte"] > 0


def test_contamination_finds_planted_items(model, tokenizer):
    planted = "notes: Question: What do cows drink?\nAnswer: water and nothing else today, said the farmer twice"
    result = evaluate(model, tokenizer, [MC], train_data=[planted, TEXT[:50]], progress=False)
    assert result["contamination"]["toy_mc"]["contaminated"] == 0   # 13 words of the item do not appear in a row
    long_item = Task(name="toy_long", kind="multiple_choice", splits=("test",), default_split="test", fewshot_split=None,
                     load=lambda split: [Doc(id="q", context="Question: the quick brown fox jumps over the lazy dog "
                                             "while the farmer", choices=(" sleeps soundly", " runs"), gold=0)])
    train = ["long ago the quick brown fox jumps over the lazy dog while the farmer sleeps soundly in bed"]
    result = evaluate(model, tokenizer, [long_item], train_data=train, progress=False)
    assert result["contamination"]["toy_long"] == {"items": 1, "contaminated": 1, "ids": ["q"]}
    assert result["items"]["toy_long"][0]["contaminated"] is True


def test_results_carry_a_format_version_that_is_checked(model, tokenizer):
    result = evaluate(model, tokenizer, [ONE], progress=False)
    assert check_result(result, "r.json") is result
    with pytest.raises(LLMLabError, match="format version"):
        check_result({**result, "format_version": 99}, "r.json")
    with pytest.raises(LLMLabError, match="limit"):
        evaluate(model, tokenizer, [ONE], limit=0, progress=False)
