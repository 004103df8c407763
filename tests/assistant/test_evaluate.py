"""The answer measures and the stricter-gate rescoring, on hand-made rows (no model)."""

from __future__ import annotations

import pytest

from llmlab.assistant.evaluate import regate, summarize
from llmlab.assistant.prompt import ABSTAIN

ROWS = [  # two answerable, two unanswerable; supports from the relevance gate's cosine
    {"answerable": True, "answer": "x [1]", "cited": [1], "good_citations": [1], "correct": True,
     "abstained": False, "gated": False, "support": 0.55, "in_context": True},
    {"answerable": True, "answer": "y [2]", "cited": [2], "good_citations": [], "correct": False,
     "abstained": False, "gated": False, "support": 0.28, "in_context": True},
    {"answerable": False, "answer": "z [1]", "cited": [1], "abstained": False, "gated": False, "support": 0.25},
    {"answerable": False, "answer": ABSTAIN, "cited": [], "abstained": True, "gated": True, "support": 0.1},
]


def test_summarize_counts_each_measure() -> None:
    s = summarize(ROWS)
    assert (s["correct"], s["citation_precision"], s["cites"]) == (0.5, 0.5, 1.0)
    assert (s["abstention"], s["false_abstention"], s["gated"]) == (0.5, 0.0, 1)
    assert (s["in_context"], s["abstained_in_context"]) == (1.0, 0)


def test_a_stricter_gate_turns_low_support_rows_into_abstentions() -> None:
    s = regate(ROWS, 0.3)
    # the unanswerable row at 0.25 and the answerable one at 0.28 are now stopped before the model
    assert (s["abstention"], s["false_abstention"], s["gated"]) == (1.0, 0.5, 3)
    assert (s["correct"], s["citation_precision"], s["cites"]) == (0.5, 1.0, 0.5)
    assert s["abstained_in_context"] == 1         # the gate stopped a question whose answer was there
    assert regate(ROWS, 0.1) == summarize(ROWS)   # no stricter than the rows' own gate: unchanged
    assert ROWS[1]["cited"] == [2]                # the rows themselves are not modified


@pytest.mark.parametrize("gate", [0.0, 0.2])
def test_regate_keeps_already_gated_rows(gate: float) -> None:
    assert regate(ROWS, gate)["gated"] == 1
