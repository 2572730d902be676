"""Atlases placed in the BOLD's template space: TemplateFlow copy, warp, refusal, opt-in."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nitransforms.manip import load

from brainfm.atlas_spaces import place_atlas, transform_file, warp_label_image
from brainfm.atlases import get_atlas
from brainfm.bidsapp.cli import main
from brainfm.errors import UsageError
from brainfm.testdata import make_dataset

NLIN6, NLIN2009C = "MNI152NLin6Asym", "MNI152NLin2009cAsym"
#: Where the toy "2009c" template lies against NLin6: a point p of NLin6 is p + SHIFT there.
SHIFT = np.array([6.0, -3.0, 9.0])


def write_itk_translation(path: Path, ras_translation: np.ndarray) -> Path:
    """An ITK composite .h5 (as ANTs and TemplateFlow write them) holding one translation.

    ITK transforms map points of the fixed (reference) space to the moving space, in LPS.
    """
    lps = np.asarray(ras_translation, dtype=float) * np.array([-1.0, -1.0, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        group = f.create_group("TransformGroup")
        group.create_group("0")["TransformType"] = np.array([b"CompositeTransform_double_3_3"])
        affine = group.create_group("1")
        affine["TransformType"] = np.array([b"AffineTransform_double_3_3"])
        affine["TransformParameters"] = np.r_[np.eye(3).ravel(), lps]
        affine["TransformFixedParameters"] = np.zeros(3)
    return path


@pytest.fixture()
def templateflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "templateflow"
    home.mkdir()
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home


def test_transform_file_round_trips_through_nitransforms(tmp_path: Path) -> None:
    xfm = write_itk_translation(tmp_path / "x.h5", -SHIFT)
    mapped = load(xfm, fmt="itk", reference=None).map(np.array([[10.0, 20.0, 30.0]]))
    np.testing.assert_allclose(mapped[0], np.array([10.0, 20.0, 30.0]) - SHIFT)


def test_warp_moves_labels_by_the_transform(tmp_path: Path) -> None:
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[3:5, 4:7, 2:4] = 7
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -18.0
    nib.Nifti1Image(labels, affine).to_filename(tmp_path / "atlas.nii.gz")
    # the reference grid lies in the other template, shifted by SHIFT (whole voxels)
    ref_affine = affine.copy()
    ref_affine[:3, 3] += SHIFT
    nib.Nifti1Image(np.zeros((12, 12, 12), np.uint8), ref_affine).to_filename(tmp_path / "r.nii")
    xfm = write_itk_translation(tmp_path / "x.h5", -SHIFT)
    out = warp_label_image(tmp_path / "atlas.nii.gz", xfm, tmp_path / "r.nii",
                           tmp_path / "o.nii.gz")
    warped = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(warped.dataobj), labels)
    np.testing.assert_allclose(warped.affine, ref_affine)


def test_place_atlas_prefers_templateflow_copy_then_warp_then_refuses(
        tmp_path: Path, templateflow: Path) -> None:
    ref = tmp_path / "ref.nii.gz"
    atlas = get_atlas("Schaefer2018-200")
    nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)).to_filename(ref)
    with pytest.raises(UsageError) as err:
        place_atlas(atlas, NLIN2009C, ref, tmp_path / "cache")
    message = str(err.value)
    assert "--output-spaces MNI152NLin6Asym:res-2" in message
    assert transform_file(NLIN2009C, NLIN6).name in message and str(templateflow) in message
    # opted in: the atlas as it is, still said to be in its own space
    assert place_atlas(atlas, NLIN2009C, ref, tmp_path / "cache", True).space == NLIN6
    # TemplateFlow's own 2009c copy (a 0-byte placeholder is not one)
    folder = templateflow / f"tpl-{NLIN2009C}"
    folder.mkdir()
    name = f"tpl-{NLIN2009C}_res-{{}}_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.nii.gz"
    (folder / name.format("01")).write_bytes(b"")
    shutil.copy(atlas.image, folder / name.format("02"))
    placed = place_atlas(atlas, NLIN2009C, ref, tmp_path / "cache")
    assert (placed.space, placed.source, placed.image.name) == (
        NLIN2009C, "templateflow", name.format("02"))
    # CC200 is not in TemplateFlow: warped when the transform is there
    cc200 = get_atlas("CC200")
    write_itk_translation(transform_file(NLIN2009C, NLIN6), -SHIFT)
    placed = place_atlas(cc200, NLIN2009C, ref, tmp_path / "cache")
    assert placed.space == NLIN2009C and placed.transform == transform_file(NLIN2009C, NLIN6)
    assert placed.image.parent == tmp_path / "cache" and placed.image.is_file()


def _shift_to_2009c(ds: Path) -> None:
    """Relabel a dataset's fMRIPrep outputs as 2009c and move them by SHIFT in world space."""
    for path in sorted((ds / "bids" / "derivatives" / "fmriprep").rglob(f"*space-{NLIN6}*")):
        target = path.with_name(path.name.replace(NLIN6, NLIN2009C))
        path.rename(target)
        if target.name.endswith(".nii.gz"):
            img = nib.load(target)
            affine = img.affine.copy()
            affine[:3, 3] += SHIFT
            data = np.asanyarray(img.dataobj)
            nib.Nifti1Image(data, affine, img.header).to_filename(target)


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_2009c_run_with_warped_atlas_matches_nlin6(tmp_path: Path, templateflow: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    nlin6 = make_dataset(tmp_path / "a", n_subjects=1, n_volumes=60, seed=3).bids_dir
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    c2009 = tmp_path / "b" / "bids"
    _shift_to_2009c(tmp_path / "b")
    before = _snapshot(c2009)
    common = ["participant", "--skip-bids-validation", "--nprocs", "1", "--model", "none",
              "--min-time", "0"]
    assert main([str(nlin6), str(tmp_path / "out6"), *common, "-w", str(tmp_path / "w6")]) == 0
    # no atlas in 2009c and no transform: refused before any work, naming both fixes
    code = main([str(c2009), str(tmp_path / "out9"), *common, "-w", str(tmp_path / "w9")])
    err = capfd.readouterr().err
    assert code == 64 and "--output-spaces MNI152NLin6Asym:res-2" in err
    assert not list((tmp_path / "out9").glob("sub-*")) if (tmp_path / "out9").exists() else True
    # what ignoring the difference gives: other voxels, other signals
    assert main([str(c2009), str(tmp_path / "outx"), *common, "-w", str(tmp_path / "wx"),
                 "--allow-atlas-space-mismatch"]) == 0
    # with TemplateFlow's transform the atlas is warped onto the 2009c grid
    write_itk_translation(transform_file(NLIN2009C, NLIN6), -SHIFT)
    assert main([str(c2009), str(tmp_path / "out9"), *common, "-w", str(tmp_path / "w9")]) == 0
    assert _snapshot(c2009) == before
    func6 = tmp_path / "out6" / "sub-01" / "func"
    func9 = tmp_path / "out9" / "sub-01" / "func"
    name = "sub-01_task-rest_space-{}_atlas-CC200_stat-mean_timeseries"
    ts6 = pd.read_csv(func6 / f"{name.format(NLIN6)}.tsv", sep="\t")
    ts9 = pd.read_csv(func9 / f"{name.format(NLIN2009C)}.tsv", sep="\t")
    assert list(ts6.columns) == list(ts9.columns)
    np.testing.assert_allclose(ts9.to_numpy(float), ts6.to_numpy(float), rtol=1e-6, atol=1e-6)
    tsx = pd.read_csv(tmp_path / "outx" / "sub-01" / "func" / f"{name.format(NLIN2009C)}.tsv",
                      sep="\t")
    assert np.nanmax(np.abs(tsx.to_numpy(float) - ts6.to_numpy(float))) > 0.1
    sidecar = json.loads((func9 / f"{name.format(NLIN2009C)}.json").read_text())
    assert sidecar["AtlasSpace"] == NLIN2009C
    assert sidecar["AtlasTransform"] == str(transform_file(NLIN2009C, NLIN6))
    assert (tmp_path / "out9" / "sourcedata" / "atlases" / f"tpl-{NLIN2009C}" / "anat"
            / f"tpl-{NLIN2009C}_atlas-CC200_dseg.nii.gz").is_file()


@pytest.mark.slow
def test_allow_atlas_space_mismatch_says_so(tmp_path: Path, templateflow: Path) -> None:
    make_dataset(tmp_path / "b", n_subjects=1, n_volumes=60, seed=3)
    _shift_to_2009c(tmp_path / "b")
    out = tmp_path / "out"
    assert main([str(tmp_path / "b" / "bids"), str(out), "participant", "--skip-bids-validation",
                 "--nprocs", "1", "--model", "none", "--min-time", "0",
                 "--allow-atlas-space-mismatch", "-w", str(tmp_path / "w")]) == 0
    sidecar = next((out / "sub-01" / "func").glob("*atlas-CC200_stat-mean_timeseries.json"))
    meta = json.loads(sidecar.read_text())
    assert f"space-{NLIN2009C}" in sidecar.name and meta["AtlasSpace"] == NLIN6
    assert "AtlasTransform" not in meta
