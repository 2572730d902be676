"""The voxel grid of the synthetic data: the bundled CC200 atlas, its masks and smooth fields.

The grid is the bundled CC200 atlas grid (MNI152NLin6Asym, 3 mm, 63 x 75 x 61), cropped to the
bounding box of the brain mask plus a margin. Cropping keeps the voxel centres of the atlas, so
resampling the bundled atlas to the written images with nearest-neighbour interpolation gives
exactly the labels used to paint them. Other voxel sizes resample the atlas (nearest neighbour)
first.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import as_file, files

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainfm.errors import InputError, UsageError

ATLAS_NAME = "tpl-MNI152NLin6Asym_res-03_atlas-CC200_dseg.nii.gz"
N_ROIS = 200
#: Margin (voxels) kept around the brain mask's bounding box when cropping.
CROP_MARGIN = 2
#: A voxel belongs to the white-matter-like core when it lies deeper than this (mm) in the brain.
WM_DEPTH_MM = 12.0


@dataclass(frozen=True)
class Grid:
    """The painted voxel grid and its anatomy.

    Attributes
    ----------
    labels : numpy.ndarray
        3-D int16 CC200 labels (0 = background, 1..200 = parcels) on the grid.
    affine : numpy.ndarray
        4 x 4 voxel-to-MNI affine.
    voxel_size : float
        Isotropic voxel size in mm.
    brain : numpy.ndarray
        3-D bool brain mask: the parcels dilated by about 3 mm, holes filled.
    wm : numpy.ndarray
        3-D bool white-matter-like mask: parcel voxels deeper than ``WM_DEPTH_MM`` in the brain.
    csf : numpy.ndarray
        3-D bool CSF-like mask: the rim of the brain mask outside every parcel.
    depth_mm : numpy.ndarray
        3-D float distance (mm) of each brain voxel to the outside of the brain mask.
    """

    labels: np.ndarray
    affine: np.ndarray
    voxel_size: float
    brain: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    depth_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The 3-D shape of the grid."""
        return tuple(int(s) for s in self.labels.shape)  # type: ignore[return-value]

    def labels_image(self) -> nib.Nifti1Image:
        """Return the CC200 labels on this grid as a NIfTI image (int16)."""
        return _image(self.labels.astype(np.int16), self.affine)

    def mask_image(self, mask: np.ndarray) -> nib.Nifti1Image:
        """Return a boolean mask on this grid as a NIfTI image (uint8)."""
        return _image(mask.astype(np.uint8), self.affine)


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    return img


def load_bundled_atlas() -> nib.Nifti1Image:
    """Load the bundled CC200 atlas (3 mm MNI152NLin6Asym) into memory.

    Returns
    -------
    nibabel.Nifti1Image
        The atlas with its data loaded (the file handle is closed).

    Raises
    ------
    InputError
        If the package data file is missing (a broken installation).
    """
    resource = files("brainfm.data").joinpath("atlases", ATLAS_NAME)
    with as_file(resource) as path:
        if not path.is_file():
            raise InputError(
                f"bundled atlas {path} is missing: reinstall brainfm (package data not installed)"
            )
        img = nib.load(path)
        data = np.asarray(img.dataobj).astype(np.int16)
        return nib.Nifti1Image(data, img.affine)


def _resample_labels(atlas: nib.Nifti1Image, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resampling of the atlas to an isotropic ``voxel_size`` grid."""
    from nilearn.image import resample_img

    old = atlas.affine[:3, :3]
    zooms = np.sqrt((old**2).sum(axis=0))
    new = old / zooms * voxel_size
    out = resample_img(
        atlas,
        target_affine=new,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.dataobj).astype(np.int16), out.affine


def build_grid(voxel_size: float = 3.0, crop: bool = True) -> Grid:
    """Build the painted grid from the bundled CC200 atlas.

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size in mm. 3.0 uses the atlas grid as is; other sizes resample the
        atlas with nearest-neighbour interpolation.
    crop : bool
        Crop the grid to the brain mask's bounding box plus ``CROP_MARGIN`` voxels.

    Returns
    -------
    Grid
        Labels, affine and masks.

    Raises
    ------
    UsageError
        If ``voxel_size`` is not in 1-8 mm.
    """
    if not 1.0 <= float(voxel_size) <= 8.0:
        raise UsageError(f"voxel size must be between 1 and 8 mm, got {voxel_size}")
    atlas = load_bundled_atlas()
    if abs(float(voxel_size) - 3.0) < 1e-6:
        labels = np.asarray(atlas.dataobj).astype(np.int16)
        affine = atlas.affine.copy()
    else:
        labels, affine = _resample_labels(atlas, float(voxel_size))
    labels[(labels < 0) | (labels > N_ROIS)] = 0
    parcels = labels > 0
    n_dilate = max(1, int(round(3.0 / float(voxel_size))))
    brain = ndimage.binary_fill_holes(ndimage.binary_dilation(parcels, iterations=n_dilate))
    if crop:
        idx = np.argwhere(brain)
        lo = np.maximum(idx.min(axis=0) - CROP_MARGIN, 0)
        hi = np.minimum(idx.max(axis=0) + CROP_MARGIN + 1, labels.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        labels = labels[sl]
        brain = brain[sl]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    depth = ndimage.distance_transform_edt(brain) * float(voxel_size)
    wm = (labels > 0) & (depth > WM_DEPTH_MM)
    csf = brain & (labels == 0)
    return Grid(
        labels=labels,
        affine=affine,
        voxel_size=float(voxel_size),
        brain=brain,
        wm=wm,
        csf=csf,
        depth_mm=depth,
    )


def smooth_field(rng: np.random.Generator, grid: Grid, fwhm_mm: float = 25.0) -> np.ndarray:
    """Draw a spatially smooth random field over the brain, standardised inside the brain.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    grid : Grid
        The grid.
    fwhm_mm : float
        Full width at half maximum of the Gaussian smoothing kernel in mm.

    Returns
    -------
    numpy.ndarray
        1-D float64 array of the field's values at the brain voxels (C order), mean 0, SD 1.
    """
    sigma = fwhm_mm / 2.3548 / grid.voxel_size
    field = ndimage.gaussian_filter(rng.standard_normal(grid.shape), sigma, mode="nearest")
    values = field[grid.brain]
    values = values - values.mean()
    sd = values.std()
    return values / sd if sd > 0 else values
