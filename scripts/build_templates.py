#!/usr/bin/env python
"""Rebuild brainfm's bundled MNI152NLin6Asym template files (a maintainer script).

Writes ``brainfm/data/templates``: the 2 mm brain-extracted T1w template copied from
neuroparc's ``reference_2mm`` folder, and the white-matter and CSF masks derived from it by
:func:`brainfm.preproc.templates.derive_tissue_masks`. Usage::

    python scripts/build_templates.py NEUROPARC_REFERENCE_2MM_DIR [OUT_DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from brainfm.errors import InputError
from brainfm.preproc.templates import (
    MASK_NAMES,
    T1W_NAME,
    TEMPLATE_DIR,
    derive_tissue_masks,
)

#: The source files in neuroparc's ``reference_2mm`` folder.
_NEUROPARC_T1W_BRAIN = "MNI152NLin6_res-2x2x2_T1w_descr-brain.nii.gz"
_NEUROPARC_BRAIN_MASK = "MNI152NLin6_res-2x2x2_T1w_descr-brainmask.nii.gz"


def build_template_files(reference_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the bundled template files from neuroparc's ``reference_2mm`` folder.

    Parameters
    ----------
    reference_dir : str or pathlib.Path
        Folder holding ``MNI152NLin6_res-2x2x2_T1w_descr-brain.nii.gz`` and
        ``MNI152NLin6_res-2x2x2_T1w_descr-brainmask.nii.gz``.
    out_dir : str or pathlib.Path
        Destination (``brainfm/data/templates``).

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    InputError
        If a source file is missing.
    """
    src = Path(reference_dir)
    out = Path(out_dir)
    t1w_path, mask_path = src / _NEUROPARC_T1W_BRAIN, src / _NEUROPARC_BRAIN_MASK
    for path in (t1w_path, mask_path):
        if not path.is_file():
            raise InputError(f"template source {path} not found")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / T1W_NAME]
    shutil.copyfile(t1w_path, written[0])
    t1w = nib.load(t1w_path)
    mask = np.asanyarray(nib.load(mask_path).dataobj) > 0
    voxel = float(np.sqrt((t1w.affine[:3, :3] ** 2).sum(axis=0)).mean())
    masks = derive_tissue_masks(np.asanyarray(t1w.dataobj).astype(np.float64), mask, voxel)
    for label, data in masks.items():
        img = nib.Nifti1Image(data.astype(np.uint8), t1w.affine)
        img.set_qform(t1w.affine, code=4)
        img.set_sform(t1w.affine, code=4)
        img.header.set_xyzt_units("mm")
        path = out / MASK_NAMES[label]
        nib.save(img, path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the bundled template files.

    Parameters
    ----------
    argv : sequence of str, optional
        ``REFERENCE_DIR OUT_DIR`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 66 when a source file is missing.
    """
    parser = argparse.ArgumentParser(
        prog="python scripts/build_templates.py",
        description="Write brainfm's MNI152NLin6Asym registration template and tissue masks "
        "from neuroparc's reference_2mm folder.",
    )
    parser.add_argument("reference_dir", type=Path)
    parser.add_argument("out_dir", type=Path, nargs="?", default=TEMPLATE_DIR)
    args = parser.parse_args(argv)
    try:
        for path in build_template_files(args.reference_dir, args.out_dir):
            print(path)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
