"""Metrics and their uncertainty: what a score is, and how far it could move by chance.

Multiple choice (lm-eval's definitions, so the numbers compare with published ones):
    acc            the choice with the highest summed log-likelihood is the gold one
    acc_norm       ... after dividing each choice's log-likelihood by its length in characters
                   (without the leading space that joins it to the prompt, as lm-eval counts it).
                   A sum of log-probabilities favours short answers: every extra token can only
                   lower it. Per-character normalization removes most of that bias. (OLMES's
                   `acc_per_char` counts the leading space too, so on short answers the two can
                   rank choices differently.)
    acc_per_token  ... divided by its length in tokens instead (depends on the tokenizer, so it
                   does not compare across models with different vocabularies)

Standard errors. A benchmark is a sample of questions; the score of the whole population would
differ by about one standard error. For a mean of 0/1 outcomes that is sqrt(p(1-p)/(n-1)) (the
sample standard deviation over sqrt(n), lm-eval's `mean_stderr`); for a ratio of sums such as
bits per byte, the bootstrap (resample the items with replacement, recompute, take the spread).

Comparing two models on the same items (`llmlab eval compare`): their errors are correlated (both
miss the hard questions), so the paired test is much sharper than two separate error bars. McNemar's
exact test looks only at the items where they disagree: under "no difference", each disagreement is
a fair coin flip between the two.
"""

from __future__ import annotations

import math
import random
import re
import string


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_stderr(values: list[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n)."""
    n = len(values)
    if n < 2:
        return float("nan")
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def bootstrap_stderr(items: list, statistic, iters: int = 1000, seed: int = 1234) -> float:
    """Standard deviation of statistic(resample) over `iters` resamples of the items."""
    if len(items) < 2:
        return float("nan")
    rng = random.Random(seed)
    values = [statistic(rng.choices(items, k=len(items))) for _ in range(iters)]
    return math.sqrt(sum((v - mean(values)) ** 2 for v in values) / (len(values) - 1))


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def choice_length(choice: str) -> int:
    """Characters of a choice as lm-eval counts them for acc_norm: without the joining space."""
    return max(len(choice[1:] if choice.startswith(" ") else choice), 1)


def choice_metrics(logprobs: list[float], choices: tuple[str, ...], tokens: list[int], gold: int) -> dict[str, float]:
    """acc, acc_norm and acc_per_token of one multiple-choice item (1.0 right, 0.0 wrong)."""
    return {"acc": float(argmax(logprobs) == gold),
            "acc_norm": float(argmax([lp / choice_length(c) for lp, c in zip(logprobs, choices)]) == gold),
            "acc_per_token": float(argmax([lp / max(t, 1) for lp, t in zip(logprobs, tokens)]) == gold)}


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization (Rajpurkar et al. 2016): lower case, no punctuation, no
    articles, single spaces. "The Eiffel Tower." and "eiffel tower" are the same answer."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: tuple[str, ...] | list[str]) -> float:
    """1.0 when the prediction equals any reference after normalize_answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in references))


def mcnemar_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: `wins` items only model A got right, `losses` only B.
    Under no difference each of the n = wins + losses disagreements is a fair coin."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def two_proportion_p(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-sided p-value of a difference between two independent proportions (normal approximation),
    for results on different items, where no pairing is possible."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return math.erfc(abs(p1 - p2) / se / math.sqrt(2))
