"""Put each atlas in the template space of the BOLD it parcellates.

The bundled atlases are drawn in ``MNI152NLin6Asym``; fMRIPrep's default output space is
``MNI152NLin2009cAsym``, and the two templates differ by several millimetres in places. For BOLD
in another space than an atlas, in this order (as XCP-D does, and with nothing downloaded):

1. the atlas drawn in that space, from the user's ``TEMPLATEFLOW_HOME`` (Schaefer 2018 is there
   in ``MNI152NLin2009cAsym``; :func:`brainfm.atlases.templateflow_atlas`);
2. the atlas warped with TemplateFlow's transform
   ``tpl-<bold space>/tpl-<bold space>_from-<atlas space>_mode-image_xfm.h5`` from
   ``TEMPLATEFLOW_HOME``, read and applied by nitransforms with nearest-neighbour interpolation
   onto the grid of the BOLD (ITK's convention: that file maps points of the BOLD's template to
   points of the atlas's template, which is what resampling the atlas needs);
3. with ``--allow-atlas-space-mismatch``, the atlas as it is, said in a WARNING and in every
   sidecar (``AtlasSpace`` differs from the ``space-`` entity);
4. otherwise a usage error (exit 64) before any work, naming both fixes.

A user atlas (``--atlas-file``) is taken to be drawn in the BOLD's space, as its help says.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

from brainfm.atlases import Atlas, templateflow_atlas, templateflow_home
from brainfm.errors import InputError, UsageError
from brainfm.fileio import write_atomic

LOGGER = logging.getLogger(__name__)


def transform_file(bold_space: str, atlas_space: str) -> Path:
    """Where TemplateFlow keeps the transform that brings ``atlas_space`` images to ``bold_space``.

    Parameters
    ----------
    bold_space, atlas_space : str
        TemplateFlow template names.

    Returns
    -------
    pathlib.Path
        ``TEMPLATEFLOW_HOME/tpl-<bold>/tpl-<bold>_from-<atlas>_mode-image_xfm.h5`` (it may not
        exist).
    """
    return (templateflow_home() / f"tpl-{bold_space}"
            / f"tpl-{bold_space}_from-{atlas_space}_mode-image_xfm.h5")


def warp_label_image(image: Path, transform: Path, reference: Path, out_file: Path) -> Path:
    """Resample a label image through an ITK transform file with nearest neighbour.

    Parameters
    ----------
    image : Path
        3-D integer label image (the moving image).
    transform : Path
        ITK ``.h5`` transform (composite: affine and/or displacement field), mapping points of
        the reference's space to points of the image's space.
    reference : Path
        Image whose grid (first three dimensions) the result takes.
    out_file : Path
        Where to write the warped labels (replaced atomically).

    Returns
    -------
    Path
        ``out_file``.

    Raises
    ------
    InputError
        The transform cannot be read.
    """
    import nibabel as nib
    import numpy as np
    from nitransforms.manip import load
    from nitransforms.resampling import apply

    try:
        with warnings.catch_warnings():  # "reference space not set": given to apply() below
            warnings.simplefilter("ignore", UserWarning)
            chain = load(transform, fmt="itk")
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(f"cannot read the transform {transform} ({err}); it must be "
                         "TemplateFlow's ITK .h5 file: download it again") from err
    ref = nib.load(str(reference))
    grid = nib.Nifti1Image(np.zeros(ref.shape[:3], dtype=np.uint8), ref.affine)
    moving = nib.load(str(image))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warped = apply(chain, moving, reference=grid, order=0, mode="constant", cval=0,
                       prefilter=False)
    labels = np.rint(np.asanyarray(warped.dataobj)).astype(np.int32)
    write_atomic(out_file, lambda tmp: nib.Nifti1Image(labels, ref.affine).to_filename(tmp),
                 suffix=".nii.gz")
    return out_file


def place_atlas(atlas: Atlas, bold_space: str, reference: Path, cache_dir: Path,
                allow_mismatch: bool = False) -> Atlas:
    """The atlas to parcellate BOLD in ``bold_space`` with (see the module docstring).

    Parameters
    ----------
    atlas : Atlas
        Resolved atlas (:func:`brainfm.atlases.get_atlas` or a user atlas).
    bold_space : str
        Template space of the BOLD runs.
    reference : Path
        One BOLD image in that space (its grid receives a warped atlas).
    cache_dir : Path
        Folder for warped atlases (in the work directory).
    allow_mismatch : bool, optional
        Use the atlas in its own space when no better way is available.

    Returns
    -------
    Atlas
        In ``bold_space`` (``transform`` set when warped), or unchanged in its own space when
        ``allow_mismatch`` is the only way.

    Raises
    ------
    UsageError
        No way to place the atlas and no ``allow_mismatch`` (exit 64).
    """
    if atlas.space == bold_space:
        return atlas
    if atlas.source == "user":
        return dataclasses.replace(atlas, space=bold_space)
    drawn = templateflow_atlas(atlas.name, bold_space)
    if drawn is not None:
        LOGGER.info("atlas %s: using TemplateFlow's %s for %s BOLD", atlas.label, drawn.name,
                    bold_space)
        return dataclasses.replace(atlas, image=drawn, space=bold_space, source="templateflow")
    xfm = transform_file(bold_space, atlas.space)
    if xfm.is_file() and xfm.stat().st_size > 0:
        out = cache_dir / f"tpl-{bold_space}_atlas-{atlas.label}_from-{atlas.space}_dseg.nii.gz"
        LOGGER.info("atlas %s: warping it from %s to %s with %s", atlas.label, atlas.space,
                    bold_space, xfm)
        warp_label_image(atlas.image, xfm, reference, out)
        return dataclasses.replace(atlas, image=out, space=bold_space, transform=xfm)
    if allow_mismatch:
        LOGGER.warning("atlas %s is drawn in %s but the BOLD is in %s; parcellating anyway "
                       "(--allow-atlas-space-mismatch): ROI signals come from voxels up to "
                       "several millimetres off the atlas's intent", atlas.label, atlas.space,
                       bold_space)
        return atlas
    raise UsageError(
        f"atlas {atlas.label} is drawn in {atlas.space} but the BOLD is in {bold_space}, and "
        f"{templateflow_home()} holds neither the atlas in {bold_space} nor the transform "
        f"{xfm.name}. Either rerun fMRIPrep with --output-spaces {atlas.space}:res-2, or put "
        f"TemplateFlow's {xfm.name} (or the atlas in {bold_space}) under "
        f"{xfm.parent} (set TEMPLATEFLOW_HOME to use another folder); "
        "--allow-atlas-space-mismatch proceeds without either, approximately")


def place_atlases(atlases: list[Atlas], references: dict[str, Path], cache_dir: Path,
                  allow_mismatch: bool = False) -> dict[str, list[Atlas]]:
    """Place every atlas in every BOLD space of the run (:func:`place_atlas`).

    Parameters
    ----------
    atlases : list of Atlas
        The atlases asked for.
    references : dict
        One BOLD image per template space present in the selected runs.
    cache_dir : Path
        Folder for warped atlases.
    allow_mismatch : bool, optional
        See :func:`place_atlas`.

    Returns
    -------
    dict
        Template space to its atlases, in the order given.
    """
    return {space: [place_atlas(a, space, ref, cache_dir, allow_mismatch) for a in atlases]
            for space, ref in sorted(references.items())}
