"""ROI mean signals of a BOLD run for several atlases at once, streaming the run once.

The BOLD series is never held whole: :mod:`brainfm.postproc.nifti_stream` inflates it a block
of volumes at a time, and each block is reduced at once to parcel sums for every atlas (one
sparse voxels-to-ROIs matrix per atlas, float64). Each atlas is resampled to the BOLD grid with
nearest neighbour; a voxel counts for a parcel when it lies in the brain mask and its signal is
finite and not constant over time (constant voxels are, in practice, outside the acquired field
of view: zero-filled after resampling to a template). For every parcel:

- coverage = (its voxels on the BOLD grid that count) / (all its voxels on the BOLD grid);
- parcels with coverage below ``min_coverage`` (or no counting voxel) get a NaN column and are
  listed in ``low_coverage``;
- the signal is the mean over the counting voxels (XCP-D averages over the parcel's voxels in
  the BOLD brain mask, which excludes the same out-of-view voxels).

Which voxels are constant is known only at the end of the run, so the sums run over every
parcel voxel in the mask, and a constant voxel's value, the same in every volume, is taken
off afterwards. Memory is the atlases, a few per-voxel vectors and one block of volumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import sparse

from brainfm.atlases import Atlas
from brainfm.errors import InputError, UsageError
from brainfm.postproc.nifti_stream import (
    READ_ERRORS,
    NiftiSeries,
    iter_volume_blocks,
    open_series,
)

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ParcelSignals:
    """ROI mean signals of one atlas for one run.

    Attributes
    ----------
    timeseries : numpy.ndarray, shape (T, N), float64
        Mean raw BOLD signal per ROI (NaN columns for low-coverage ROIs).
    roi_names : list of str
        ROI names in column order (the atlas table's order).
    coverage : numpy.ndarray, shape (N,)
        Fraction of each parcel's voxels (on the BOLD grid) inside the brain mask with a finite,
        non-constant signal.
    low_coverage : list of str
        Names of the ROIs set to NaN because their coverage is below the threshold.
    """

    timeseries: np.ndarray
    roi_names: list[str]
    coverage: np.ndarray
    low_coverage: list[str]


def _same_grid(shape_a: tuple, affine_a: np.ndarray, shape_b: tuple,
               affine_b: np.ndarray) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b,
                                                                     atol=1e-3)


def _load_mask(mask_file: Path, shape: tuple, affine: np.ndarray, bold_file: Path) -> np.ndarray:
    if not mask_file.is_file():
        raise InputError(f"brain mask {mask_file} does not exist")
    try:
        img = nib.load(mask_file)
        data = np.asanyarray(img.dataobj)
    except READ_ERRORS as err:
        raise InputError(
            f"cannot read brain mask {mask_file} ({type(err).__name__}: {err}); re-run or "
            "re-copy the preprocessing output"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or not _same_grid(data.shape, img.affine, shape, affine):
        raise InputError(
            f"brain mask {mask_file} (shape {data.shape}) is not on the grid of BOLD file "
            f"{bold_file} (shape {shape[:3]}, or a different affine); use the brain mask "
            "written for the same space and resolution as the BOLD run"
        )
    return np.asarray(data).reshape(-1, order="F") > 0


def _atlas_on_grid(atlas: Atlas, shape: tuple, affine: np.ndarray) -> np.ndarray:
    """Atlas labels on the BOLD grid (nearest neighbour), flattened in Fortran order."""
    try:
        img = nib.load(atlas.image)
        labels = np.asanyarray(img.dataobj)
    except READ_ERRORS as err:
        raise InputError(
            f"cannot read atlas image {atlas.image} of atlas {atlas.name} "
            f"({type(err).__name__}: {err}); reinstall brainfm or fix the atlas file"
        ) from err
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise InputError(
            f"atlas image {atlas.image} is not a 3-D label image (shape {labels.shape})"
        )
    if not _same_grid(labels.shape, img.affine, shape, affine):
        from nilearn.image import resample_to_img  # ~1 s of imports, only when resampling

        source = nib.Nifti1Image(np.asarray(labels, dtype=np.int32), img.affine)
        target = nib.Nifti1Image(np.zeros(shape[:3], dtype=np.uint8), affine)
        resampled = resample_to_img(source, target, interpolation="nearest",
                                    force_resample=True, copy_header=True)
        labels = np.asanyarray(resampled.dataobj)
    return np.rint(np.asarray(labels, dtype=np.float64)).astype(np.int64).reshape(-1, order="F")


def extract_roi_signals(bold_file: str | Path, atlases: list[Atlas],
                        mask_file: str | Path | None,
                        min_coverage: float = 0.5) -> dict[str, ParcelSignals]:
    """Mean BOLD signal of every parcel of several atlases, reading the BOLD run once.

    Parameters
    ----------
    bold_file : str or pathlib.Path
        Preprocessed 4-D BOLD run in the atlases' standard space (any grid; the atlases are
        resampled to it with nearest neighbour).
    atlases : list of Atlas
        Atlases to apply (distinct ``label`` values).
    mask_file : str or pathlib.Path or None
        Brain mask on the BOLD grid (e.g. fMRIPrep's ``desc-brain_mask``). ``None``: every
        voxel with finite values counts.
    min_coverage : float, optional
        Minimum fraction (0-1) of a parcel's voxels that must count (default 0.5).

    Returns
    -------
    dict of str to ParcelSignals
        Keyed by the atlas' BIDS label (``atlas.label``), in the order given.

    Raises
    ------
    InputError
        The BOLD file or mask is missing, unreadable or truncated; the BOLD is not 4-D; the mask
        is on another grid; there are NaN or infinite values inside the mask; an atlas image is
        unreadable.
    UsageError
        ``min_coverage`` outside [0, 1], no atlas, or repeated atlas labels.
    """
    if not 0.0 <= float(min_coverage) <= 1.0:
        raise UsageError(f"--min-coverage must be between 0 and 1, got {min_coverage}")
    if not atlases:
        raise UsageError("no atlas given for ROI signal extraction")
    labels_seen = [atlas.label for atlas in atlases]
    if len(set(labels_seen)) != len(labels_seen):
        raise UsageError(f"atlas labels must be distinct, got {labels_seen}")
    bold_file = Path(bold_file)
    series = open_series(bold_file)
    shape, affine = series.shape, series.affine
    if mask_file is None:
        mask = np.ones(series.n_voxels, dtype=bool)
    else:
        mask = _load_mask(Path(mask_file), shape, affine, bold_file)
    columns, widths = [], []
    for atlas in atlases:
        grid_labels = _atlas_on_grid(atlas, shape, affine)
        index = atlas.labels["index"].to_numpy(dtype=np.int64)
        size = int(max(grid_labels.max(initial=0), index.max(initial=0))) + 1
        lut = np.full(size, -1, dtype=np.int64)
        lut[index] = np.arange(len(index))
        column = lut[np.clip(grid_labels, 0, None)]
        column[grid_labels <= 0] = -1
        columns.append(column)
        widths.append(len(index))
    candidates = mask & np.any(np.stack(columns) >= 0, axis=0)

    sums, lowest, highest = _parcel_sums(series, columns, widths, np.flatnonzero(candidates))
    finite = np.isfinite(lowest) & np.isfinite(highest)
    if mask_file is not None:
        bad = mask & ~finite
        if bad.any():
            first = np.unravel_index(int(np.flatnonzero(bad)[0]), shape[:3], order="F")
            raise InputError(
                f"BOLD file {bold_file} has NaN or infinite values in {int(bad.sum())} voxel(s) "
                f"inside the brain mask {mask_file} (first at voxel {tuple(map(int, first))}); "
                "re-run the preprocessing, or check that the mask belongs to this run"
            )
    elif (candidates & ~finite).any():
        # without a mask, voxels with a non-finite value anywhere are left out; their finite
        # values are already in the sums, so read the run again without them (rare: a
        # preprocessed run comes with its mask)
        candidates &= finite
        sums, lowest, highest = _parcel_sums(series, columns, widths, np.flatnonzero(candidates))
    valid = mask & finite & (highest > lowest)
    constant = candidates & ~valid  # finite and constant: their value is in every row of sums

    results: dict[str, ParcelSignals] = {}
    for atlas, column, total_sums in zip(atlases, columns, sums, strict=True):
        names = atlas.labels["name"].astype(str).tolist()
        n_rois = len(names)
        in_parcel = column >= 0
        total = np.bincount(column[in_parcel], minlength=n_rois)
        counted = np.bincount(column[in_parcel & valid], minlength=n_rois)
        coverage = np.divide(counted, total, out=np.zeros(n_rois), where=total > 0)
        low = (coverage < min_coverage) | (counted == 0)
        held = constant & in_parcel
        total_sums -= np.bincount(column[held], weights=lowest[held].astype(np.float64),
                                  minlength=n_rois)
        timeseries = np.divide(total_sums, counted, out=np.full_like(total_sums, np.nan),
                               where=counted > 0)
        timeseries[:, low] = np.nan
        low_names = [name for name, flag in zip(names, low, strict=True) if flag]
        if low_names:
            LOGGER.info("%s, atlas %s: %d of %d ROIs below %.0f%% coverage", bold_file.name,
                        atlas.label, len(low_names), len(names), 100 * min_coverage)
        results[atlas.label] = ParcelSignals(
            timeseries=timeseries, roi_names=names, coverage=coverage, low_coverage=low_names)
    return results


def _parcel_sums(series: NiftiSeries, columns: list[np.ndarray], widths: list[int],
                 voxels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One pass over the run: per-atlas parcel sums over ``voxels``, per-voxel min and max.

    ``columns[a]`` maps each voxel to its parcel's column in atlas ``a`` (-1: none) and
    ``widths[a]`` is the atlas' number of ROIs. Non-finite values of ``voxels`` are summed as 0
    (the caller leaves such voxels out).

    Returns
    -------
    sums : list of ndarray of shape (T, N_atlas), float64
        Sum of the values of the atlas' parcel voxels among ``voxels``, per volume.
    lowest, highest : ndarray of shape (V,)
        Minimum and maximum of every voxel over time (NaN when it is NaN at some time).
    """
    operators = []
    for column, width in zip(columns, widths, strict=True):
        inside = column[voxels] >= 0
        operators.append(sparse.csr_matrix(
            (np.ones(int(inside.sum())), (column[voxels][inside], np.flatnonzero(inside))),
            shape=(width, voxels.size)))
    sums = [np.zeros((series.n_volumes, w)) for w in widths]
    lowest = np.full(series.n_voxels, np.inf)
    highest = np.full(series.n_voxels, -np.inf)
    for start, block in iter_volume_blocks(series):
        stop = start + block.shape[0]
        block_low, block_high = block.min(axis=0), block.max(axis=0)
        np.minimum(lowest, block_low, out=lowest)
        np.maximum(highest, block_high, out=highest)
        values = block[:, voxels].astype(np.float64).T  # (U, t)
        odd = ~(np.isfinite(block_low[voxels]) & np.isfinite(block_high[voxels]))
        if odd.any():
            values[odd] = np.nan_to_num(values[odd], nan=0.0, posinf=0.0, neginf=0.0)
        for total, operator in zip(sums, operators, strict=True):
            total[start:stop] = (operator @ values).T
    return sums, lowest, highest


def save_parcel_signals(path: Path, signals: dict[str, ParcelSignals]) -> Path:
    """Store extracted signals of several atlases in one ``.npz`` (no pickled objects)."""
    arrays: dict[str, np.ndarray] = {"atlases": np.array(sorted(signals), dtype=str)}
    for label, sig in signals.items():
        arrays[f"{label}__timeseries"] = np.asarray(sig.timeseries, dtype=np.float64)
        arrays[f"{label}__roi_names"] = np.array(sig.roi_names, dtype=str)
        arrays[f"{label}__coverage"] = np.asarray(sig.coverage, dtype=np.float64)
        arrays[f"{label}__low_coverage"] = np.array(sig.low_coverage, dtype=str)
    np.savez(path, **arrays)
    return path


def load_parcel_signals(path: str | Path) -> dict[str, ParcelSignals]:
    """Read signals written by :func:`save_parcel_signals`."""
    with np.load(path, allow_pickle=False) as data:
        return {
            str(label): ParcelSignals(
                timeseries=data[f"{label}__timeseries"],
                roi_names=[str(n) for n in data[f"{label}__roi_names"]],
                coverage=data[f"{label}__coverage"],
                low_coverage=[str(n) for n in data[f"{label}__low_coverage"]],
            )
            for label in data["atlases"]
        }
