"""ROI mean signals of a BOLD run for several atlases at once, from a single read of the data.

The BOLD series is read once (nibabel, float32) and viewed as a (T, V) array. Each atlas is
resampled to the BOLD grid with nearest neighbour; a voxel counts for a parcel when it lies in
the brain mask and its signal is finite and not constant over time (constant voxels are, in
practice, outside the acquired field of view: zero-filled after resampling to a template). For
every parcel:

- coverage = (its voxels on the BOLD grid that count) / (all its voxels on the BOLD grid);
- parcels with coverage below ``min_coverage`` (or no counting voxel) get a NaN column and are
  listed in ``low_coverage``;
- the signal is the mean over the counting voxels (XCP-D averages over the parcel's voxels in
  the BOLD brain mask, which excludes the same out-of-view voxels).

All means of all atlases are computed together: one sparse (voxels x ROIs) averaging matrix per
atlas is applied to blocks of volumes in float64, so a 2 mm, 240-volume run takes well under a
second beyond the time nibabel needs to read it.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.image import resample_to_img
from scipy import sparse

from brainfm.atlases import Atlas
from brainfm.errors import InputError, UsageError

LOGGER = logging.getLogger(__name__)

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError,
                nib.spatialimages.HeaderDataError)

#: Target size (float64 values) of one block of volumes in the averaging step.
_BLOCK_VALUES = 8_000_000


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


def _load_bold(bold_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the BOLD run as float32 (X, Y, Z, T); return it with its affine."""
    if not bold_file.is_file():
        raise InputError(f"BOLD file {bold_file} does not exist")
    try:
        img = nib.load(bold_file)
    except _READ_ERRORS as err:
        raise InputError(
            f"cannot read BOLD file {bold_file} ({type(err).__name__}: {err}); it must be a "
            "NIfTI image (.nii or .nii.gz): re-run or re-copy the preprocessing output"
        ) from err
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise InputError(
            f"BOLD file {bold_file} has shape {img.shape}; a 4-D time series with at least 2 "
            "volumes is required (was a single volume or a mask given as BOLD?)"
        )
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except _READ_ERRORS as err:
        raise InputError(
            f"cannot read the voxel data of BOLD file {bold_file} ({type(err).__name__}: "
            f"{err}); the file is truncated or corrupt: re-run or re-copy the preprocessing "
            "output"
        ) from err
    return data, img.affine


def _load_mask(mask_file: Path, shape: tuple, affine: np.ndarray, bold_file: Path) -> np.ndarray:
    if not mask_file.is_file():
        raise InputError(f"brain mask {mask_file} does not exist")
    try:
        img = nib.load(mask_file)
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as err:
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
    except _READ_ERRORS as err:
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
    data, affine = _load_bold(bold_file)
    shape = data.shape
    n_vols = shape[3]
    flat = data.reshape(-1, n_vols, order="F").T  # (T, V), C-contiguous for nibabel's F order
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    n_vox = flat.shape[1]

    lowest = flat.min(axis=0)
    highest = flat.max(axis=0)
    finite = np.isfinite(lowest) & np.isfinite(highest)
    if mask_file is None:
        mask = np.ones(n_vox, dtype=bool)
    else:
        mask = _load_mask(Path(mask_file), shape, affine, bold_file)
        bad = mask & ~finite
        if bad.any():
            first = np.unravel_index(int(np.flatnonzero(bad)[0]), shape[:3], order="F")
            raise InputError(
                f"BOLD file {bold_file} has NaN or infinite values in {int(bad.sum())} voxel(s) "
                f"inside the brain mask {mask_file} (first at voxel {tuple(map(int, first))}); "
                "re-run the preprocessing, or check that the mask belongs to this run"
            )
    valid = mask & finite & (highest > lowest)

    plans = []
    used_any = np.zeros(n_vox, dtype=bool)
    for atlas in atlases:
        grid_labels = _atlas_on_grid(atlas, shape, affine)
        index = atlas.labels["index"].to_numpy(dtype=np.int64)
        names = atlas.labels["name"].astype(str).tolist()
        n_rois = len(index)
        size = int(max(grid_labels.max(initial=0), index.max(initial=0))) + 1
        lut = np.full(size, -1, dtype=np.int64)
        lut[index] = np.arange(n_rois)
        column = lut[np.clip(grid_labels, 0, None)]
        column[grid_labels <= 0] = -1
        in_parcel = column >= 0
        total = np.bincount(column[in_parcel], minlength=n_rois)
        counted = np.bincount(column[in_parcel & valid], minlength=n_rois)
        coverage = np.divide(counted, total, out=np.zeros(n_rois), where=total > 0)
        low = (coverage < min_coverage) | (counted == 0)
        used = in_parcel & valid
        used[used] = ~low[column[used]]
        used_any |= used
        plans.append((atlas, names, column, used, counted, coverage, low))

    union = np.flatnonzero(used_any)
    position = np.full(n_vox, -1, dtype=np.int64)
    position[union] = np.arange(union.size)
    operators = []
    for _atlas, names, column, used, counted, _coverage, _low in plans:
        vox = np.flatnonzero(used)
        cols = column[vox]
        weights = 1.0 / counted[cols]
        operators.append(sparse.csr_matrix(
            (weights, (cols, position[vox])), shape=(len(names), union.size)))

    outputs = [np.full((n_vols, len(plan[1])), np.nan) for plan in plans]
    if union.size:
        step = max(1, _BLOCK_VALUES // union.size)
        for start in range(0, n_vols, step):
            stop = min(n_vols, start + step)
            block = flat[start:stop, union].astype(np.float64).T  # (U, block)
            for out, operator in zip(outputs, operators, strict=True):
                out[start:stop] = (operator @ block).T

    results: dict[str, ParcelSignals] = {}
    for out, (atlas, names, _column, _used, _counted, coverage, low) in zip(
            outputs, plans, strict=True):
        out[:, low] = np.nan
        low_names = [name for name, flag in zip(names, low, strict=True) if flag]
        if low_names:
            LOGGER.info("%s, atlas %s: %d of %d ROIs below %.0f%% coverage", bold_file.name,
                        atlas.label, len(low_names), len(names), 100 * min_coverage)
        results[atlas.label] = ParcelSignals(
            timeseries=out, roi_names=names, coverage=coverage, low_coverage=low_names)
    return results
