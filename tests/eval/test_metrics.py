"""Metrics as lm-eval defines them, standard errors, and the significance tests of `eval compare`."""

from __future__ import annotations

import math
import random

import pytest

from llmlab.eval import metrics
from llmlab.eval.comparison import compare_results


def test_acc_norm_divides_by_characters_without_the_joining_space():
    # " a" is short and likely in total; per character, " abcdefgh" is the better answer.
    choices, logprobs, tokens = (" a", " abcdefgh"), [-2.0, -4.0], [1, 4]
    m = metrics.choice_metrics(logprobs, choices, tokens, gold=1)
    assert m["acc"] == 0.0                       # -2 > -4
    assert m["acc_norm"] == 1.0                  # -2/1 < -4/8 = -0.5
    assert m["acc_per_token"] == 1.0             # -2/1 < -4/4
    assert metrics.choice_length(" abc") == 3 and metrics.choice_length("abc") == 3


def test_acc_norm_equals_lm_evals_own_formula():
    """lm-eval: argmax(lls / [len(choice) for choice in doc_to_choice(doc)]), choices without the delimiter."""
    rng = random.Random(0)
    for _ in range(200):
        raw = ["".join(rng.choice("abcdef ") for _ in range(rng.randint(1, 30))).strip() or "x" for _ in range(4)]
        lls = [rng.uniform(-40, -1) for _ in raw]
        want = max(range(4), key=lambda i: lls[i] / len(raw[i]))
        got = metrics.choice_metrics(lls, tuple(" " + c for c in raw), [1] * 4, gold=want)
        assert got["acc_norm"] == 1.0


def test_stderr_is_lm_evals_mean_stderr():
    values = [1.0] * 30 + [0.0] * 70
    p, n = 0.3, 100
    assert metrics.mean_stderr(values) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert math.isnan(metrics.mean_stderr([1.0]))


def test_bootstrap_stderr_is_close_to_the_analytic_one():
    values = [1.0] * 300 + [0.0] * 700
    boot = metrics.bootstrap_stderr(values, metrics.mean, iters=400)
    assert boot == pytest.approx(metrics.mean_stderr(values), rel=0.15)


def test_exact_match_normalizes_like_squad():
    assert metrics.exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert metrics.exact_match("Paris, France", ["Paris"]) == 0.0
    assert metrics.exact_match("an apple", ["Apple", "pear"]) == 1.0


def test_mcnemar_matches_the_binomial_tail():
    assert metrics.mcnemar_p(0, 0) == 1.0
    assert metrics.mcnemar_p(5, 5) == 1.0
    assert metrics.mcnemar_p(10, 0) == pytest.approx(2 / 2 ** 10)
    assert metrics.mcnemar_p(2, 8) == pytest.approx(2 * sum(math.comb(10, i) for i in range(3)) / 2 ** 10)
    assert metrics.two_proportion_p(0.5, 1000, 0.5, 1000) == pytest.approx(1.0)
    assert metrics.two_proportion_p(0.4, 1000, 0.5, 1000) < 1e-4


def _result(outcomes: list[float], split="test", shots=0) -> dict:
    items = [{"id": str(i), "acc": v} for i, v in enumerate(outcomes)]
    return {"format_version": 1, "tasks": {"t": {"acc": metrics.mean(outcomes), "n": len(outcomes), "split": split,
                                                 "shots": shots, "stderr": {}}}, "items": {"t": items}}


def test_compare_pairs_items_and_finds_a_real_difference():
    a = [1.0] * 50 + [0.0] * 50
    b = [1.0] * 50 + [1.0] * 20 + [0.0] * 30        # B also gets 20 of A's misses right, loses nothing
    row, = compare_results(_result(a), _result(b))
    assert row["diff"] == pytest.approx(0.2) and row["n"] == 100 and "McNemar" in row["test"]
    assert row["p"] == pytest.approx(2 / 2 ** 20)
    # the same two scores on different prompts cannot be paired: the unpaired test is far less sure
    unpaired, = compare_results(_result(a), _result(b, shots=5))
    assert "unpaired" in unpaired["test"] and unpaired["p"] > row["p"]
