"""Tests of brainfm's minimal preprocessing of raw BOLD (brainfm.preproc, workflows.preproc)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainfm.atlases import get_atlas
from brainfm.bidsapp.inputs import collect_runs
from brainfm.errors import InputError, NothingSelectedError, UsageError
from brainfm.postproc.confounds import list_strategies, select_confounds
from brainfm.postproc.parcellate import extract_roi_signals
from brainfm.preproc.confounds import dvars, expand
from brainfm.preproc.inputs import check_raw_bold, collect_raw_runs, find_raw_bold
from brainfm.preproc.outputs import GENERATED_BY
from brainfm.preproc.realign import (
    MOTION_COLUMNS,
    estimate_motion,
    fov_center,
    framewise_displacement,
    relative_rms,
    rigid_matrix,
    rigid_params,
    slice_info,
    slice_time_correct,
    slice_times_per_index,
)
from brainfm.preproc.steps import run_resampling
from brainfm.preproc.templates import (
    derive_tissue_masks,
    output_grid,
    template_brain_mask,
    template_t1w_file,
    template_tissue_mask,
)
from brainfm.testdata.native import NativeDatasetTruth, make_native_dataset
from brainfm.workflows.preproc import run_minimal_preproc

LOGGER = logging.getLogger(__name__)
N_VOLUMES = 64


def _corr_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


# ---------------------------------------------------------------------------------------------
# the end-to-end fixture: a native-space raw BOLD run, preprocessed once per module


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> NativeDatasetTruth:
    return make_native_dataset(tmp_path_factory.mktemp("native"), n_volumes=N_VOLUMES, seed=2)


@pytest.fixture(scope="module")
def preprocessed(native: NativeDatasetTruth,
                 tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("minimal")
    started = time.time()
    out = run_minimal_preproc(native.bids_dir, root / "minimal", ["sub-01"], "rest",
                              root / "work", 2, 1, resolution=3, poll_sleep=0.05)
    elapsed = time.time() - started
    LOGGER.warning("minimal preprocessing of %d volumes took %.1f s", N_VOLUMES, elapsed)
    runs = collect_runs(out, ["01"], None, "rest")
    nodes = root / "work" / "minimal_preproc_wf" / "run_sub01_taskrest_wf"
    return {"out": out, "run": runs["01"][0], "seconds": elapsed, "nodes": nodes}


def test_native_fixture_is_raw_native_bold(native: NativeDatasetTruth) -> None:
    img = nib.load(native.raw_bold)
    assert img.shape[3] == N_VOLUMES and len(img.shape) == 4
    assert np.allclose(img.header.get_zooms()[:3], 4.0)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    assert img.get_data_dtype() == np.int16
    sidecar = json.loads(native.raw_bold.with_name("sub-01_task-rest_bold.json").read_text())
    assert sidecar["RepetitionTime"] == 2.0
    assert len(sidecar["SliceTiming"]) == img.shape[2]
    assert not (native.bids_dir / "derivatives").exists()
    assert find_raw_bold(native.bids_dir, ["01"], "rest") == [native.raw_bold]
    assert np.allclose(native.motion_params[0], 0.0)
    # every parameter carries real motion
    assert np.all(np.ptp(native.motion_params[:, :3], axis=0) > 0.8)
    assert np.all(np.ptp(native.motion_params[:, 3:], axis=0) > np.deg2rad(0.8))


def test_outputs_are_an_fmriprep_style_dataset(preprocessed: dict,
                                               native: NativeDatasetTruth) -> None:
    out: Path = preprocessed["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == GENERATED_BY
    run = preprocessed["run"]
    assert run.space == "MNI152NLin6Asym"
    std = "sub-01_task-rest_space-MNI152NLin6Asym_res-3"
    assert run.bold_file.name == f"{std}_desc-preproc_bold.nii.gz"
    assert run.mask_file.name == f"{std}_desc-brain_mask.nii.gz"
    assert run.repetition_time == 2.0 and run.n_volumes == N_VOLUMES
    meta = json.loads(run.bold_file.with_name(
        run.bold_file.name.replace(".nii.gz", ".json")).read_text())
    assert meta["RepetitionTime"] == 2.0
    assert meta["SliceTimingCorrected"] is True
    assert meta["StartTime"] == pytest.approx(native.reference_time, abs=1e-6)
    assert meta["Sources"] == ["bids:raw:sub-01/func/sub-01_task-rest_bold.nii.gz"]
    assert meta["brainfm"]["RegistrationDice"] > 0.85
    img = nib.load(run.bold_file)
    grid = output_grid(3)
    assert img.shape == grid.shape + (N_VOLUMES,)
    assert np.allclose(img.affine, grid.affine)
    mask = np.asarray(nib.load(run.mask_file).dataobj) > 0
    assert mask.sum() > 0.9 * template_brain_mask(grid).sum()


def test_confounds_have_fmriprep_columns(preprocessed: dict, native: NativeDatasetTruth) -> None:
    run = preprocessed["run"]
    table = pd.read_csv(run.confounds_file, sep="\t", na_values=["n/a"])
    assert len(table) == N_VOLUMES
    for base in (*MOTION_COLUMNS, "global_signal", "white_matter", "csf"):
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert f"{base}{suffix}" in table.columns
    for column in ("framewise_displacement", "rmsd", "dvars", "std_dvars", "a_comp_cor_00",
                   "w_comp_cor_00", "c_comp_cor_00", "cosine00"):
        assert column in table.columns
    assert table["framewise_displacement"].isna().tolist() == [True] + [False] * (N_VOLUMES - 1)
    fd = framewise_displacement(table[list(MOTION_COLUMNS)].to_numpy())
    assert np.allclose(fd[1:], table["framewise_displacement"].to_numpy()[1:])
    meta = json.loads(run.confounds_file.with_suffix(".json").read_text())
    assert meta["w_comp_cor_00"]["Mask"] == "WM" and meta["c_comp_cor_00"]["Mask"] == "CSF"
    assert meta["a_comp_cor_00"]["Mask"] == "combined"
    for strategy in list_strategies():
        design = select_confounds(table, strategy, run.confounds_file)
        assert len(design) == N_VOLUMES
        assert np.isfinite(design.to_numpy()).all()


def test_roi_series_recover_the_painted_signals(preprocessed: dict,
                                                native: NativeDatasetTruth) -> None:
    run = preprocessed["run"]
    signals = extract_roi_signals(run.bold_file, [get_atlas("CC200")], run.mask_file)["CC200"]
    r = _corr_columns(signals.timeseries, native.expected_roi_series())
    LOGGER.warning("ROI recovery: median r %.3f, 10th percentile %.3f, %d ROIs",
                   np.nanmedian(r), np.nanpercentile(r, 10), np.isfinite(r).sum())
    assert np.isfinite(r).sum() >= 190
    assert np.nanmedian(r) >= 0.8


def test_estimated_motion_matches_the_planted_motion(preprocessed: dict,
                                                     native: NativeDatasetTruth) -> None:
    table = pd.read_csv(preprocessed["run"].confounds_file, sep="\t", na_values=["n/a"])
    estimated = table[list(MOTION_COLUMNS)].to_numpy()
    r = _corr_columns(estimated, native.motion_params)
    LOGGER.warning("motion recovery r: %s", dict(zip(MOTION_COLUMNS, np.round(r, 3),
                                                    strict=True)))
    # same axes and signs: no sign or axis juggling is needed
    assert np.all(r >= 0.7), r


def test_two_mm_grid_of_fmriprep_res_2(preprocessed: dict, native: NativeDatasetTruth,
                                       tmp_path: Path) -> None:
    nodes: Path = preprocessed["nodes"]
    bold, mask = run_resampling(nodes / "slice_timing" / "bold_stc.nii",
                                nodes / "motion" / "motion.npz",
                                nodes / "register" / "registration.json", tmp_path, 2)
    img = nib.load(bold)
    grid = output_grid(2)
    assert img.shape == grid.shape + (N_VOLUMES,) and np.allclose(img.affine, grid.affine)
    assert img.header.get_zooms() == (2.0, 2.0, 2.0, 2.0)
    signals = extract_roi_signals(bold, [get_atlas("CC200")], mask)["CC200"]
    r = _corr_columns(signals.timeseries, native.expected_roi_series())
    LOGGER.warning("ROI recovery on the 2 mm grid: median r %.3f", np.nanmedian(r))
    assert np.nanmedian(r) >= 0.8


def test_rerun_reuses_the_work_folder(preprocessed: dict, native: NativeDatasetTruth,
                                      tmp_path: Path) -> None:
    out: Path = preprocessed["out"]
    work = out.parent / "work"
    before = preprocessed["run"].bold_file.stat().st_mtime
    started = time.time()
    run_minimal_preproc(native.bids_dir, out, "01", "rest", work, 1, 1, resolution=3,
                        poll_sleep=0.05)
    assert time.time() - started < preprocessed["seconds"]
    assert preprocessed["run"].bold_file.stat().st_mtime >= before
    assert native.bids_dir.joinpath("derivatives").exists() is False


# ---------------------------------------------------------------------------------------------
# bad input


def _raw_dataset(root: Path, data: np.ndarray, sidecar: dict) -> Path:
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), func / "sub-01_task-rest_bold.nii.gz")
    (func / "sub-01_task-rest_bold.json").write_text(json.dumps(sidecar))
    return func / "sub-01_task-rest_bold.nii.gz"


def test_3d_bold_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    bold = _raw_dataset(tmp_path / "bids", np.ones((8, 8, 6), np.int16),
                        {"RepetitionTime": 2.0, "TaskName": "rest"})
    with pytest.raises(InputError, match=str(bold)) as info:
        run_minimal_preproc(tmp_path / "bids", tmp_path / "out", None, "rest",
                            tmp_path / "work", 1, 1)
    assert info.value.exit_code == 66
    assert "4-D" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_repetition_time_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    bold = _raw_dataset(tmp_path / "bids", np.ones((8, 8, 8, 5), np.int16),
                        {"TaskName": "rest"})
    with pytest.raises(InputError, match="RepetitionTime") as info:
        run_minimal_preproc(tmp_path / "bids", tmp_path / "out", ["01"], "rest",
                            tmp_path / "work", 1, 1)
    assert str(bold) in str(info.value)
    assert info.value.exit_code == 66


def test_bad_slice_timing_and_missing_participant(tmp_path: Path) -> None:
    bold = _raw_dataset(tmp_path / "bids", np.ones((8, 8, 8, 5), np.int16),
                        {"RepetitionTime": 2.0, "SliceTiming": [0.0, 1.0, 0.5]})
    with pytest.raises(InputError, match="8 slices"):
        collect_raw_runs(tmp_path / "bids", None, None, "rest")
    with pytest.raises(InputError, match=r"\[0, RepetitionTime"):
        check_raw_bold(bold, {"RepetitionTime": 2.0,
                              "SliceTiming": [0, 0.25, 0.5, 1, 1.25, 1.5, 2, 2.5]},
                       (("sub", "01"), ("task", "rest")))
    with pytest.raises(NothingSelectedError):
        collect_raw_runs(tmp_path / "bids", ["02"], None, "rest")
    with pytest.raises(UsageError):
        run_minimal_preproc(tmp_path / "bids", tmp_path / "out", None, "rest",
                            tmp_path / "work", 1, 1, resolution=4)


def test_partial_coverage_epi_is_refused_naming_size_and_length(tmp_path: Path) -> None:
    bold = _raw_dataset(tmp_path / "bids", np.ones((64, 64, 3, 20), np.int16),
                        {"RepetitionTime": 2.0, "TaskName": "rest"})
    with pytest.raises(InputError, match=str(bold)) as info:
        run_minimal_preproc(tmp_path / "bids", tmp_path / "out", None, "rest",
                            tmp_path / "work", 1, 1)
    assert "64x64x3 voxels (20 volumes, 40 s)" in str(info.value)
    assert "--preproc fmriprep" in str(info.value) and not (tmp_path / "out").exists()


def test_check_raw_bold_reads_slice_timing_and_direction(tmp_path: Path) -> None:
    bold = _raw_dataset(tmp_path / "bids", np.ones((8, 8, 8, 5), np.int16), {})
    times = [0.0, 1.0, 0.2, 1.2, 0.4, 1.4, 0.6, 1.6]
    run = check_raw_bold(bold, {"RepetitionTime": 2.0, "SliceTiming": times,
                                "SliceEncodingDirection": "k-"},
                         (("sub", "01"), ("task", "rest")))
    assert run.slice_timing == tuple(times) and run.slice_encoding_direction == "k-"
    assert run.prefix == "sub-01_task-rest" and run.n_volumes == 5
    simultaneous = check_raw_bold(bold, {"RepetitionTime": 2.0, "SliceTiming": [0.0] * 8},
                                  (("sub", "01"), ("task", "rest")))
    assert simultaneous.slice_timing is None


# ---------------------------------------------------------------------------------------------
# plain functions


def test_rigid_parameters_round_trip() -> None:
    center = np.array([3.0, -20.0, 12.0])
    params = np.array([1.2, -0.7, 0.4, 0.02, -0.015, 0.01])
    m = rigid_matrix(params, center)
    assert np.allclose(rigid_params(m, center), params)
    # the rotation centre does not move under a pure rotation
    rot = rigid_matrix([0, 0, 0, 0.1, 0.05, -0.2], center)
    assert np.allclose(rot[:3, :3] @ center + rot[:3, 3], center)
    # Rz Ry Rx order: a rotation about z alone turns +x towards +y
    rz = rigid_matrix([0, 0, 0, 0, 0, np.pi / 2], [0, 0, 0])
    assert np.allclose(rz[:3, :3] @ [1, 0, 0], [0, 1, 0])


def test_framewise_displacement_and_rmsd() -> None:
    params = np.zeros((3, 6))
    params[1, 0] = 0.5
    params[2, 3] = 0.01
    fd = framewise_displacement(params)
    assert np.isnan(fd[0]) and fd[1] == pytest.approx(0.5) and fd[2] == pytest.approx(1.0)
    center = np.zeros(3)
    rms = relative_rms(np.stack([rigid_matrix(p, center) for p in params]), center)
    assert np.isnan(rms[0]) and rms[1] == pytest.approx(0.5)


def test_slice_info_and_order() -> None:
    assert slice_info(None) == (2, 1)
    assert slice_info("j-") == (1, -1)
    with pytest.raises(InputError):
        slice_info("z")
    assert list(slice_times_per_index([0.0, 1.0, 0.5], 3, -1)) == [0.5, 1.0, 0.0]


def test_slice_time_correction_aligns_slices() -> None:
    tr, n = 2.0, 60
    times = np.array([0.0, 1.0, 0.5, 1.5])
    period = 40.0
    data = np.zeros((2, 2, 4, n), dtype=np.float32)
    for k, s in enumerate(times):
        data[:, :, k, :] = np.sin(2 * np.pi * (np.arange(n) * tr + s) / period)
    corrected, t_ref = slice_time_correct(data, tr, times)
    assert t_ref == pytest.approx(0.75)
    expected = np.sin(2 * np.pi * (np.arange(n) * tr + t_ref) / period)
    for k in range(4):
        assert np.abs(corrected[0, 0, k, 2:-2] - expected[2:-2]).max() < 2e-3


def test_estimate_motion_recovers_a_known_translation_with_its_sign() -> None:
    rng = np.random.default_rng(0)
    shape = (24, 24, 16)
    base = np.zeros(shape)
    base[6:18, 5:19, 4:12] = 100.0
    base += rng.normal(0.0, 1.0, shape)
    from scipy import ndimage

    base = ndimage.gaussian_filter(base, 1.0) + 10.0
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    shifts_mm = [0.0, 0.0, 1.5, 1.5, 3.0, 3.0]
    vols = [ndimage.shift(base, (s / 3.0, 0.0, 0.0), order=3, mode="nearest")
            for s in shifts_mm]  # the head moves +x (voxel axis 0 = world x)
    data = np.stack(vols, axis=-1)
    est = estimate_motion(data, affine, 2.0, speedup=(2,), loops=(2,), maxiter=16)
    assert np.allclose(est.params[:, 0], shifts_mm, atol=0.3)
    assert np.abs(est.params[:, 1:3]).max() < 0.3
    assert np.allclose(est.center, fov_center(shape, affine))


def test_dvars_flags_a_spike() -> None:
    rng = np.random.default_rng(1)
    data = 1000.0 + rng.normal(0.0, 5.0, (500, 30))
    data[:, 15] += 40.0
    d, std = dvars(data)
    assert np.isnan(d[0]) and np.isnan(std[0])
    assert np.nanargmax(d) in (15, 16) and std[15] > 3 * np.nanmedian(std)
    assert set(expand("x", np.arange(3.0))) == {"x", "x_derivative1", "x_power2",
                                                 "x_derivative1_power2"}


def test_bundled_template_files() -> None:
    grid2, grid3 = output_grid(2), output_grid(3)
    assert grid2.shape == (91, 109, 91) and grid3.shape == (63, 75, 61)
    brain = template_brain_mask()
    wm, csf = template_tissue_mask("WM"), template_tissue_mask("CSF")
    assert 30_000 < wm.sum() < 80_000 and 1_000 < csf.sum() < 10_000
    assert not (wm & csf).any() and (wm <= brain).all() and (csf <= brain).all()
    t1w = nib.load(template_t1w_file())
    derived = derive_tissue_masks(np.asarray(t1w.dataobj, dtype=np.float64), brain, 2.0)
    assert (derived["WM"] == wm).all() and (derived["CSF"] == csf).all()
    assert template_tissue_mask("WM", grid3).shape == grid3.shape
    with pytest.raises(UsageError):
        output_grid(4)


def test_bids_filter_selects_raw_runs(tmp_path: Path) -> None:
    """``--bids-filter-file``'s ``bold`` query selects the raw runs of the minimal
    preprocessing: one of two runs, and a filter matching nothing names itself."""
    root = tmp_path / "bids"
    _raw_dataset(root, np.ones((8, 8, 8, 5), np.int16), {"RepetitionTime": 2.0})
    func = root / "sub-01" / "func"
    for run in ("1", "2"):
        base = f"sub-01_task-rest_run-{run}_bold"
        (func / f"{base}.nii.gz").write_bytes((func / "sub-01_task-rest_bold.nii.gz").read_bytes())
        (func / f"{base}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    for name in ("sub-01_task-rest_bold.nii.gz", "sub-01_task-rest_bold.json"):
        (func / name).unlink()
    everything = collect_raw_runs(root, None, None, "rest")
    assert [r.prefix for r in everything["01"]] == ["sub-01_task-rest_run-1",
                                                    "sub-01_task-rest_run-2"]
    chosen = collect_raw_runs(root, None, None, "rest", {"run": 2})
    assert [r.prefix for r in chosen["01"]] == ["sub-01_task-rest_run-2"]
    with pytest.raises(NothingSelectedError, match="--bids-filter-file"):
        collect_raw_runs(root, None, None, "rest", {"run": 7})


@pytest.mark.parametrize("backend", ["minimal", "fmriprep"])
def test_participant_level_hands_the_bold_filter_to_the_preprocessing(tmp_path, monkeypatch,
                                                                      backend):
    from brainfm.bidsapp.config import Config
    from brainfm.bidsapp.participant import preprocess_raw
    from brainfm.workflows import preproc as wf_preproc

    seen = {}
    monkeypatch.setattr(wf_preproc, f"run_{backend}" if backend == "fmriprep"
                        else "run_minimal_preproc",
                        lambda *a, **k: seen.update(k) or tmp_path)
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                    preproc=backend, bids_filters={"bold": {"run": 2}, "mask": {"res": "2"}})
    preprocess_raw(config)
    assert seen["bold_filter"] == {"run": 2}
