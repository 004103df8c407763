"""Scaling-law fit, next sweep size, plot and summary (llmlab.e2e.scaling)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmlab.core.errors import LLMLabError
from llmlab.e2e.scaling import PowerLaw, fit_power_law, next_size, plot_scaling, scaling_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def kaplan_points(alpha: float = 0.076, n_c: float = 8.8e13) -> tuple[list[float], list[float]]:
    sizes = [1e5, 4e5, 1.6e6, 6.4e6]
    return sizes, [(n_c / n) ** alpha for n in sizes]


def test_exact_power_law_recovers_exponent():
    sizes, losses = kaplan_points()
    fit = fit_power_law(sizes, losses)
    assert abs(fit.alpha - 0.076) < 1e-9
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.a == pytest.approx(8.8e13**0.076, rel=1e-9)  # a = N_c ** alpha
    assert fit.x_name == "parameters"


def test_steeper_law_on_flops():
    flops = [1e12, 1e13, 1e14]
    losses = [3.0 * c**-0.3 for c in flops]
    fit = fit_power_law(flops, losses, x_name="flops")
    assert abs(fit.alpha - 0.3) < 1e-9 and fit.x_name == "flops"
    assert fit.predict(1e15) == pytest.approx(3.0 * 1e15**-0.3, rel=1e-9)


def test_noisy_points_fit_close_but_not_perfect():
    rng = np.random.default_rng(0)
    sizes = np.geomspace(1e5, 1e7, 6)
    losses = 20.0 * sizes**-0.1 * np.exp(rng.normal(0, 0.01, size=sizes.size))
    fit = fit_power_law(sizes.tolist(), losses.tolist())
    assert 0.9 < fit.r2 < 1.0
    assert abs(fit.alpha - 0.1) < 0.02


def test_two_points_fit_exactly():
    fit = fit_power_law([10.0, 100.0], [2.0, 1.0])
    assert fit.alpha == pytest.approx(math.log10(2.0))
    assert fit.r2 == 1.0


def test_predict_is_a_times_x_to_minus_alpha():
    law = PowerLaw(a=12.5, alpha=0.2, r2=0.99, x_name="parameters")
    for x in (1.0, 3e4, 7.7e8):
        assert law.predict(x) == pytest.approx(12.5 * x**-0.2, rel=1e-12)
    with pytest.raises(LLMLabError, match="positive"):
        law.predict(0)


@pytest.mark.parametrize(
    "x, loss, message",
    [
        ([1e5], [3.0], "at least 2 points"),
        ([], [], "at least 2 points"),
        ([1e5, 2e5], [3.0], "one loss per point"),
        ([1e5, 0.0], [3.0, 2.5], "positive"),
        ([1e5, 2e5], [3.0, -1.0], "positive"),
        ([1e5, 2e5], [3.0, float("nan")], "positive"),
        ([1e5, 1e5], [3.0, 2.9], "two different"),
    ],
)
def test_fit_rejects_bad_input(x, loss, message):
    with pytest.raises(LLMLabError, match=message):
        fit_power_law(x, loss)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([2, 4, 6], 8),
        ([1, 2], 3),  # two values: arithmetic wins
        ([64, 128, 256], 512),
        ([3, 6, 12, 24], 48),
        ([4, 6, 9], 14),  # ratio 3/2: 13.5 rounded (banker's) to 14
        ([1, 2, 4, 5], 6),  # neither: last + last step
        ([100, 200, 350], 500),
    ],
)
def test_next_size(values, expected):
    assert next_size(values) == expected


@pytest.mark.parametrize("values, message", [([4], "at least 2"), ([], "at least 2"),
                                              ([4, 2, 6], "increasing"), ([2, 2, 4], "increasing"),
                                              ([2.5, 4], "whole-number")])
def test_next_size_rejects_bad_input(values, message):
    with pytest.raises(LLMLabError, match=message):
        next_size(values)


def sweep() -> tuple[list[dict], dict[str, PowerLaw], dict]:
    points = []
    for n_layer, n in ((2, 1e5), (4, 2e5), (6, 3e5)):
        flops = 6 * n * 20 * n  # C = 6 N D with Chinchilla's D = 20 N
        points.append({"label": f"n_layer={n_layer}", "parameters": n, "flops": flops,
                       "loss": 30.0 * n**-0.15 * (1.0 + 0.01 * (n_layer % 4))})
    fits = {key: fit_power_law([p[key] for p in points], [p["loss"] for p in points], key)
            for key in ("parameters", "flops")}
    predicted = {"label": "n_layer=8", "parameters": 4e5, "flops": 6 * 4e5 * 20 * 4e5,
                 "loss": fits["parameters"].predict(4e5), "measured_loss": 4.0}
    return points, fits, predicted


def test_plot_is_a_png(tmp_path):
    points, fits, predicted = sweep()
    out = plot_scaling(points, fits, predicted, tmp_path / "sub" / "scaling.png")
    assert out == tmp_path / "sub" / "scaling.png"
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["scaling.png"]  # no temporary file left behind
    # Without a prediction, and with only one panel's fit, it still draws.
    plot_scaling(points, {"parameters": fits["parameters"]}, None, tmp_path / "bare.png")
    assert (tmp_path / "bare.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_rejects_bad_points(tmp_path):
    with pytest.raises(LLMLabError, match="at least one"):
        plot_scaling([], {}, None, tmp_path / "x.png")
    with pytest.raises(LLMLabError, match="'flops'"):
        plot_scaling([{"label": "a", "parameters": 1e5, "loss": 3.0}], {}, None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_summary_error_percent():
    points, fits, predicted = sweep()
    predicted = dict(predicted, loss=4.4)
    summary = scaling_summary(points, fits, predicted, 4.0)
    assert summary["predicted_loss"] == 4.4 and summary["measured_loss"] == 4.0
    assert summary["error_percent"] == pytest.approx(10.0)
    assert summary["error_signed_percent"] == pytest.approx(10.0)
    assert summary["alpha_params"] == fits["parameters"].alpha
    assert summary["alpha_flops"] == fits["flops"].alpha
    assert summary["points"] == 3 and summary["predicted_label"] == "n_layer=8"
    assert summary["predicted_loss_flops"] == pytest.approx(fits["flops"].predict(predicted["flops"]))
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    for value in summary.values():
        assert value is None or type(value) in (float, int, str)

    # Predicted too low: the signed error is negative; a measured point dict works too.
    under = scaling_summary(points, fits, dict(predicted, loss=3.0), {"loss": np.float64(4.0)})
    assert under["error_percent"] == pytest.approx(25.0)
    assert under["error_signed_percent"] == pytest.approx(-25.0)
    assert type(under["measured_loss"]) is float


def test_summary_without_measurement_or_given_loss():
    points, fits, predicted = sweep()
    del predicted["loss"]
    summary = scaling_summary(points, fits, predicted, None)
    assert summary["predicted_loss"] == pytest.approx(fits["parameters"].predict(4e5))
    assert summary["measured_loss"] is None and summary["error_percent"] is None
    empty = scaling_summary(points, {}, None, None)
    assert empty["alpha_params"] is None and empty["predicted_loss"] is None
