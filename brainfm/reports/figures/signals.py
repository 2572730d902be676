"""Figures of a run's signals: ROI carpets, framewise displacement, connectivity, design."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from brainfm.reports.figures.base import (
    _POINT,
    figure_to_base64,
    new_figure,
)


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
