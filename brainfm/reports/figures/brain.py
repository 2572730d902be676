"""Figures painted on the brain: values per parcel, the dominant expert, expert-weight maps."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from brainfm.reports.figures.base import (
    _CUTS_Z,
    EXPERT_COLOURS,
    _brain_background,
    figure_to_base64,
    new_figure,
)


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

