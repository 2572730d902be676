"""One-step resampling of a BOLD series into standard space, and the realigned mean image.

For each volume *t* the output voxel's position is carried through the template-to-head
registration ``G`` and the volume's head-motion transform ``P_t`` into the acquired volume::

    native voxel = A_bold^-1  P_t  G  A_grid  output voxel

so head-motion correction and normalisation are applied in a single interpolation (cubic
B-spline), as fMRIPrep applies its head-motion, coregistration and normalisation transforms in
one step. The series should already be slice-time corrected (a purely temporal interpolation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from brainfm.preproc.templates import OutputGrid

#: Dilation (output voxels) of the brain mask inside which the BOLD is resampled.
MARGIN_VOXELS = 3


def mean_realigned(data: np.ndarray, affine: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Mean of the series after head-motion correction, on the reference volume's grid.

    Parameters
    ----------
    data : numpy.ndarray
        (X, Y, Z, T) BOLD series.
    affine : numpy.ndarray
        4 x 4 voxel-to-scanner affine.
    matrices : numpy.ndarray
        (T, 4, 4) head-to-scanner transforms (:class:`brainfm.preproc.realign.MotionEstimate`).

    Returns
    -------
    numpy.ndarray
        (X, Y, Z) float64 mean (trilinear interpolation).
    """
    inv = np.linalg.inv(affine)
    total = np.zeros(data.shape[:3], dtype=np.float64)
    for t in range(data.shape[3]):
        vox = inv @ matrices[t] @ affine
        total += ndimage.affine_transform(np.asarray(data[..., t], dtype=np.float64), vox[:3, :3],
                                          vox[:3, 3], order=1, mode="nearest")
    return total / data.shape[3]


def resample_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    matrices: np.ndarray,
    template_to_head: np.ndarray,
    grid: OutputGrid,
    brain_mask: np.ndarray,
    *,
    order: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample every volume onto a standard grid in one interpolation.

    Parameters
    ----------
    data : numpy.ndarray
        (X, Y, Z, T) BOLD series (slice-time corrected).
    affine : numpy.ndarray
        4 x 4 voxel-to-scanner affine of ``data``.
    matrices : numpy.ndarray
        (T, 4, 4) head-to-scanner transforms.
    template_to_head : numpy.ndarray
        4 x 4 template-to-head affine (:class:`brainfm.preproc.register.Registration`).
    grid : OutputGrid
        The output grid.
    brain_mask : numpy.ndarray
        Brain mask on ``grid``: values are computed inside it (dilated by
        :data:`MARGIN_VOXELS`) and are 0 elsewhere.
    order : int
        Spline order (3: cubic B-spline, 1: trilinear).

    Returns
    -------
    bold : numpy.ndarray
        (X', Y', Z', T) float32 series on ``grid``.
    coverage : numpy.ndarray
        (X', Y', Z') bool: output voxels that fall inside the acquired field of view in every
        volume.
    """
    region = ndimage.binary_dilation(brain_mask, iterations=MARGIN_VOXELS)
    ijk = np.argwhere(region).T.astype(np.float64)  # (3, n)
    n_vols = data.shape[3]
    inv = np.linalg.inv(affine)
    dims = np.asarray(data.shape[:3], dtype=np.float64)[:, None]
    out = np.zeros(grid.shape + (n_vols,), dtype=np.float32)
    inside_all = np.ones(ijk.shape[1], dtype=bool)
    index = tuple(ijk.astype(np.intp))
    for t in range(n_vols):
        m = inv @ matrices[t] @ template_to_head @ grid.affine
        coords = m[:3, :3] @ ijk + m[:3, 3:4]
        inside_all &= np.all((coords >= -0.5) & (coords <= dims - 0.5), axis=0)
        values = ndimage.map_coordinates(np.asarray(data[..., t], dtype=np.float64), coords,
                                         order=order, mode="nearest")
        out[index + (t,)] = values.astype(np.float32)
    coverage = np.zeros(grid.shape, dtype=bool)
    coverage[index] = inside_all
    out[~coverage] = 0.0
    return out, coverage
