"""The bundled MNI152NLin6Asym registration target, tissue masks and output grids.

Files in ``brainfm/data/templates`` (terms and provenance in ``LICENSE-MNI152.txt`` and
``README.md`` there):

- ``tpl-MNI152NLin6Asym_res-02_desc-brain_T1w.nii.gz``: FSL's MNI152 (6th generation,
  non-linear) 2 mm T1w template, brain extracted (neuroparc ``reference_2mm``, voxels unchanged);
  the target of the minimal preprocessing's EPI registration.
- ``tpl-MNI152NLin6Asym_res-02_label-WM_mask.nii.gz`` and ``..._label-CSF_mask.nii.gz``: white
  matter and CSF masks derived from that template's intensities by :func:`derive_tissue_masks`
  (three-class k-means; white matter eroded by one voxel; CSF restricted to voxels deeper than
  10 mm inside the brain, i.e. the ventricles and the deep interhemispheric fissure, where the
  template is dark for CSF and not for partial-volumed cortex).

The brain mask itself is the one bundled with the atlases
(:func:`brainfm.atlases.brain_mask_file`); its interior holes (the ventricles, 1,241 voxels) are
filled by :func:`template_brain_mask` so that the mask covers the whole brain as fMRIPrep's do.

``python scripts/build_templates.py NEUROPARC_REFERENCE_2MM_DIR`` (a maintainer script, not part
of the package) rebuilds the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from brainfm.atlases import ATLAS_DIR, brain_mask_file
from brainfm.errors import InputError, UsageError

#: Folder of the bundled template files.
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "data" / "templates"
#: The standard space of every output of the minimal preprocessing.
SPACE = "MNI152NLin6Asym"
#: Output resolutions (mm) offered by the minimal preprocessing.
RESOLUTIONS = (2, 3)
#: CSF voxels must lie deeper than this inside the (hole-filled) brain mask (mm).
CSF_MIN_DEPTH_MM = 10.0
#: Connected CSF pieces smaller than this (voxels) are dropped.
CSF_MIN_COMPONENT = 10

T1W_NAME = f"tpl-{SPACE}_res-02_desc-brain_T1w.nii.gz"
MASK_NAMES = {
    "WM": f"tpl-{SPACE}_res-02_label-WM_mask.nii.gz",
    "CSF": f"tpl-{SPACE}_res-02_label-CSF_mask.nii.gz",
}
#: The 3 mm grid: the bundled CC200 atlas' grid (the exact ABIDE PCP grid).
_GRID_3MM = "tpl-MNI152NLin6Asym_res-03_atlas-CC200_dseg.nii.gz"


@dataclass(frozen=True)
class OutputGrid:
    """A standard-space voxel grid.

    Attributes
    ----------
    resolution : int
        Voxel size in mm (2 or 3).
    shape : tuple of int
        3-D shape.
    affine : numpy.ndarray
        4 x 4 voxel-to-MNI affine.
    """

    resolution: int
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def res_label(self) -> str:
        """The BIDS ``res-`` label of the grid (``"2"`` or ``"3"``)."""
        return str(self.resolution)


def _bundled(path: Path) -> Path:
    if not path.is_file():
        raise InputError(
            f"bundled template file {path} is missing: reinstall brainfm (package data not "
            "installed)"
        )
    return path


def template_t1w_file() -> Path:
    """The bundled brain-extracted MNI152NLin6Asym 2 mm T1w template.

    Returns
    -------
    pathlib.Path
        ``tpl-MNI152NLin6Asym_res-02_desc-brain_T1w.nii.gz`` inside the package.

    Raises
    ------
    InputError
        If the package data are missing (a broken installation).
    """
    return _bundled(TEMPLATE_DIR / T1W_NAME)


def tissue_mask_file(label: str) -> Path:
    """A bundled 2 mm tissue mask of the template.

    Parameters
    ----------
    label : str
        ``"WM"`` or ``"CSF"``.

    Returns
    -------
    pathlib.Path
        ``tpl-MNI152NLin6Asym_res-02_label-<label>_mask.nii.gz`` inside the package.

    Raises
    ------
    UsageError
        For another label.
    InputError
        If the package data are missing.
    """
    if label not in MASK_NAMES:
        raise UsageError(f"unknown tissue label {label!r}; choose from {sorted(MASK_NAMES)}")
    return _bundled(TEMPLATE_DIR / MASK_NAMES[label])


def output_grid(resolution: int = 2) -> OutputGrid:
    """The standard-space grid the minimal preprocessing writes BOLD on.

    Parameters
    ----------
    resolution : int
        2: TemplateFlow's ``tpl-MNI152NLin6Asym_res-02`` grid (91 x 109 x 91, the grid of the
        bundled brain mask and Schaefer atlases, and of fMRIPrep's
        ``--output-spaces MNI152NLin6Asym:res-2``); 3: the bundled CC200 atlas grid
        (63 x 75 x 61, the grid of the ABIDE PCP data).

    Returns
    -------
    OutputGrid
        Shape and affine.

    Raises
    ------
    UsageError
        If ``resolution`` is not 2 or 3.
    """
    if resolution not in RESOLUTIONS:
        raise UsageError(
            f"output resolution must be one of {RESOLUTIONS} (mm), got {resolution!r}"
        )
    ref = brain_mask_file() if resolution == 2 else ATLAS_DIR / _GRID_3MM
    img = nib.load(_bundled(ref))
    shape = tuple(int(s) for s in img.shape[:3])
    return OutputGrid(int(resolution), shape, img.affine.copy())  # type: ignore[arg-type]


def _load_bool(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj) > 0, img.affine


def _to_grid(mask: np.ndarray, affine: np.ndarray, grid: OutputGrid) -> np.ndarray:
    """Resample a 2 mm mask onto ``grid`` (identity for 2 mm; trilinear > 0.5 otherwise)."""
    if mask.shape == grid.shape and np.allclose(affine, grid.affine, atol=1e-4):
        return mask
    vox = np.linalg.solve(affine, grid.affine)
    out = ndimage.affine_transform(
        mask.astype(np.float32), vox[:3, :3], vox[:3, 3], output_shape=grid.shape, order=1,
        mode="constant", cval=0.0,
    )
    return out > 0.5


def template_brain_mask(grid: OutputGrid | None = None) -> np.ndarray:
    """The bundled MNI152NLin6Asym brain mask with its interior holes filled.

    Parameters
    ----------
    grid : OutputGrid, optional
        Grid to return the mask on (default: the 2 mm grid of the file).

    Returns
    -------
    numpy.ndarray
        3-D bool mask.
    """
    mask, affine = _load_bool(_bundled(brain_mask_file()))
    mask = ndimage.binary_fill_holes(mask)
    return _to_grid(mask, affine, grid or output_grid(2))


def template_tissue_mask(label: str, grid: OutputGrid | None = None) -> np.ndarray:
    """A bundled tissue mask (``"WM"`` or ``"CSF"``) on a standard grid.

    Parameters
    ----------
    label : str
        ``"WM"`` or ``"CSF"``.
    grid : OutputGrid, optional
        Grid to return the mask on (default 2 mm).

    Returns
    -------
    numpy.ndarray
        3-D bool mask.
    """
    mask, affine = _load_bool(tissue_mask_file(label))
    return _to_grid(mask, affine, grid or output_grid(2))


def derive_tissue_masks(
    t1w_brain: np.ndarray, brain_mask: np.ndarray, voxel_size: float
) -> dict[str, np.ndarray]:
    """White-matter and CSF masks from a brain-extracted T1w template's intensities.

    Three-class k-means (initialised at the 5th, 50th and 95th intensity percentiles) splits the
    brain into CSF-, grey- and white-matter-like intensities. White matter: voxels brighter
    than the midpoint of the grey and white centroids, eroded by one voxel (as fMRIPrep erodes
    its CompCor masks). CSF: voxels darker than the CSF centroid that lie more than
    :data:`CSF_MIN_DEPTH_MM` inside the hole-filled brain mask (ventricles, deep fissures),
    without pieces smaller than :data:`CSF_MIN_COMPONENT` voxels.

    Parameters
    ----------
    t1w_brain : numpy.ndarray
        3-D T1w intensities (0 outside the brain allowed).
    brain_mask : numpy.ndarray
        3-D brain mask on the same grid.
    voxel_size : float
        Isotropic voxel size in mm.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{"WM": bool array, "CSF": bool array}``.
    """
    brain = ndimage.binary_fill_holes(brain_mask > 0)
    values = t1w_brain[brain].astype(np.float64)
    init = np.percentile(values, [5, 50, 95])[:, None]
    centroids, _ = kmeans2(values[:, None], init, minit="matrix", iter=50)
    csf_c, gm_c, wm_c = np.sort(centroids[:, 0])
    wm = ndimage.binary_erosion(brain & (t1w_brain > 0.5 * (gm_c + wm_c)))
    depth = ndimage.distance_transform_edt(brain) * float(voxel_size)
    csf = brain & (t1w_brain < csf_c) & (depth > CSF_MIN_DEPTH_MM)
    labels, n = ndimage.label(csf)
    if n:
        sizes = ndimage.sum(csf, labels, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], sizes >= CSF_MIN_COMPONENT])
        csf = keep[labels]
    return {"WM": wm, "CSF": csf}
