"""Report figures: matplotlib and nilearn plots returned as base64-encoded PNG.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, so it is
safe in worker processes without a display) and returns the PNG as a base64 string, ready for an
``<img src="data:image/png;base64,...">`` tag (see :func:`img_tag`).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

#: Resolution of the report figures (dots per inch).
DPI = 90
#: Colours of the experts (dominant-expert map and legends), cycled beyond ten.
EXPERT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")
_POINT = "#3465a4"
_CORRECTED = "#cc5500"
_CUTS_Z = (-30, -12, 6, 24, 42, 60)


@functools.cache
def _brain_background() -> nib.Nifti1Image:
    """The bundled 2 mm MNI152NLin6Asym T1w brain, the grid of the bundled atlases.

    nilearn's default background is its 1 mm template: every parcel map is then resampled to
    1 mm (four times the time of the whole figure, and the participant level's largest memory
    peak, for no detail an atlas at 2-3 mm has).
    """
    from brainfm.preproc.templates import template_t1w_file

    return nib.load(template_t1w_file())


def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) with an Agg canvas attached, independent of pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_to_base64(fig: Figure, dpi: int = DPI) -> str:
    """Render a figure to PNG and return it base64-encoded (ASCII).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    dpi : int
        Resolution.

    Returns
    -------
    str
        Base64 of the PNG bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def img_tag(b64_png: str, alt: str, css_class: str = "figure") -> str:
    """An ``<img>`` element holding a base64 PNG inline (no external file).

    Parameters
    ----------
    b64_png : str
        From :func:`figure_to_base64` (or any figure function of this module).
    alt : str
        Alternative text (escaped).
    css_class : str
        CSS class of the element.

    Returns
    -------
    str
        The HTML element.
    """
    return (f'<img class="{html.escape(css_class)}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{b64_png}">')


def _finite(*arrays: Any) -> tuple[np.ndarray, ...]:
    arrs = [np.asarray(a, dtype=float).ravel() for a in arrays]
    keep = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        keep &= np.isfinite(a)
    return tuple(a[keep] for a in arrs)


def _fit_line(ax: Any, x: np.ndarray, y: np.ndarray, colour: str, label: str | None = None
              ) -> None:
    if x.size >= 3 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + intercept, color=colour, lw=1.5, ls="--", label=label)


def _r(x: np.ndarray, y: np.ndarray) -> str:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return "r = n/a"
    return f"r = {np.corrcoef(x, y)[0, 1]:.2f}"


def _pretty(name: str) -> str:
    return name.replace("_", " ")


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


def paint_atlas(atlas_img: str | Any, atlas_table: pd.DataFrame, values: pd.Series,
                fill: float = 0.0) -> nib.Nifti1Image:
    """Paint one value per ROI into the atlas' parcels.

    Parameters
    ----------
    atlas_img : path or nibabel image
        3-D integer label image.
    atlas_table : pandas.DataFrame
        ``index`` (label value) and ``name`` (ROI name).
    values : pandas.Series
        Value per ROI name (ROIs not listed or NaN get ``fill``).
    fill : float
        Value of the background and of ROIs without a value.

    Returns
    -------
    nibabel.Nifti1Image
        A float32 image on the atlas grid.
    """
    img = nib.load(atlas_img) if not isinstance(atlas_img, nib.spatialimages.SpatialImage) \
        else atlas_img
    labels = np.asarray(img.dataobj).astype(np.int64)
    lut = np.full(int(max(labels.max(), atlas_table["index"].max())) + 1, fill, dtype=np.float32)
    named = values.reindex(atlas_table["name"].astype(str).to_numpy())
    for index, value in zip(atlas_table["index"].astype(int), named.to_numpy(dtype=float),
                            strict=True):
        if np.isfinite(value):
            lut[index] = value
    data = lut[np.clip(labels, 0, lut.size - 1)]
    data[labels <= 0] = fill
    return nib.Nifti1Image(data.astype(np.float32), img.affine)


def plot_dominant_expert(atlas_img: str | Any, atlas_table: pd.DataFrame,
                         weights: pd.DataFrame, title: str = "") -> str:
    """The most weighted RWMoE expert of each ROI, painted into the atlas.

    Parameters
    ----------
    atlas_img : path or nibabel image
        3-D label image of the atlas.
    atlas_table : pandas.DataFrame
        ``index`` and ``name`` of the ROIs.
    weights : pandas.DataFrame
        Index ROI names, columns ``expert_0 ..``: gate weights (NaN rows: ROI absent).
    title : str
        Figure title.

    Returns
    -------
    str
        Base64 PNG.
    """
    from nilearn import plotting

    n_experts = weights.shape[1]
    present = weights.notna().all(axis=1) & (weights.fillna(0).sum(axis=1) > 0)
    dominant = weights.fillna(-1).to_numpy().argmax(axis=1) + 1.0
    values = pd.Series(np.where(present, dominant, np.nan), index=weights.index)
    img = paint_atlas(atlas_img, atlas_table, values)
    colours = [EXPERT_COLOURS[k % len(EXPERT_COLOURS)] for k in range(n_experts)]
    fig = new_figure(9.5, 2.6)
    ax = fig.add_axes((0.0, 0.12, 1.0, 0.88))
    plotting.plot_roi(img, bg_img=_brain_background(), display_mode="z", cut_coords=_CUTS_Z,
                      axes=ax, figure=fig,
                      cmap=ListedColormap(colours), vmin=0.5, vmax=n_experts + 0.5,
                      colorbar=False, alpha=0.9, threshold=0.5, draw_cross=False,
                      title=title or None, black_bg=False)
    handles = [Patch(color=c, label=f"expert {k}") for k, c in enumerate(colours)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n_experts, 10), fontsize=8,
               frameon=False)
    return figure_to_base64(fig)


def plot_expert_weight_maps(atlas_img: str | Any, atlas_table: pd.DataFrame,
                            weights: pd.DataFrame) -> str:
    """Each expert's mean gate weight painted into the atlas (one row of slices per expert).

    Parameters
    ----------
    atlas_img : path or nibabel image
        3-D label image of the atlas.
    atlas_table : pandas.DataFrame
        ``index`` and ``name`` of the ROIs.
    weights : pandas.DataFrame
        Index ROI names, columns ``expert_0 ..``: mean gate weights in [0, 1].

    Returns
    -------
    str
        Base64 PNG.
    """
    from nilearn import plotting

    n_experts = weights.shape[1]
    vmax = float(np.nanmax(weights.to_numpy())) if np.isfinite(weights.to_numpy()).any() else 1.0
    fig = new_figure(9.5, 1.9 * n_experts)
    height = 1.0 / n_experts
    for k, column in enumerate(weights.columns):
        img = paint_atlas(atlas_img, atlas_table, weights[column])
        ax = fig.add_axes((0.0, 1.0 - (k + 1) * height, 1.0, height * 0.97))
        plotting.plot_stat_map(img, bg_img=_brain_background(), display_mode="z",
                               cut_coords=_CUTS_Z, axes=ax, figure=fig,
                               cmap="inferno", vmin=0.0, vmax=max(vmax, 1e-6),
                               symmetric_cbar=False, threshold=1e-6, colorbar=(k == 0),
                               draw_cross=False, annotate=(k == 0), black_bg=False,
                               title=f"expert {k}: mean weight", resampling_interpolation="nearest")
    return figure_to_base64(fig)


def plot_roi_carpet(data: Any, repetition_time: float, title: str = "",
                    censored: Sequence[bool] | None = None, ax: Any = None) -> str | None:
    """ROI-level carpet plot: every ROI's z-scored signal (rows) over time (columns).

    Parameters
    ----------
    data : array-like, shape (T, N)
        Signals; NaN rows (censored volumes placed back in the timeline) and NaN columns
        (absent ROIs) are drawn blank.
    repetition_time : float
        Seconds per volume (time axis).
    title : str
        Panel title.
    censored : sequence of bool, optional
        Volumes to mark as censored (red ticks above the carpet).
    ax : matplotlib axes, optional
        Draw into these axes and return ``None``; by default a new figure is made and returned
        as base64 PNG.

    Returns
    -------
    str or None
        Base64 PNG, or ``None`` when ``ax`` was given.
    """
    values = np.asarray(data, dtype=float)
    # ROIs with no data (below --min-coverage) are all-NaN columns: no warning for them
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        z = (values - mean) / np.where(std > 0, std, np.nan)
    own = ax is None
    if own:
        fig = new_figure(9.0, 2.8)
        ax = fig.add_subplot(1, 1, 1)
    n_time, n_roi = z.shape
    duration = n_time * float(repetition_time)
    image = ax.imshow(np.ma.masked_invalid(z.T), aspect="auto", cmap="gray", vmin=-2.5,
                      vmax=2.5, interpolation="nearest", extent=(0, duration, n_roi, 0))
    if censored is not None:
        marks = np.flatnonzero(np.asarray(censored, dtype=bool))
        for idx in marks:
            ax.axvspan(idx * repetition_time, (idx + 1) * repetition_time, ymin=0.97, ymax=1.0,
                       color="#d62728", lw=0)
    ax.set_ylabel("ROI")
    ax.set_xlabel("time (s)")
    ax.set_title(title, fontsize=10)
    if own:
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="z")
        return figure_to_base64(fig)
    return None


def plot_carpets(denoised: Any, repetition_time: float, retained: Sequence[bool] | None = None,
                 raw: Any = None, title: str = "") -> str:
    """Carpet plots before (raw ROI signals, when given) and after denoising.

    Parameters
    ----------
    denoised : array-like, shape (T_retained, N)
        Denoised signals of the retained volumes (the derivative time series).
    repetition_time : float
        Seconds per volume.
    retained : sequence of bool, optional
        Per acquired volume, whether it was kept (``len == T_acquired``, ``sum == T_retained``):
        the denoised rows are placed back in the timeline with gaps at censored volumes.
    raw : array-like, shape (T_acquired, N), optional
        The raw ROI signals before denoising.
    title : str
        Title of the figure.

    Returns
    -------
    str
        Base64 PNG.
    """
    den = np.asarray(denoised, dtype=float)
    censored = None
    if retained is not None:
        keep = np.asarray(retained, dtype=bool)
        if keep.sum() == den.shape[0]:
            full = np.full((keep.size, den.shape[1]), np.nan)
            full[keep] = den
            den, censored = full, ~keep
    panels = []
    if raw is not None:
        panels.append(("before denoising (raw ROI means)", np.asarray(raw, dtype=float)))
    panels.append(("after denoising" + (" (censored volumes blank)" if censored is not None
                                        else ""), den))
    fig = new_figure(9.0, 2.5 * len(panels) + 0.4)
    for i, (label, values) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        plot_roi_carpet(values, repetition_time, label, censored=censored, ax=ax)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return figure_to_base64(fig)


def plot_fd_trace(fd: Any, threshold: float | None, repetition_time: float,
                  outlier: Sequence[bool] | None = None, dummy: Sequence[bool] | None = None
                  ) -> str:
    """Framewise displacement over time with the censoring threshold and censored volumes.

    Parameters
    ----------
    fd : array-like
        Framewise displacement per volume (mm; NaN for the first).
    threshold : float or None
        The censoring threshold (not drawn when ``None`` or 0).
    repetition_time : float
        Seconds per volume.
    outlier, dummy : sequence of bool, optional
        Volumes censored for motion, and dummy volumes dropped.

    Returns
    -------
    str
        Base64 PNG.
    """
    values = np.asarray(fd, dtype=float)
    time = np.arange(values.size) * float(repetition_time)
    fig = new_figure(9.0, 2.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(time, values, color=_POINT, lw=1)
    if outlier is not None:
        idx = np.flatnonzero(np.asarray(outlier, dtype=bool))
        for i in idx:
            ax.axvspan(time[i] - repetition_time / 2, time[i] + repetition_time / 2,
                       color="#d62728", alpha=0.25, lw=0)
        ax.scatter(time[idx], np.nan_to_num(values[idx]), color="#d62728", s=12, zorder=3,
                   label=f"censored ({idx.size})")
    if dummy is not None:
        idx = np.flatnonzero(np.asarray(dummy, dtype=bool))
        if idx.size:
            ax.axvspan(time[idx[0]] - repetition_time / 2, time[idx[-1]] + repetition_time / 2,
                       color="0.6", alpha=0.3, lw=0, label=f"dummy ({idx.size})")
    if threshold:
        ax.axhline(threshold, color="#d62728", ls="--", lw=1, label=f"threshold {threshold} mm")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("FD (mm)")
    ax.set_xlim(0, max(time[-1], repetition_time) if time.size else 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_to_base64(fig)


def plot_connectivity(matrix: Any, labels: Sequence[str] | None = None, title: str = "",
                      networks: Sequence[str] | None = None) -> str:
    """A connectivity matrix (Pearson r) drawn with nilearn's ``plot_matrix``, ROIs in atlas
    order (grouped by network if given).

    Parameters
    ----------
    matrix : array-like, shape (N, N)
        Correlations (NaN for absent ROIs, drawn blank).
    labels : sequence of str, optional
        ROI names (tick labels when there are at most 40 ROIs).
    title : str
        Title.
    networks : sequence of str, optional
        Network of each ROI: ROIs are sorted by network and the blocks outlined.

    Returns
    -------
    str
        Base64 PNG.
    """
    mat = np.array(matrix, dtype=float)
    n = mat.shape[0]
    order = np.arange(n)
    if networks is not None and len(networks) == n:
        order = np.argsort(np.asarray(networks, dtype=str), kind="stable")
        mat = mat[np.ix_(order, order)]
    np.fill_diagonal(mat, np.nan)
    from nilearn.plotting import plot_matrix

    fig = new_figure(4.8, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    names = [str(labels[i]) for i in order] if labels is not None and n <= 40 else None
    plot_matrix(np.ma.masked_invalid(mat), labels=names, axes=ax, colorbar=True,
                cmap="RdBu_r", vmin=-1, vmax=1, auto_fit=names is not None)
    if names is None:
        ax.set_xlabel("ROI")
        ax.set_ylabel("ROI")
    if networks is not None and len(networks) == n:
        nets = np.asarray(networks, dtype=str)[order]
        edges = np.flatnonzero(nets[1:] != nets[:-1]) + 0.5
        for e in edges:
            ax.axhline(e, color="k", lw=0.5)
            ax.axvline(e, color="k", lw=0.5)
    ax.set_title(title, fontsize=10)
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


def plot_design_matrix(design: pd.DataFrame, title: str = "") -> str:
    """The confound regressors used for a run (nilearn's ``plot_design_matrix``).

    Parameters
    ----------
    design : pandas.DataFrame
        Volumes x regressors, as written in ``desc-preproc_design.tsv`` (missing values,
        e.g. the first derivative's first row, drawn as 0).
    title : str
        Figure title.

    Returns
    -------
    str
        Base64 PNG.
    """
    from nilearn.plotting import plot_design_matrix as nilearn_design_matrix

    n_columns = design.shape[1]
    fig = new_figure(min(9.5, 2.0 + 0.18 * n_columns), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    nilearn_design_matrix(design.astype(float).fillna(0.0), rescale=True, axes=ax)
    ax.set_ylabel("volume")
    ax.tick_params(axis="x", labelsize=6)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_to_base64(fig)
