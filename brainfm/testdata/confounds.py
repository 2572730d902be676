"""An fMRIPrep-style confounds table computed from the written BOLD data.

Column names and conventions follow fMRIPrep (``desc-confounds_timeseries.tsv``): derivative
columns start with ``n/a``; ``framewise_displacement``, ``dvars``, ``std_dvars`` and ``rmsd``
too. The JSON sidecar describes the CompCor components the way fMRIPrep does (``Method``,
``Mask``, ``Retained``, ``SingularValue``, ``VarianceExplained``,
``CumulativeVarianceExplained``), which is what :func:`nilearn.interfaces.fmriprep.load_confounds`
reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainfm.preproc.confounds import expand
from brainfm.preproc.realign import MOTION_COLUMNS, framewise_displacement
from brainfm.testdata.motion import relative_rms

N_ACOMPCOR = 6
N_CCOMPCOR = 5
N_WCOMPCOR = 5
#: High-pass period (s) of the cosine basis, as in fMRIPrep.
COSINE_PERIOD_S = 128.0


def cosine_basis(n: int, tr: float, period_cut: float = COSINE_PERIOD_S) -> np.ndarray:
    """Discrete cosine drift regressors as fMRIPrep writes them (``cosine00``, ...).

    Parameters
    ----------
    n : int
        Number of volumes.
    tr : float
        Repetition time in seconds.
    period_cut : float
        Longest period (s) kept by the implied high-pass filter.

    Returns
    -------
    numpy.ndarray
        (n, k) regressors, k = floor(2 n TR / period_cut) - 1 (possibly 0), without the
        constant column (nipype's ``_cosine_drift`` without its last column).
    """
    order = int(np.floor(2 * n * tr / period_cut))
    t = np.arange(n)
    cols = [np.sqrt(2.0 / n) * np.cos(np.pi / n * (t + 0.5) * k) for k in range(1, order)]
    return np.column_stack(cols) if cols else np.zeros((n, 0))


def dvars(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (Nichols 2013), as nipype's ``compute_dvars``.

    Parameters
    ----------
    data : numpy.ndarray
        (n_voxels, n_volumes) in-mask BOLD.

    Returns
    -------
    dvars : numpy.ndarray
        (n_volumes,) DVARS after scaling the data's median to 1000; first value NaN.
    std_dvars : numpy.ndarray
        (n_volumes,) DVARS divided by its expected value under temporal stationarity.
    """
    m = data[data.std(axis=1) > 0]
    scale = 1000.0 / float(np.median(m))
    n_vox, n_vol = m.shape
    diff_sd = np.empty(n_vox)
    sq = np.zeros(n_vol - 1)
    for i in range(0, n_vox, 16384):  # in chunks, to bound memory
        x = m[i : i + 16384].astype(np.float64) * scale
        sd = (np.percentile(x, 75, axis=1) - np.percentile(x, 25, axis=1)) / 1.349
        c = x - x.mean(axis=1, keepdims=True)
        r0 = (c * c).sum(axis=1)
        r1 = (c[:, 1:] * c[:, :-1]).sum(axis=1)
        ar1 = np.divide(r1, r0, out=np.zeros_like(r0), where=r0 > 0)
        diff_sd[i : i + 16384] = np.sqrt(np.clip(2.0 * (1.0 - ar1), 0.0, None)) * sd
        sq += np.square(np.diff(x, axis=1)).sum(axis=0)
    d = np.sqrt(sq / max(n_vox, 1))
    expected = diff_sd.mean()
    std = d / expected if expected > 0 else np.full_like(d, np.nan)
    return np.concatenate([[np.nan], d]), np.concatenate([[np.nan], std])


def compcor(data: np.ndarray, highpass: np.ndarray, n_components: int) -> tuple[np.ndarray, dict]:
    """Anatomical CompCor: principal components of high-passed, variance-normalised series.

    Parameters
    ----------
    data : numpy.ndarray
        (n_voxels, n_volumes) BOLD inside the noise mask.
    highpass : numpy.ndarray
        (n_volumes, k) drift regressors removed first (a constant is added).
    n_components : int
        Number of components kept.

    Returns
    -------
    components : numpy.ndarray
        (n_volumes, n_components) unit-norm components (zero-padded if fewer exist).
    meta : dict
        ``SingularValue``, ``VarianceExplained`` and ``CumulativeVarianceExplained`` lists.
    """
    y = data.astype(np.float64)  # (voxels, volumes)
    n = y.shape[1]
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), highpass]))
    y -= (y @ q) @ q.T
    sd = y.std(axis=1)
    y = y[sd > 0] / sd[sd > 0, None]
    comps = np.zeros((n, n_components))
    sv = np.zeros(n_components)
    if y.shape[0]:
        # Left singular vectors of the (volumes x voxels) matrix from its small Gram matrix.
        evals, evecs = np.linalg.eigh(y.T @ y)
        order = np.argsort(evals)[::-1]
        evals = np.clip(evals[order], 0.0, None)
        evecs = evecs[:, order]
        k = min(n_components, int(np.count_nonzero(evals > evals[0] * 1e-12)))
        comps[:, :k] = evecs[:, :k] * np.sign(evecs[0, :k] + (evecs[0, :k] == 0))
        sv[:k] = np.sqrt(evals[:k])
        total = float(evals.sum())
    else:
        total = 0.0
    var = sv**2 / total if total > 0 else np.zeros(n_components)
    return comps, {
        "SingularValue": sv.tolist(),
        "VarianceExplained": var.tolist(),
        "CumulativeVarianceExplained": np.cumsum(var).tolist(),
    }


def build_confounds(
    brain: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    motion: np.ndarray,
    tr: float,
) -> tuple[pd.DataFrame, dict]:
    """Compute the confounds table and its JSON sidecar from the written BOLD.

    Parameters
    ----------
    brain : numpy.ndarray
        (n_brain_voxels, n_volumes) BOLD inside the brain mask, exactly as written.
    wm : numpy.ndarray
        (n_wm_voxels, n_volumes) BOLD inside the white-matter-like mask.
    csf : numpy.ndarray
        (n_csf_voxels, n_volumes) BOLD inside the CSF-like mask.
    motion : numpy.ndarray
        (n_volumes, 6) motion parameters (mm, radians), :data:`MOTION_COLUMNS` order.
    tr : float
        Repetition time in seconds.

    Returns
    -------
    table : pandas.DataFrame
        One row per volume; NaN where fMRIPrep writes ``n/a``.
    meta : dict
        The JSON sidecar (CompCor metadata keyed by column name).
    """
    n = motion.shape[0]
    cols: dict[str, np.ndarray] = {}
    cols.update(expand("global_signal", brain.mean(axis=0, dtype=np.float64)))
    cols.update(expand("csf", csf.mean(axis=0, dtype=np.float64)))
    cols.update(expand("white_matter", wm.mean(axis=0, dtype=np.float64)))
    dv, std_dv = dvars(brain)
    cols["std_dvars"] = std_dv
    cols["dvars"] = dv
    cols["framewise_displacement"] = framewise_displacement(motion)
    cols["rmsd"] = relative_rms(motion)
    cosines = cosine_basis(n, tr)
    meta: dict[str, dict] = {}
    for prefix, data, mask, k in (
        ("c", csf, "CSF", N_CCOMPCOR),
        ("w", wm, "WM", N_WCOMPCOR),
        ("a", np.concatenate([csf, wm], axis=0), "combined", N_ACOMPCOR),
    ):
        comps, info = compcor(data, cosines, k)
        for i in range(k):
            name = f"{prefix}_comp_cor_{i:02d}"
            cols[name] = comps[:, i]
            meta[name] = {
                "CumulativeVarianceExplained": info["CumulativeVarianceExplained"][i],
                "Mask": mask,
                "Method": "aCompCor",
                "Retained": True,
                "SingularValue": info["SingularValue"][i],
                "VarianceExplained": info["VarianceExplained"][i],
            }
    for i in range(cosines.shape[1]):
        cols[f"cosine{i:02d}"] = cosines[:, i]
    for j, name in enumerate(MOTION_COLUMNS):
        cols.update(expand(name, motion[:, j]))
    return pd.DataFrame(cols), meta


def write_confounds_tsv(table: pd.DataFrame, path: object) -> None:
    """Write a confounds table as fMRIPrep does: tab-separated, ``n/a`` for missing.

    Parameters
    ----------
    table : pandas.DataFrame
        The table from :func:`build_confounds`.
    path : str or os.PathLike
        Destination ``.tsv``.
    """
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.10g")
