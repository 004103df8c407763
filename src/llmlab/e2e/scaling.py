"""Scaling laws from a small sweep: fit a power law, predict the next size, check the guess.

`llmlab e2e --sweep` trains the same model at a few sizes (say n_layer = 2, 4, 6), fits how the
validation loss falls with size, predicts the loss of the next size (n_layer = 8) *before*
training it, then trains it and reports how far off the prediction was. This module is the
arithmetic and the picture; the pipeline does the training.

The laws
--------
Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv:2001.08361), found that
when nothing else is the bottleneck, test loss is a power law in model size N (they count
*non-embedding* parameters) and in training compute C:

    L(N) = (N_c / N) ** alpha_N      alpha_N ~ 0.076
    L(C) = (C_c / C) ** alpha_C      alpha_C ~ 0.050  (compute-optimal frontier, C_min)

A small exponent is the point: doubling N multiplies the loss by 2 ** -0.076 ~ 0.95, a 5% drop.
Training compute is counted as C = 6 N D FLOPs for N parameters and D tokens: a forward pass
costs ~2 FLOPs per parameter per token (one multiply, one add) and the backward pass about twice
that again.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla,
arXiv:2203.15556), model parameters and data together:

    L(N, D) = E + A / N ** a + B / D ** b     (their fit: E ~ 1.69, A ~ 406, B ~ 411, a ~ 0.34, b ~ 0.28)

E is the irreducible loss (the entropy of text itself: no model gets below it); the other two
terms are what a finite model and a finite dataset cost. Minimising L at fixed C = 6 N D gives
their rule of thumb: about 20 training tokens per parameter is compute-optimal (Kaplan's
recipe grew N faster than D and so under-trained big models).

What a small sweep can support
------------------------------
Here we fit the pure power law L = a * x ** (-alpha), with x = parameters or FLOPs; `a` plays
Kaplan's N_c ** alpha (so N_c = a ** (1 / alpha)). We leave out E on purpose: with 3-4 points
over well under a decade of sizes, a curve with an offset has three free numbers to fit three
or four points, so E and alpha trade off against each other and the fit says almost nothing
(a larger E with a steeper alpha fits as well as a smaller E with a flatter one). Pinning E down
needs more points and a range wide enough that the curve visibly bends towards its floor. Over a
short range the pure power law is a straight line in log-log space and is what the data
supports; it will *overestimate* how much the next, much larger model gains, because the real
curve flattens towards E.

The fit is ordinary least squares on log L = log a - alpha * log x. r2 is measured there too:
1 - (residual sum of squares) / (total sum of squares of log L about its mean), i.e. the share of
the variation in log-loss the straight line explains. r2 = 1 means the points lie exactly on a
power law; with only 2 points it is always 1 (a line through two points), so it only starts
to mean something from 3 points.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_save


def _positive(value) -> bool:
    """A positive, finite real number (numpy scalars included, bools not)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class PowerLaw:
    """loss = a * x ** (-alpha), fitted in log-log space; x_name says what x is ("parameters", "flops")."""

    a: float
    alpha: float
    r2: float
    x_name: str

    def predict(self, x: float) -> float:
        """The loss the law gives at x (x > 0)."""
        if not x > 0 or not math.isfinite(x):
            raise LLMLabError(f"PowerLaw.predict needs a positive, finite {self.x_name}, got {x!r}")
        return self.a * x ** (-self.alpha)


def fit_power_law(x: list[float], loss: list[float], x_name: str = "parameters") -> PowerLaw:
    """Least-squares fit of log(loss) = log(a) - alpha * log(x); needs >= 2 points, all positive."""
    if len(x) != len(loss):
        raise LLMLabError(
            f"fit_power_law got {len(x)} {x_name} values but {len(loss)} losses; pass one loss per point"
        )
    if len(x) < 2:
        raise LLMLabError(
            f"fit_power_law needs at least 2 points to fit a line in log-log space, got {len(x)}; "
            "sweep over more sizes (3-4 are better)"
        )
    for name, values in ((x_name, x), ("loss", loss)):
        bad = [v for v in values if not _positive(v)]
        if bad:
            raise LLMLabError(
                f"fit_power_law needs every {name} to be a positive finite number (logs are taken), "
                f"got {bad[0]!r}; check the sweep's measurements"
            )
    log_x = np.log(np.asarray(x, dtype=np.float64))
    log_loss = np.log(np.asarray(loss, dtype=np.float64))
    if np.ptp(log_x) == 0:
        raise LLMLabError(
            f"fit_power_law needs at least two different {x_name} values, got {sorted(set(x))}; "
            "a slope cannot be fitted at a single size"
        )
    # The closed-form simple linear regression: slope = cov(x, y) / var(x).
    x_mean, y_mean = log_x.mean(), log_loss.mean()
    slope = float(np.sum((log_x - x_mean) * (log_loss - y_mean)) / np.sum((log_x - x_mean) ** 2))
    intercept = float(y_mean - slope * x_mean)
    residuals = log_loss - (intercept + slope * log_x)
    ss_res = float(np.sum(residuals**2))
    ss_tot = float(np.sum((log_loss - y_mean) ** 2))
    # All losses equal: the flat line (alpha = 0) explains them exactly.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerLaw(a=math.exp(intercept), alpha=-slope, r2=r2, x_name=x_name)


def next_size(values: list[int]) -> int:
    """One step beyond the last sweep value.

    Evenly spaced values step on (2, 4, 6 -> 8); a constant ratio multiplies on
    (64, 128, 256 -> 512); anything else repeats the last step (1, 2, 4, 5 -> 6).
    Arithmetic wins when both hold, so two values always step arithmetically (64, 128 -> 192).
    """
    if len(values) < 2:
        raise LLMLabError(
            f"next_size needs at least 2 sweep values to see a step, got {list(values)}; "
            "give the sweep two or more sizes"
        )
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
        raise LLMLabError(f"next_size needs whole-number sweep values, got {list(values)}")
    values = [int(v) for v in values]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise LLMLabError(
            f"next_size needs strictly increasing sweep values, got {list(values)}; "
            "sort them smallest first and drop repeats"
        )
    steps = {b - a for a, b in zip(values, values[1:])}
    if len(steps) == 1:
        return values[-1] + steps.pop()
    # Fractions keep the ratio test exact (no 1.9999999 vs 2.0).
    if values[0] > 0:
        ratios = {Fraction(b, a) for a, b in zip(values, values[1:])}
        if len(ratios) == 1:
            return round(values[-1] * ratios.pop())
    return values[-1] + (values[-1] - values[-2])


def _check_points(points: list[dict]) -> None:
    if not points:
        raise LLMLabError("scaling needs at least one measured point; the sweep produced none")
    for i, point in enumerate(points):
        for key in ("parameters", "flops", "loss"):
            value = point.get(key)
            if not _positive(value):
                raise LLMLabError(
                    f"scaling point {i} ({point.get('label', '?')}) needs a positive {key!r}, got {value!r}"
                )


def plot_scaling(points: list[dict], fits: dict[str, PowerLaw], predicted: dict | None, path) -> Path:
    """Two log-log panels (loss vs parameters, loss vs training FLOPs), written as a PNG atomically.

    points: [{"label": "n_layer=2", "parameters": N, "flops": C, "loss": L}], drawn filled and labelled.
    fits: {"parameters": PowerLaw, "flops": PowerLaw} (either may be missing); each line runs from
    the smallest point to the predicted size. predicted: {"label", "parameters", "flops"} and
    optionally "measured_loss"; the prediction is drawn hollow at the fit's value there (or at
    predicted["loss"] when that panel has no fit), its measured twin filled at the same x.
    """
    from llmlab.core.plotting import pyplot

    plt = pyplot()

    _check_points(points)
    if predicted is not None:
        for key in ("parameters", "flops"):
            if not _positive(predicted.get(key)):
                raise LLMLabError(f"plot_scaling's predicted point needs a positive {key!r}, got {predicted.get(key)!r}")
    path = Path(os.fspath(path))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (("parameters", "parameters N"), ("flops", "training compute C = 6ND (FLOPs)"))
    for ax, (key, xlabel) in zip(axes, panels):
        xs = [float(p[key]) for p in points]
        ys = [float(p["loss"]) for p in points]
        ax.plot(xs, ys, "o", color="C0", label="measured")
        for p, x, y in zip(points, xs, ys):
            ax.annotate(str(p.get("label", "")), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        fit = fits.get(key)
        x_end = max(xs)
        if predicted is not None:
            x_end = max(x_end, float(predicted[key]))
        if fit is not None:
            line_x = np.geomspace(min(xs), x_end, 100)
            ax.plot(line_x, [fit.predict(x) for x in line_x], "--", color="C1",
                    label=f"fit: L = {fit.a:.3g} x^-{fit.alpha:.3f} (r2 {fit.r2:.3f})")
        if predicted is not None:
            x_pred = float(predicted[key])
            y_pred = fit.predict(x_pred) if fit is not None else predicted.get("loss")
            label = str(predicted.get("label", "next"))
            if y_pred is not None:
                ax.plot([x_pred], [y_pred], "o", markerfacecolor="none", markeredgecolor="C3",
                        markersize=9, markeredgewidth=1.5, label=f"predicted ({label})")
            measured = predicted.get("measured_loss")
            if measured is not None:
                ax.plot([x_pred], [measured], "o", color="C3", label=f"measured ({label})")
                ax.annotate(label, (x_pred, measured), textcoords="offset points", xytext=(5, -12), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Narrow sweeps span about a decade, so matplotlib labels minor ticks; keep them legible.
        ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=30)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    exponents = [f"alpha_{'N' if key == 'parameters' else 'C'} = {fits[key].alpha:.3f}"
                 for key, _ in panels if key in fits]
    fig.suptitle("Scaling: " + (", ".join(exponents) if exponents else "no fit"))
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def _number(value) -> float | None:
    """A plain float for JSON, or None (JSON has no NaN or infinity)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scaling_summary(points: list[dict], fits: dict[str, PowerLaw], predicted: dict | None, measured) -> dict:
    """The sweep's numbers as plain JSON-able values.

    predicted: {"parameters", "flops"} (and optionally "label", "loss"); predicted_loss is
    predicted["loss"] when given, else the parameters fit at predicted["parameters"].
    measured: the loss measured at the predicted size, as a float or a point dict with "loss",
    or None when it was not trained. error_percent = 100 * |predicted - measured| / measured;
    error_signed_percent keeps the sign (positive: the law predicted too high a loss).
    """
    def fit_numbers(key: str) -> tuple[float | None, float | None, float | None]:
        fit = fits.get(key)
        return (None, None, None) if fit is None else (_number(fit.alpha), _number(fit.a), _number(fit.r2))

    alpha_params, a_params, r2_params = fit_numbers("parameters")
    alpha_flops, a_flops, r2_flops = fit_numbers("flops")

    predicted_loss = predicted_loss_flops = None
    if predicted is not None:
        if predicted.get("loss") is not None:
            predicted_loss = _number(predicted["loss"])
        elif "parameters" in fits:
            predicted_loss = _number(fits["parameters"].predict(float(predicted["parameters"])))
        if "flops" in fits and predicted.get("flops") is not None:
            predicted_loss_flops = _number(fits["flops"].predict(float(predicted["flops"])))

    measured_loss = _number(measured.get("loss") if isinstance(measured, dict) else measured)
    error_percent = error_signed = None
    if predicted_loss is not None and measured_loss is not None and measured_loss > 0:
        error_signed = 100.0 * (predicted_loss - measured_loss) / measured_loss
        error_percent = abs(error_signed)

    return {
        "points": len(points),
        "alpha_params": alpha_params,
        "a_params": a_params,
        "r2_params": r2_params,
        "alpha_flops": alpha_flops,
        "a_flops": a_flops,
        "r2_flops": r2_flops,
        "predicted_label": None if predicted is None or predicted.get("label") is None else str(predicted["label"]),
        "predicted_parameters": None if predicted is None else _number(predicted.get("parameters")),
        "predicted_flops": None if predicted is None else _number(predicted.get("flops")),
        "predicted_loss": predicted_loss,
        "predicted_loss_flops": predicted_loss_flops,
        "measured_loss": measured_loss,
        "error_percent": error_percent,
        "error_signed_percent": error_signed,
    }
