"""An fMRIPrep-style confounds table for the minimal preprocessing.

Columns, named and computed as fMRIPrep names and computes them (``n/a`` where a derivative
has no previous volume):

- ``trans_x .. rot_z`` (mm, radians; see :mod:`brainfm.preproc.realign` for the frame) with
  ``_derivative1`` (backward difference), ``_power2`` and ``_derivative1_power2``;
- ``framewise_displacement`` (Power et al. 2012, 50 mm head radius) and ``rmsd`` (Jenkinson
  1999, 80 mm sphere);
- ``global_signal``, ``white_matter`` and ``csf`` (means over the brain mask and the template's
  white-matter and CSF masks) with the same four expansions;
- ``dvars`` and ``std_dvars`` (Nichols 2013, computed as nipype's ``compute_dvars`` behind
  fMRIPrep's ``ComputeDVARS``: median scaled to 1000, robust SD from the lower-interpolated
  quartiles, zero-variance voxels removed, lag-1 Yule-Walker autocorrelation);
- anatomical CompCor, as fMRIPrep's nipype ``ACompCor`` call: data high-passed by a discrete
  cosine basis (128 s) and variance-normalised, principal components kept up to 50 % of the
  variance, for the CSF mask (``c_comp_cor_XX``), the white-matter mask (``w_comp_cor_XX``) and
  both (``a_comp_cor_XX``), with the JSON metadata fMRIPrep writes (``Method``, ``Mask``,
  ``Retained``, ``SingularValue``, ``VarianceExplained``, ``CumulativeVarianceExplained``);
- ``cosine00 ..``: the discrete cosine high-pass basis.

Differences from fMRIPrep: everything is computed on the standard-space BOLD with masks taken
from the template (fMRIPrep uses the subject's own tissue segmentation in BOLD space);
non-steady-state volumes are not detected and no ``motion_outlier`` columns are written (brainfm
censors from the framewise displacement itself); there is no tCompCor.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainfm.preproc.realign import MOTION_COLUMNS, framewise_displacement

#: High-pass period (s) of the CompCor cosine basis (fMRIPrep's default).
COSINE_PERIOD_S = 128.0
#: Fraction of variance the retained CompCor components explain (fMRIPrep's default).
COMPCOR_VARIANCE = 0.5


def expand(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """A column with its derivative, square and squared derivative (fMRIPrep's names).

    Parameters
    ----------
    name : str
        Base column name.
    values : numpy.ndarray
        (T,) values.

    Returns
    -------
    dict of str to numpy.ndarray
        ``name``, ``name_derivative1`` (NaN first), ``name_power2``,
        ``name_derivative1_power2``.
    """
    x = np.asarray(values, dtype=np.float64)
    d = np.concatenate([[np.nan], np.diff(x)])
    return {
        name: x,
        f"{name}_derivative1": d,
        f"{name}_power2": x**2,
        f"{name}_derivative1_power2": d**2,
    }


def dvars(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS of in-mask BOLD data.

    Parameters
    ----------
    data : numpy.ndarray
        (n_voxels, T) BOLD inside the brain mask.

    Returns
    -------
    dvars : numpy.ndarray
        (T,) DVARS of the data scaled to a median of 1000 (NaN first).
    std_dvars : numpy.ndarray
        (T,) DVARS divided by its expected value under temporal stationarity (NaN first).
    """
    x = np.asarray(data, dtype=np.float32)
    median = float(np.median(x))
    if median != 0:
        x = x / np.float32(median) * np.float32(1000.0)
    sd = (np.percentile(x, 75, axis=1, method="lower")
          - np.percentile(x, 25, axis=1, method="lower")) / 1.349
    keep = sd > 0.0
    x, sd = x[keep].astype(np.float64), sd[keep].astype(np.float64)
    n_vol = data.shape[1]
    if x.shape[0] == 0 or n_vol < 2:
        nan = np.full(n_vol, np.nan)
        return nan, nan.copy()
    c = x - x.mean(axis=1, keepdims=True)
    r0 = (c * c).sum(axis=1)
    r1 = (c[:, 1:] * c[:, :-1]).sum(axis=1)
    ar1 = np.divide(r1, r0, out=np.zeros_like(r0), where=r0 > 0)
    diff_sd = np.sqrt(np.clip(2.0 * (1.0 - ar1), 0.0, None)) * sd
    d = np.sqrt(np.square(np.diff(x, axis=1)).mean(axis=0))
    expected = diff_sd.mean()
    std = d / expected if expected > 0 else np.full_like(d, np.nan)
    return np.concatenate([[np.nan], d]), np.concatenate([[np.nan], std])


def _mask_img(mask: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(mask.astype(np.uint8), affine)


def compcor(
    bold: np.ndarray,
    affine: np.ndarray,
    masks: dict[str, np.ndarray],
    tr: float,
) -> tuple[dict[str, np.ndarray], dict[str, dict], np.ndarray]:
    """Anatomical CompCor as fMRIPrep runs it (nipype ``compute_noise_components``).

    Parameters
    ----------
    bold : numpy.ndarray
        (X, Y, Z, T) BOLD series.
    affine : numpy.ndarray
        4 x 4 affine of the grid.
    masks : dict of str to numpy.ndarray
        ``{"CSF": ..., "WM": ..., "combined": ...}`` bool masks on the grid.
    tr : float
        Repetition time (s).

    Returns
    -------
    columns : dict of str to numpy.ndarray
        ``c_comp_cor_XX`` (CSF), ``w_comp_cor_XX`` (WM), ``a_comp_cor_XX`` (combined).
    metadata : dict
        JSON sidecar entries keyed by column.
    cosines : numpy.ndarray
        (T, k) discrete cosine basis (without the constant).
    """
    from nipype.algorithms.confounds import compute_noise_components

    prefixes = {"CSF": "c", "WM": "w", "combined": "a"}
    columns: dict[str, np.ndarray] = {}
    metadata: dict[str, dict] = {}
    cosines = np.zeros((bold.shape[3], 0))
    for name, prefix in prefixes.items():
        mask = masks[name]
        if int(mask.sum()) < 2:
            continue
        comps, basis, meta = compute_noise_components(
            bold, [_mask_img(mask, affine)], components_criterion=COMPCOR_VARIANCE,
            filter_type="cosine", period_cut=COSINE_PERIOD_S, repetition_time=float(tr),
            failure_mode="NaN", mask_names=[name],
        )
        if basis is not None and np.size(basis):
            cosines = np.asarray(basis, dtype=np.float64).reshape(bold.shape[3], -1)
        comps = np.asarray(comps, dtype=np.float64).reshape(bold.shape[3], -1)
        for i in range(comps.shape[1]):
            column = f"{prefix}_comp_cor_{i:02d}"
            columns[column] = comps[:, i]
            metadata[column] = {
                "CumulativeVarianceExplained": float(meta["cumulative_variance_explained"][i]),
                "Mask": name,
                "Method": "aCompCor",
                "Retained": True,
                "SingularValue": float(meta["singular_value"][i]),
                "VarianceExplained": float(meta["variance_explained"][i]),
            }
    return columns, metadata, cosines


def compute_confounds(
    bold_file: str | Path,
    mask_file: str | Path,
    wm_mask: np.ndarray,
    csf_mask: np.ndarray,
    motion_params: np.ndarray,
    rmsd: np.ndarray,
    tr: float,
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The confounds table of a standard-space BOLD run.

    Parameters
    ----------
    bold_file : str or pathlib.Path
        The standard-space BOLD series (NIfTI).
    mask_file : str or pathlib.Path
        Its brain mask.
    wm_mask, csf_mask : numpy.ndarray
        Template white-matter and CSF masks on the same grid (intersected with the brain
        mask here).
    motion_params : numpy.ndarray
        (T, 6) motion parameters (mm, radians).
    rmsd : numpy.ndarray
        (T,) relative RMS displacement (NaN first).
    tr : float
        Repetition time (s).

    Returns
    -------
    table : pandas.DataFrame
        One row per volume (NaN where fMRIPrep writes ``n/a``).
    metadata : dict
        The JSON sidecar (CompCor entries keyed by column).
    """
    img = nib.load(str(bold_file))
    bold = np.asarray(img.dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(str(mask_file)).dataobj) > 0
    wm = wm_mask & brain
    csf = csf_mask & brain
    n = bold.shape[3]
    cols: dict[str, np.ndarray] = {}
    cols.update(expand("global_signal", bold[brain].mean(axis=0, dtype=np.float64)))
    for name, mask in (("csf", csf), ("white_matter", wm)):
        series = bold[mask].mean(axis=0, dtype=np.float64) if mask.any() else np.full(n, np.nan)
        cols.update(expand(name, series))
    cols["dvars"], cols["std_dvars"] = dvars(bold[brain])
    cols["framewise_displacement"] = framewise_displacement(motion_params)
    cols["rmsd"] = np.asarray(rmsd, dtype=np.float64)
    comp_cols, metadata, cosines = compcor(
        bold, img.affine, {"CSF": csf, "WM": wm, "combined": csf | wm}, tr
    )
    cols.update(comp_cols)
    for i in range(cosines.shape[1]):
        cols[f"cosine{i:02d}"] = cosines[:, i]
    for j, name in enumerate(MOTION_COLUMNS):
        cols.update(expand(name, motion_params[:, j]))
    return pd.DataFrame(cols), metadata
