"""Functional connectivity of ROI time series."""

from __future__ import annotations

import numpy as np


def pearson_connectivity(timeseries: np.ndarray) -> np.ndarray:
    """Pearson correlation between every pair of ROIs, ignoring unusable ROIs.

    Parameters
    ----------
    timeseries : numpy.ndarray, shape (T, N)
        ROI time series (volumes in rows).

    Returns
    -------
    numpy.ndarray, shape (N, N), float64
        Symmetric correlation matrix with 1 on the diagonal. The row and column of an ROI that
        has any non-finite value or zero variance are NaN (its diagonal too); with fewer than
        2 volumes every entry is NaN.
    """
    x = np.asarray(timeseries, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"timeseries must be a (volumes, ROIs) array, got shape {x.shape}")
    n_vols, n_rois = x.shape
    out = np.full((n_rois, n_rois), np.nan)
    if n_vols < 2:
        return out
    usable = np.all(np.isfinite(x), axis=0)
    centred = x[:, usable] - x[:, usable].mean(axis=0)
    norms = np.sqrt(np.sum(centred**2, axis=0))
    nonconstant = norms > 1e-12 * np.maximum(1.0, np.abs(x[:, usable]).max(axis=0, initial=0))
    good = np.flatnonzero(usable)[nonconstant]
    z = centred[:, nonconstant] / norms[nonconstant]
    corr = np.clip(z.T @ z, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    out[np.ix_(good, good)] = corr
    return out


def fisher_z(r: np.ndarray, clip: float = 1.0 - 1e-7) -> np.ndarray:
    """Fisher r-to-z transform, ``arctanh(r)``, with ``|r|`` clipped below 1.

    Parameters
    ----------
    r : numpy.ndarray
        Correlations in [-1, 1]; NaN stays NaN.
    clip : float, optional
        ``|r|`` is limited to this value first so that ``r = 1`` (the diagonal) gives a finite
        value (``arctanh(1 - 1e-7)`` is about 8.4); analyses normally use the off-diagonal
        entries only.

    Returns
    -------
    numpy.ndarray
        Same shape as ``r``.
    """
    values = np.asarray(r, dtype=np.float64)
    return np.arctanh(np.clip(values, -clip, clip))
