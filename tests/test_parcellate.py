"""ROI signal extraction on small synthetic images with known answers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.image import resample_img

from brainfm.atlases import custom_atlas, get_atlas
from brainfm.errors import InputError, UsageError
from brainfm.postproc.parcellate import ParcelSignals, extract_roi_signals

N_VOLS = 40


@pytest.fixture(scope="module")
def cc200_6mm(tmp_path_factory):
    """A BOLD run on a 6 mm grid painted with one known series per CC200 parcel."""
    folder = tmp_path_factory.mktemp("cc200_6mm")
    atlas = get_atlas("CC200")
    src = nib.load(atlas.image)
    affine = src.affine.copy()
    affine[:3, :3] *= 2.0
    shape = tuple(int(np.ceil(s / 2)) for s in src.shape)
    labels_img = resample_img(src, target_affine=affine, target_shape=shape,
                              interpolation="nearest", force_resample=True, copy_header=True)
    labels = np.asanyarray(labels_img.dataobj).astype(int)
    rng = np.random.default_rng(0)
    series = rng.standard_normal((N_VOLS, 201))  # column k: series of label k
    series[:, 0] = 0.0
    data = (1000 + 10 * series[:, labels]).transpose(1, 2, 3, 0)
    data += rng.standard_normal(data.shape[:3])[..., None]  # voxel offsets, constant in time
    data[labels == 0] = 0.0
    bold = folder / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), bold)
    mask = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8), affine), mask)
    return bold, mask, labels, series, atlas


def test_painted_cc200_series_are_recovered(cc200_6mm):
    bold, mask, labels, series, atlas = cc200_6mm
    out = extract_roi_signals(bold, [atlas], mask, min_coverage=0.5)
    assert list(out) == ["CC200"]
    sig = out["CC200"]
    assert isinstance(sig, ParcelSignals)
    assert sig.timeseries.shape == (N_VOLS, 200) and sig.timeseries.dtype == np.float64
    assert sig.roi_names == [f"CC200_{k:03d}" for k in range(1, 201)]
    present = np.isin(np.arange(1, 201), np.unique(labels))
    assert present.sum() > 150
    good = present & ~np.isnan(sig.timeseries[0])
    np.testing.assert_allclose(sig.coverage[present], 1.0)
    assert set(sig.low_coverage) == {n for n, p in zip(sig.roi_names, present, strict=True)
                                     if not p}
    for k in np.flatnonzero(good):
        r = np.corrcoef(sig.timeseries[:, k], series[:, k + 1])[0, 1]
        assert r > 0.999


def _toy(folder: Path, data: np.ndarray, mask: np.ndarray | None = None,
         name: str = "bold.nii.gz") -> tuple[Path, Path | None]:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    bold = folder / name
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), bold)
    if mask is None:
        return bold, None
    mask_file = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_file)
    return bold, mask_file


@pytest.fixture
def toy_atlas(tmp_path):
    """4x4x4 grid, 3 mm: parcel 1 = x<2 (32 voxels), parcel 2 = x>=2 (32 voxels)."""
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[:2] = 1
    labels[2:] = 2
    image = tmp_path / "toy_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([3.0, 3.0, 3.0, 1.0])), image)
    table = tmp_path / "toy_dseg.tsv"
    pd.DataFrame({"index": [1, 2], "name": ["left", "right"]}).to_csv(table, sep="\t",
                                                                      index=False)
    return custom_atlas(image, table, "Toy")


def test_half_covered_parcel(tmp_path, toy_atlas):
    rng = np.random.default_rng(1)
    data = 100 + rng.standard_normal((4, 4, 4, N_VOLS))
    mask = np.ones((4, 4, 4), dtype=bool)
    mask[0] = False  # parcel 1 keeps 16 of its 32 voxels
    data[3, :, :2] = 7.0  # 8 voxels of parcel 2 are constant (outside the field of view)
    bold, mask_file = _toy(tmp_path, data, mask)
    sig = extract_roi_signals(bold, [toy_atlas], mask_file, min_coverage=0.5)["Toy"]
    np.testing.assert_allclose(sig.coverage, [0.5, 0.75])
    assert sig.low_coverage == []
    expected_left = data[1].reshape(-1, N_VOLS).mean(axis=0)
    np.testing.assert_allclose(sig.timeseries[:, 0], expected_left, rtol=1e-6)
    counted = np.concatenate([data[2].reshape(-1, N_VOLS), data[3, :, 2:].reshape(-1, N_VOLS)])
    np.testing.assert_allclose(sig.timeseries[:, 1], counted.mean(axis=0), rtol=1e-6)
    strict = extract_roi_signals(bold, [toy_atlas], mask_file, min_coverage=0.6)["Toy"]
    assert strict.low_coverage == ["left"]
    assert np.isnan(strict.timeseries[:, 0]).all() and np.isfinite(strict.timeseries[:, 1]).all()


def test_several_atlases_from_one_read_and_no_mask(tmp_path, toy_atlas):
    data = 100 + np.random.default_rng(2).standard_normal((4, 4, 4, N_VOLS))
    data[0, 0, 0] = np.nan  # without a mask, non-finite voxels are simply left out
    bold, _ = _toy(tmp_path, data)
    whole = np.ones((4, 4, 4), dtype=np.int16)
    image = tmp_path / "whole_dseg.nii.gz"
    nib.save(nib.Nifti1Image(whole, np.diag([3.0, 3.0, 3.0, 1.0])), image)
    table = tmp_path / "whole_dseg.tsv"
    pd.DataFrame({"index": [1], "name": ["brain"]}).to_csv(table, sep="\t", index=False)
    whole_atlas = custom_atlas(image, table, "Whole")
    out = extract_roi_signals(bold, [toy_atlas, whole_atlas], None)
    assert list(out) == ["Toy", "Whole"]
    flat = data.reshape(-1, N_VOLS)
    np.testing.assert_allclose(out["Whole"].timeseries[:, 0],
                               np.nanmean(flat[1:], axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["Whole"].coverage, [63 / 64])
    with pytest.raises(UsageError, match="distinct"):
        extract_roi_signals(bold, [toy_atlas, toy_atlas], None)
    with pytest.raises(UsageError, match="min-coverage"):
        extract_roi_signals(bold, [toy_atlas], None, min_coverage=1.5)


def test_truncated_gzip_is_an_input_error(tmp_path, toy_atlas):
    data = 100 + np.random.default_rng(3).standard_normal((4, 4, 4, N_VOLS))
    bold, mask_file = _toy(tmp_path, data, np.ones((4, 4, 4)))
    raw = bold.read_bytes()
    bold.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as err:
        extract_roi_signals(bold, [toy_atlas], mask_file)
    assert str(bold) in str(err.value) and "truncated" in str(err.value)
    assert err.value.exit_code == 66
    bold.write_bytes(raw[:200])  # not even a full header
    with pytest.raises(InputError, match=str(bold)):
        extract_roi_signals(bold, [toy_atlas], mask_file)


def test_nan_inside_mask_is_an_input_error(tmp_path, toy_atlas):
    data = 100 + np.random.default_rng(4).standard_normal((4, 4, 4, N_VOLS))
    data[1, 2, 3, 5] = np.nan
    bold, mask_file = _toy(tmp_path, data, np.ones((4, 4, 4)))
    with pytest.raises(InputError, match=r"NaN or infinite values in 1 voxel.*\(1, 2, 3\)"):
        extract_roi_signals(bold, [toy_atlas], mask_file)
    mask = np.ones((4, 4, 4))
    mask[1, 2, 3] = 0
    bold, mask_file = _toy(tmp_path, data, mask)
    out = extract_roi_signals(bold, [toy_atlas], mask_file)["Toy"]
    assert np.isfinite(out.timeseries).all()


def test_not_4d_and_grid_mismatch(tmp_path, toy_atlas):
    bold3d, _ = _toy(tmp_path, np.ones((4, 4, 4)), name="vol.nii.gz")
    with pytest.raises(InputError, match="4-D"):
        extract_roi_signals(bold3d, [toy_atlas], None)
    data = 100 + np.random.default_rng(5).standard_normal((4, 4, 4, N_VOLS))
    bold, _ = _toy(tmp_path, data)
    wrong = tmp_path / "mask_wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 4, 4), dtype=np.uint8), np.diag([3.0, 3, 3, 1])),
             wrong)
    with pytest.raises(InputError, match="not on the grid"):
        extract_roi_signals(bold, [toy_atlas], wrong)
    with pytest.raises(InputError, match="does not exist"):
        extract_roi_signals(tmp_path / "missing_bold.nii.gz", [toy_atlas], None)


def _reference_means(bold: Path, labels: np.ndarray, mask: np.ndarray | None, n_rois: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Plain nibabel + numpy: whole-array load, loop over parcels (the pre-streaming method)."""
    data = nib.load(bold).get_fdata(dtype=np.float64)
    flat = data.reshape(-1, data.shape[3])
    finite = np.isfinite(flat).all(axis=1)
    keep = finite & (np.nanmax(flat, axis=1) > np.nanmin(flat, axis=1))
    if mask is not None:
        keep &= mask.reshape(-1)
    lab = labels.reshape(-1)
    means = np.full((data.shape[3], n_rois), np.nan)
    coverage = np.zeros(n_rois)
    for k in range(1, n_rois + 1):
        members = lab == k
        if members.any():
            coverage[k - 1] = (members & keep).sum() / members.sum()
        if (members & keep).any():
            means[:, k - 1] = flat[members & keep].mean(axis=0)
    return means, coverage


@pytest.mark.parametrize("name,dtype,scaled,mask_kind", [
    ("bold.nii.gz", np.float32, False, "mask"),
    ("bold.nii", np.float32, False, "mask"),
    ("bold.nii.gz", np.int16, True, "mask"),
    ("bold.nii", np.int16, True, "none"),
    ("bold.nii.gz", np.float64, False, "none"),
])
def test_streamed_extraction_matches_a_whole_array_reference(tmp_path, monkeypatch, name,
                                                             dtype, scaled, mask_kind):
    """Blocks of 3 volumes (so every code path streams), several atlases, constant and
    non-finite voxels, scaled integer storage and memory-mapped .nii: the streamed means equal
    a whole-array nibabel + numpy reference within 1e-5 (relative)."""
    from brainfm.postproc import nifti_stream

    rng = np.random.default_rng(7)
    shape = (6, 5, 4)
    n_vols = 23
    labels = rng.integers(0, 5, size=shape).astype(np.int16)  # 4 parcels + background
    data = 800 + 50 * rng.standard_normal(shape + (n_vols,))
    data[0, 0, :] = 0.0  # zero-filled (outside the field of view): constant
    data[1, 1, 1] = 123.0  # constant, non-zero
    mask = np.ones(shape, dtype=bool)
    mask[5] = False
    if dtype is not np.int16:
        data[2, 3, 1, 17] = np.nan  # only with no mask is this allowed (and left out)
        mask[2, 3, 1] = False
    voxel_bytes = np.prod(shape) * np.dtype(dtype).itemsize
    monkeypatch.setattr(nifti_stream, "BLOCK_BYTES", 3 * voxel_bytes)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    img = nib.Nifti1Image(data.astype(dtype) if not scaled else
                          np.rint((data - 500) / 0.25).astype(dtype), affine)
    if scaled:
        img.header.set_slope_inter(0.25, 500.0)
    bold = tmp_path / name
    nib.save(img, bold)
    mask_file = None
    if mask_kind == "mask":
        mask_file = tmp_path / "mask.nii.gz"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_file)
    image = tmp_path / "four_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), image)
    table = tmp_path / "four_dseg.tsv"
    pd.DataFrame({"index": [1, 2, 3, 4], "name": list("abcd")}).to_csv(table, sep="\t",
                                                                      index=False)
    halves = np.where(labels > 0, 1 + (np.arange(shape[0])[:, None, None] >= 3), 0)
    image2 = tmp_path / "halves_dseg.nii.gz"
    nib.save(nib.Nifti1Image(halves.astype(np.int16), affine), image2)
    table2 = tmp_path / "halves_dseg.tsv"
    pd.DataFrame({"index": [1, 2], "name": ["front", "back"]}).to_csv(table2, sep="\t",
                                                                     index=False)
    atlases = [custom_atlas(image, table, "Four"), custom_atlas(image2, table2, "Halves")]

    out = extract_roi_signals(bold, atlases, mask_file, min_coverage=0.0)
    reference_mask = mask if mask_file is not None else None
    for atlas, lab, n in (("Four", labels, 4), ("Halves", halves, 2)):
        means, coverage = _reference_means(bold, lab, reference_mask, n)
        np.testing.assert_allclose(out[atlas].timeseries, means, rtol=1e-5)
        np.testing.assert_allclose(out[atlas].coverage, coverage)
