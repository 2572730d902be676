"""Registration of the mean EPI to the bundled MNI152NLin6Asym template (nipy).

Two stages, each started from the previous result, with nipy's
:class:`~nipy.algorithms.registration.HistogramRegistration` (the transform maps template
coordinates, mm, to the head coordinates of the BOLD series' reference volume):

1. **Brain outlines** (robust to the different EPI and T1w contrasts): the template brain mask
   and the EPI's partial-volume brain map (:func:`soft_brain`, within nilearn's
   ``compute_epi_mask``), both slightly smoothed, are aligned with the correlation
   coefficient, starting from the translation that superimposes their centres of mass: rigid
   (6 parameters), then affine (12 parameters). The outline fixes the position and the head
   size.
2. **Intensities**: the brain-extracted T1w template is aligned to the mean EPI (affine) with a
   histogram-based similarity that tolerates the different contrasts (``crl1``, the L1
   correlation ratio, by default; ``mi``, ``nmi``, ``cr`` and ``cc`` are offered), over the
   template brain mask dilated by 10 mm (so that the brain edge, skull and background take
   part). This adds the ventricles, grey/white contrast and the EPI's own brain edge. Should
   this stage lower the Dice overlap of the two brain masks by more than
   :data:`MAX_DICE_LOSS`, the outline result is kept instead (and a warning logged).

This is an affine registration of the EPI straight to a template: no T1w image of the subject,
no non-linear warp, no distortion correction. It is coarser than fMRIPrep's (boundary-based
EPI-to-T1w registration and ANTs non-linear T1w-to-template normalisation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainfm.errors import ProcessingError, UsageError
from brainfm.preproc.realign import quiet_nipy
from brainfm.preproc.templates import output_grid, template_brain_mask, template_t1w_file

LOGGER = logging.getLogger(__name__)

#: Similarity measures offered (nipy names).
SIMILARITIES = ("crl1", "cc", "cr", "mi", "nmi")
#: SD (mm) of the Gaussian smoothing of the brain masks in the outline stage.
OUTLINE_SMOOTH_MM = 4.0
#: Margin (mm) around the template brain over which the similarity is computed.
RIM_MM = 10.0
#: Sampling steps (template voxels of 2 mm) of the similarity in the outline and intensity
#: stages: 6 mm and 4 mm.
OUTLINE_STEP = 3
INTENSITY_STEP = 2
#: Dice overlap (template brain vs. the registered EPI brain mask) below which a warning is
#: logged: the registration may have failed.
MIN_DICE = 0.75
#: Largest Dice loss accepted from the intensity stage before the outline result is kept.
MAX_DICE_LOSS = 0.05


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_to_template`.

    Attributes
    ----------
    template_to_head : numpy.ndarray
        4 x 4 affine from template coordinates (mm) to the BOLD reference volume's scanner
        coordinates (mm).
    outline : numpy.ndarray
        4 x 4 result of the outline stage (affine).
    similarity : str
        The similarity measure used.
    stage : str
        ``"intensity"``, or ``"outline"`` when the intensity stage was rejected.
    dice : float
        Dice overlap of the template brain mask and the EPI brain mask carried into template
        space (a quality-control number: about 0.9 for a good registration).
    """

    template_to_head: np.ndarray
    outline: np.ndarray
    similarity: str
    stage: str
    dice: float


def epi_brain_mask(mean: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A brain mask of a mean EPI image (nilearn's ``compute_epi_mask``, holes filled).

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean EPI.
    affine : numpy.ndarray
        4 x 4 voxel-to-world affine.

    Returns
    -------
    numpy.ndarray
        3-D bool mask (the largest connected component).
    """
    from nilearn.masking import compute_epi_mask

    img = nib.Nifti1Image(np.asarray(mean, dtype=np.float32), affine)
    mask = np.asarray(compute_epi_mask(img, opening=1).dataobj) > 0
    return ndimage.binary_fill_holes(mask)


def soft_brain(mean: np.ndarray, epi_mask: np.ndarray) -> np.ndarray:
    """A partial-volume brain map of a mean EPI: intensity relative to the brain's median,
    clipped to [0, 1], within the brain mask dilated by one voxel.

    A thresholded EPI mask is biased outwards by the partial volume of coarse voxels at the
    brain's edge (a mask threshold sits well below the brain's intensity); the soft map keeps
    the edge voxels at their fraction of brain, so that its outline matches the template's.

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean EPI.
    epi_mask : numpy.ndarray
        Its brain mask.

    Returns
    -------
    numpy.ndarray
        3-D float64 map in [0, 1].
    """
    inside = mean[epi_mask]
    level = float(np.median(inside)) if inside.size else 0.0
    if level <= 0:
        return epi_mask.astype(np.float64)
    return np.clip(mean / level, 0.0, 1.0) * ndimage.binary_dilation(epi_mask)


def _center_of_mass(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    com = np.array(ndimage.center_of_mass(mask.astype(np.float64)))
    return affine[:3, :3] @ com + affine[:3, 3]


def _dice(template_mask: np.ndarray, template_affine: np.ndarray, epi_mask: np.ndarray,
          epi_affine: np.ndarray, template_to_head: np.ndarray) -> float:
    vox = np.linalg.inv(epi_affine) @ template_to_head @ template_affine
    moved = ndimage.affine_transform(epi_mask.astype(np.float32), vox[:3, :3], vox[:3, 3],
                                     output_shape=template_mask.shape, order=1) > 0.5
    total = template_mask.sum() + moved.sum()
    return float(2.0 * (template_mask & moved).sum() / total) if total else 0.0


def _subsample(reg: object, mask: np.ndarray, step: int) -> None:
    """Evaluate the similarity on every ``step``-th template voxel of the mask's bounding box
    (nipy otherwise samples up to 64**3 points)."""
    from nipy.algorithms.registration.histogram_registration import smallest_bounding_box

    corner, size = smallest_bounding_box(mask)
    reg.set_fov(spacing=[step] * 3, corner=corner, size=size)  # type: ignore[attr-defined]


def register_to_template(
    mean: np.ndarray,
    affine: np.ndarray,
    *,
    epi_mask: np.ndarray | None = None,
    similarity: str = "crl1",
) -> Registration:
    """Affine registration of the bundled MNI152NLin6Asym template to a mean EPI image.

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean of the realigned BOLD series (in the reference volume's space).
    affine : numpy.ndarray
        4 x 4 voxel-to-scanner affine of ``mean``.
    epi_mask : numpy.ndarray, optional
        Brain mask of ``mean`` (default :func:`epi_brain_mask`): the outline of stage 1 and the
        quality-control Dice.
    similarity : str
        Similarity of the intensity stage, one of :data:`SIMILARITIES`.

    Returns
    -------
    Registration
        The template-to-head affine and QC numbers.

    Raises
    ------
    UsageError
        For an unknown similarity.
    ProcessingError
        If nipy fails.
    """
    from nipy.algorithms.registration import Affine, HistogramRegistration, Rigid

    if similarity not in SIMILARITIES:
        raise UsageError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    mean = np.asarray(mean, dtype=np.float64)
    if epi_mask is None:
        epi_mask = epi_brain_mask(mean, affine)
    grid = output_grid(2)
    t1w_img = nib.load(template_t1w_file())
    t1w = np.asarray(t1w_img.dataobj, dtype=np.float64)
    brain = template_brain_mask(grid)
    template = nib.Nifti1Image(t1w, t1w_img.affine)
    epi = nib.Nifti1Image(mean, affine)

    init = np.eye(4)
    init[:3, 3] = _center_of_mass(epi_mask, affine) - _center_of_mass(brain, t1w_img.affine)
    voxel = float(np.sqrt((t1w_img.affine[:3, :3] ** 2).sum(axis=0)).mean())
    rim = ndimage.binary_dilation(brain, iterations=max(1, round(RIM_MM / voxel)))
    epi_voxel = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
    outline_template = ndimage.gaussian_filter(brain.astype(np.float64),
                                               OUTLINE_SMOOTH_MM / voxel)
    outline_epi = ndimage.gaussian_filter(soft_brain(mean, epi_mask),
                                          OUTLINE_SMOOTH_MM / epi_voxel)
    try:
        with quiet_nipy():
            outline = HistogramRegistration(
                nib.Nifti1Image(outline_template, t1w_img.affine),
                nib.Nifti1Image(outline_epi, affine),
                from_mask=rim, similarity="cc", interp="pv",
            )
            _subsample(outline, rim, OUTLINE_STEP)
            rigid = outline.optimize(Rigid(init), optimizer="powell")
            stage1 = outline.optimize(Affine(rigid.as_affine()), optimizer="powell")
            intensity = HistogramRegistration(template, epi, from_mask=rim,
                                              similarity=similarity, interp="pv")
            _subsample(intensity, rim, INTENSITY_STEP)
            full = intensity.optimize(Affine(stage1.as_affine()), optimizer="powell")
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
        raise ProcessingError(f"registration of the mean EPI to the template failed: {exc}") \
            from exc
    outline_matrix = np.asarray(stage1.as_affine(), dtype=np.float64)
    matrix = np.asarray(full.as_affine(), dtype=np.float64)
    dice = _dice(brain, t1w_img.affine, epi_mask, affine, matrix)
    outline_dice = _dice(brain, t1w_img.affine, epi_mask, affine, outline_matrix)
    stage = "intensity"
    if dice < outline_dice - MAX_DICE_LOSS:
        LOGGER.warning(
            "the intensity stage of the registration lowered the brain-mask Dice from %.3f to "
            "%.3f; keeping the outline registration", outline_dice, dice,
        )
        matrix, dice, stage = outline_matrix, outline_dice, "outline"
    if dice < MIN_DICE:
        LOGGER.warning(
            "the registered EPI brain overlaps the template brain mask poorly (Dice %.2f < "
            "%.2f): check the registration", dice, MIN_DICE,
        )
    return Registration(template_to_head=matrix, outline=outline_matrix,
                        similarity=similarity, stage=stage, dice=dice)
