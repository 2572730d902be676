"""Figures of predictions against known values: scatter, distribution, gap, QC, intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainfm.reports.figures.base import (
    _CORRECTED,
    _POINT,
    _finite,
    _fit_line,
    _pretty,
    _r,
    figure_to_base64,
    new_figure,
)


def plot_pred_vs_true(true: Any, pred: Any, pred_std: Any = None, target: str = "age",
                      metrics: dict[str, Any] | None = None, pred_corrected: Any = None) -> str:
    """Scatter of predicted against known values, with the identity line.

    The statistics and the legend sit beside the axes, never over a point, and the limits
    include every error bar.

    Parameters
    ----------
    true, pred : array-like
        Known and predicted values (rows with a NaN are left out).
    pred_std : array-like, optional
        Predictive standard deviation (drawn as error bars).
    target : str
        Target name (axis labels).
    metrics : dict, optional
        ``mae``, ``pearson_r``, ``r2``, ``n`` printed beside the axes.
    pred_corrected : array-like, optional
        Bias-corrected predictions, drawn as a second series.

    Returns
    -------
    str
        Base64 PNG.
    """
    return figure_to_base64(pred_vs_true_figure(true, pred, pred_std, target, metrics,
                                                pred_corrected))


def pred_vs_true_figure(true: Any, pred: Any, pred_std: Any = None, target: str = "age",
                        metrics: dict[str, Any] | None = None,
                        pred_corrected: Any = None) -> Figure:
    """The figure of :func:`plot_pred_vs_true` (for tests of its geometry)."""
    true_a = np.asarray(true, dtype=float)
    pred_a = np.asarray(pred, dtype=float)
    std_a = (np.asarray(pred_std, dtype=float) if pred_std is not None
             else np.full(true_a.shape, np.nan))
    t, p, s = _finite(true_a, pred_a, np.nan_to_num(std_a, nan=0.0))
    fig = new_figure(6.4, 4.2)
    ax = fig.add_axes((0.11, 0.12, 0.56, 0.78))
    ax.errorbar(t, p, yerr=s if np.any(s > 0) else None, fmt="o", ms=4, color=_POINT,
                ecolor="#9db3d3", elinewidth=0.8, alpha=0.85, label="predicted")
    _fit_line(ax, t, p, _POINT)
    values = [t, p - s, p + s]
    if pred_corrected is not None:
        tc, pc = _finite(true_a, np.asarray(pred_corrected, dtype=float))
        ax.scatter(tc, pc, s=14, marker="s", color=_CORRECTED, alpha=0.7,
                   label="bias-corrected")
        values += [tc, pc]
    flat = np.concatenate(values) if t.size else np.array([0.0, 1.0])
    lo, hi = float(flat.min()), float(flat.max())
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=1, label="identity")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"known {_pretty(target)}")
    ax.set_ylabel(f"predicted {_pretty(target)}")
    if metrics:
        def fmt(key: str) -> str:
            value = metrics.get(key)
            return "n/a" if value is None else f"{value:.2f}"
        ax.text(1.04, 1.0, f"n = {metrics.get('n', t.size)}\nMAE = {fmt('mae')}\n"
                           f"r = {fmt('pearson_r')}\nR² = {fmt('r2')}",
                transform=ax.transAxes, va="top", ha="left", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.legend(loc="lower left", bbox_to_anchor=(1.02, 0.0), fontsize=8, frameon=False)
    ax.set_title(f"{_pretty(target)}: predicted vs known", fontsize=11)
    ax.grid(alpha=0.3)
    return fig


def plot_distribution(pred: Any, target: str) -> str:
    """Histogram of predictions (for targets without known values).

    Parameters
    ----------
    pred : array-like
        Predicted values.
    target : str
        Target name.

    Returns
    -------
    str
        Base64 PNG.
    """
    (p,) = _finite(pred)
    fig = new_figure(4.6, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(p, bins=max(5, min(30, p.size // 2 or 1)), color=_POINT, alpha=0.85)
    ax.set_xlabel(f"predicted {_pretty(target)}")
    ax.set_ylabel("sessions")
    ax.set_title(f"{_pretty(target)}: predictions (no known values)", fontsize=11)
    ax.grid(alpha=0.3)
    return figure_to_base64(fig)


def plot_gap_vs_age(age: Any, gap: Any, gap_corrected: Any = None) -> str:
    """Brain-age gap against chronological age (before and after bias correction).

    Parameters
    ----------
    age, gap : array-like
        Chronological age and gap (predicted − chronological).
    gap_corrected : array-like, optional
        The bias-corrected gap (drawn in a second panel).

    Returns
    -------
    str
        Base64 PNG.
    """
    panels = [("brain-age gap", gap, _POINT)]
    if gap_corrected is not None:
        panels.append(("bias-corrected gap", gap_corrected, _CORRECTED))
    fig = new_figure(4.4 * len(panels), 3.6)
    for i, (title, values, colour) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        a, g = _finite(age, values)
        ax.scatter(a, g, s=16, color=colour, alpha=0.8)
        _fit_line(ax, a, g, colour)
        ax.axhline(0, color="0.4", lw=1)
        ax.set_xlabel("chronological age (years)")
        ax.set_ylabel("predicted − chronological (years)")
        ax.set_title(f"{title} ({_r(a, g)} with age)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_base64(fig)


def plot_qc_vs_predictions(table: pd.DataFrame, column: str, label: str) -> str:
    """Head motion and retained time against a prediction-derived value.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``mean_fd``, ``retained_seconds`` and ``column``).
    column : str
        The value on the y axis (a gap or a prediction).
    label : str
        Its axis label.

    Returns
    -------
    str
        Base64 PNG.
    """
    fig = new_figure(8.8, 3.4)
    for i, (qc_col, qc_label) in enumerate((("mean_fd", "mean framewise displacement (mm)"),
                                            ("retained_seconds", "retained time (s)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        x_all = table.get(qc_col, pd.Series(np.nan, index=table.index))
        x, y = _finite(x_all, table[column])
        ax.scatter(x, y, s=16, color=_POINT, alpha=0.8)
        _fit_line(ax, x, y, _POINT)
        ax.set_xlabel(qc_label)
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs {qc_label.split(' (')[0]} ({_r(x, y)})", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_base64(fig)


def plot_prediction_intervals(names: Sequence[str], values: Sequence[float],
                              stds: Sequence[float],
                              intervals: Sequence[tuple[float, float, float, float] | None]
                              | None = None) -> str:
    """One participant's predictions with their intervals.

    Parameters
    ----------
    names : sequence of str
        Target names.
    values, stds : sequence of float
        Predictions and their predictive standard deviations.
    intervals : sequence of (lower50, upper50, lower90, upper90) or None, optional
        Calibrated intervals (drawn instead of ±1 and ±2 standard deviations where given).

    Returns
    -------
    str
        Base64 PNG.
    """
    k = len(names)
    fig = new_figure(4.2 * k, 1.6)
    bounds = list(intervals) if intervals is not None else [None] * k
    for i, (name, value, std, box) in enumerate(zip(names, values, stds, bounds, strict=True)):
        ax = fig.add_subplot(1, k, i + 1)
        std = float(std) if np.isfinite(std) else 0.0
        lo50, hi50, lo90, hi90 = box if box is not None and np.all(np.isfinite(box)) else (
            value - std, value + std, value - 2 * std, value + 2 * std)
        ax.plot([lo90, hi90], [0, 0], color="#9db3d3", lw=6, solid_capstyle="butt")
        ax.plot([lo50, hi50], [0, 0], color=_POINT, lw=6, solid_capstyle="butt")
        ax.plot([value], [0], "o", color="white", mec="k", ms=8)
        ax.set_yticks([])
        span = max(value - lo90, hi90 - value, abs(value) * 0.05, 0.5) * 1.15
        ax.set_xlim(value - span, value + span)
        label = (f"{value:.1f} [{lo90:.1f}, {hi90:.1f}]" if box is not None
                 else f"{value:.1f} ± {std:.1f}")
        ax.set_title(f"{_pretty(name)}: {label}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_to_base64(fig)


