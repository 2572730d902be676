"""Tests of the synthetic test-data maker (brainfm.testdata)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainfm.errors import InputError, UsageError
from brainfm.preproc.realign import MOTION_COLUMNS
from brainfm.testdata import DatasetTruth, make_dataset
from brainfm.testdata.cli import main as cli_main

N_VOL = 120
SPACE = "MNI152NLin6Asym"


@pytest.fixture(scope="module")
def motion_ds(tmp_path_factory: pytest.TempPathFactory) -> DatasetTruth:
    return make_dataset(tmp_path_factory.mktemp("motion"), seed=3)


@pytest.fixture(scope="module")
def clean_ds(tmp_path_factory: pytest.TempPathFactory) -> DatasetTruth:
    # Same subjects, signals, noise and motion parameters; only the artefact is left out.
    return make_dataset(tmp_path_factory.mktemp("clean"), seed=3, artefact=False)


def _parcel_means(img_path: Path, labels: np.ndarray) -> np.ndarray:
    """(T, 200) mean of the image over each CC200 parcel."""
    data = np.asarray(nib.load(img_path).dataobj, dtype=np.float64)
    lab = labels.ravel().astype(int)
    inside = lab > 0
    x = data.reshape(-1, data.shape[-1])[inside]
    lab = lab[inside]
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(1, 201))
    sums = np.add.reduceat(x[order], starts, axis=0)
    return (sums / np.bincount(lab, minlength=201)[1:, None]).T


def _corr_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def _labels(ds: DatasetTruth) -> np.ndarray:
    return np.asarray(nib.load(ds.atlas).dataobj).astype(int)


# ---------------------------------------------------------------------------------------------
# layout and names


def test_files_have_fmriprep_names(motion_ds: DatasetTruth) -> None:
    assert motion_ds.bids_dir == motion_ds.out_dir / "bids"
    assert motion_ds.fmriprep_dir == motion_ds.bids_dir / "derivatives" / "fmriprep"
    assert [r.subject for r in motion_ds.runs] == ["01", "02"]
    assert not [p for p in motion_ds.out_dir.iterdir() if p.name not in {"bids", "truth"}]
    for run in motion_ds.runs:
        sub = run.subject
        func = motion_ds.fmriprep_dir / f"sub-{sub}" / "func"
        assert (
            run.preproc_bold == func / f"sub-{sub}_task-rest_space-{SPACE}_desc-preproc_bold.nii.gz"
        )
        assert run.brain_mask == func / f"sub-{sub}_task-rest_space-{SPACE}_desc-brain_mask.nii.gz"
        assert run.confounds == func / f"sub-{sub}_task-rest_desc-confounds_timeseries.tsv"
        assert (
            run.raw_bold == motion_ds.bids_dir / f"sub-{sub}/func/sub-{sub}_task-rest_bold.nii.gz"
        )
        for path in (run.preproc_bold, run.brain_mask, run.confounds, run.raw_bold, run.truth_file):
            assert path.is_file(), path
        assert run.confounds.with_suffix(".json").is_file()
        side = json.loads(
            run.preproc_bold.with_name(
                run.preproc_bold.name.replace(".nii.gz", ".json")
            ).read_text()
        )
        assert side["RepetitionTime"] == 2.0 and side["SkullStripped"] is True
        raw_side = json.loads(run.raw_bold.with_name(f"sub-{sub}_task-rest_bold.json").read_text())
        assert raw_side == {"RepetitionTime": 2.0, "TaskName": "rest"}
        img = nib.load(run.preproc_bold)
        assert img.shape[-1] == N_VOL and img.get_data_dtype() == np.float32
        assert np.allclose(img.header.get_zooms(), (3.0, 3.0, 3.0, 2.0))
        mask = nib.load(run.brain_mask)
        assert mask.shape == img.shape[:3] and np.allclose(mask.affine, img.affine)
        assert nib.load(run.raw_bold).shape == img.shape
    desc = json.loads((motion_ds.fmriprep_dir / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "fMRIPrep"
    assert "brainfm-make-testdata" in desc["GeneratedBy"][0]["Description"]
    parts = motion_ds.participants()
    assert list(parts.columns) == ["participant_id", "age", "sex", "fluid_intelligence"]
    assert list(parts.participant_id) == ["sub-01", "sub-02"]
    assert parts.age.between(5, 70).all() and set(parts.sex) <= {"M", "F"}
    assert (motion_ds.bids_dir / "participants.json").is_file()


def test_sessions_runs_and_truth_roundtrip(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_subjects=1, n_sessions=2, n_runs=2, n_volumes=20, tr=1.5)
    names = sorted(r.preproc_bold.name for r in ds.runs)
    assert names == [
        f"sub-01_ses-{s}_task-rest_run-{r}_space-{SPACE}_desc-preproc_bold.nii.gz"
        for s in ("01", "02")
        for r in ("1", "2")
    ]
    run = ds.get_run("sub-01", "ses-02", "run-1")
    assert run.preproc_bold.parent == ds.fmriprep_dir / "sub-01" / "ses-02" / "func"
    assert run.entities == {"subject": "01", "session": "02", "task": "rest", "run": "1"}
    arrays = ds.load_run("01", "02", "1")
    assert arrays["roi_signal"].shape == (20, 200) and float(arrays["tr"]) == 1.5
    again = DatasetTruth.from_dir(tmp_path)
    assert again == ds
    with pytest.raises(KeyError):
        ds.get_run("01")


# ---------------------------------------------------------------------------------------------
# confounds


FIRST_ROW_NA = {"std_dvars", "dvars", "framewise_displacement", "rmsd"} | {
    f"{base}_{suffix}"
    for base in ("global_signal", "csf", "white_matter", *MOTION_COLUMNS)
    for suffix in ("derivative1", "derivative1_power2")
}


def test_confounds_columns_and_rows(motion_ds: DatasetTruth) -> None:
    run = motion_ds.runs[0]
    conf = run.load_confounds()
    expected = set(FIRST_ROW_NA)
    for base in ("global_signal", "csf", "white_matter", *MOTION_COLUMNS):
        expected |= {base, f"{base}_power2"}
    expected |= {f"a_comp_cor_{i:02d}" for i in range(6)}
    expected |= {f"c_comp_cor_{i:02d}" for i in range(5)}
    expected |= {f"w_comp_cor_{i:02d}" for i in range(5)}
    expected |= {"cosine00", "cosine01"}  # floor(2 * 120 * 2 / 128) - 1 cosines
    assert expected <= set(conf.columns)
    assert len(conf) == N_VOL
    first = conf.iloc[0]
    assert set(first.index[first.isna()]) == FIRST_ROW_NA
    assert not conf.iloc[1:].isna().any().any()
    raw_first = run.confounds.read_text().splitlines()[1].split("\t")
    header = run.confounds.read_text().splitlines()[0].split("\t")
    assert {h for h, v in zip(header, raw_first, strict=True) if v == "n/a"} == FIRST_ROW_NA
    meta = json.loads(run.confounds.with_suffix(".json").read_text())
    assert meta["a_comp_cor_00"]["Mask"] == "combined"
    assert meta["c_comp_cor_00"]["Mask"] == "CSF" and meta["w_comp_cor_00"]["Mask"] == "WM"
    assert all(meta[k]["Retained"] for k in meta)


def test_fd_matches_params(motion_ds: DatasetTruth) -> None:
    for run in motion_ds.runs:
        conf = run.load_confounds()
        params = conf[list(MOTION_COLUMNS)].to_numpy()
        truth = run.load()
        np.testing.assert_array_equal(params, truth["motion_params"])
        d = np.abs(np.diff(params, axis=0))
        fd = d[:, :3].sum(axis=1) + 50.0 * d[:, 3:].sum(axis=1)
        np.testing.assert_allclose(conf.framewise_displacement.to_numpy()[1:], fd, atol=1e-8)
        np.testing.assert_allclose(conf.trans_x_derivative1.to_numpy()[1:], np.diff(params[:, 0]))
        assert np.abs(params[:, :3]).max() <= 1.0 and np.abs(params[:, 3:]).max() <= 0.02
        spikes = truth["spike_volumes"]
        assert len(spikes) >= 2
        assert (fd[spikes - 1] > 0.5).all()  # fd[i] is volume i + 1
        assert 2 <= (fd > 0.5).sum() <= 4 * len(spikes)
        assert np.median(fd) < 0.2


def test_global_wm_csf_signals_are_means_of_written_bold(motion_ds: DatasetTruth) -> None:
    run = motion_ds.runs[1]
    conf = run.load_confounds()
    data = np.asarray(nib.load(run.preproc_bold).dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(run.brain_mask).dataobj) > 0
    assert (data[~mask] == 0).all()
    inside = data[mask]
    assert inside.min() > 900
    np.testing.assert_allclose(conf.global_signal, inside.mean(axis=0), atol=1e-4)
    for col, path in (("white_matter", motion_ds.wm_mask), ("csf", motion_ds.csf_mask)):
        tissue = np.asarray(nib.load(path).dataobj) > 0
        assert tissue.sum() > 1000 and not (tissue & ~mask).any()
        np.testing.assert_allclose(conf[col], data[tissue].mean(axis=0), atol=1e-4)


def test_nilearn_load_confounds_reads_the_files(motion_ds: DatasetTruth) -> None:
    from nilearn.interfaces.fmriprep import load_confounds

    conf, sample_mask = load_confounds(
        str(motion_ds.runs[0].preproc_bold),
        strategy=("motion", "wm_csf", "high_pass", "compcor"),
        motion="full",
        wm_csf="basic",
        compcor="anat_separated",
        n_compcor=5,
    )
    assert conf.shape[0] == N_VOL and "trans_x_derivative1_power2" in conf.columns
    assert sample_mask is None


# ---------------------------------------------------------------------------------------------
# painting


def test_bundled_atlas_resampled_to_the_images_gives_the_painted_labels(
    motion_ds: DatasetTruth,
) -> None:
    from nilearn.image import resample_to_img

    from brainfm.testdata.grid import load_bundled_atlas

    img = nib.load(motion_ds.runs[0].brain_mask)
    resampled = resample_to_img(
        load_bundled_atlas(), img, interpolation="nearest", force_resample=True, copy_header=True
    )
    np.testing.assert_array_equal(np.asarray(resampled.dataobj).astype(int), _labels(motion_ds))


def test_clean_parcel_means_return_painted_series(clean_ds: DatasetTruth) -> None:
    labels = _labels(clean_ds)
    for run in clean_ds.runs:
        truth = run.load()
        assert not truth["roi_artefact"].any()
        means = _parcel_means(run.preproc_bold, labels)
        painted = truth["roi_baseline"] + truth["roi_signal"] + truth["roi_nuisance"]
        assert _corr_columns(means, painted).min() > 0.999
        neural = means - truth["roi_baseline"] - truth["roi_nuisance"]
        assert _corr_columns(neural, truth["roi_signal"]).min() > 0.999
        assert np.abs(neural - truth["roi_signal"]).max() < 1.0  # white noise SD 1 / sqrt(n)
        np.testing.assert_allclose(
            truth["roi_signal"], truth["roi_source"] * truth["scale"] * truth["roi_gain"]
        )
        assert np.median(truth["roi_signal"].std(axis=0)) > 5.0


def test_still_subjects(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_subjects=1, n_volumes=40, motion=False)
    assert not ds.motion and not ds.artefact
    truth = ds.runs[0].load()
    assert not truth["roi_artefact"].any() and truth["spike_volumes"].size == 0
    fd = ds.runs[0].load_confounds().framewise_displacement.to_numpy()[1:]
    assert fd.max() < 0.1


def test_artefact_is_in_the_span_of_the_motion_columns(
    motion_ds: DatasetTruth, clean_ds: DatasetTruth
) -> None:
    labels = _labels(motion_ds)
    for run, clean in zip(motion_ds.runs, clean_ds.runs, strict=True):
        truth = run.load()
        artefact = truth["roi_artefact"]
        params = run.load_confounds()[list(MOTION_COLUMNS)].to_numpy()
        beta, *_ = np.linalg.lstsq(params, artefact, rcond=None)
        assert np.linalg.norm(artefact - params @ beta) < 1e-8 * np.linalg.norm(artefact)
        # The artefact is the only difference between the two variants (same seed).
        conf, clean_conf = run.load_confounds(), clean.load_confounds()
        for col in (*MOTION_COLUMNS, "framewise_displacement", "rmsd"):
            np.testing.assert_array_equal(conf[col], clean_conf[col])
        means = _parcel_means(run.preproc_bold, labels)
        clean_means = _parcel_means(clean.preproc_bold, labels)
        np.testing.assert_allclose(means - clean_means, artefact, atol=2e-3)
        # Regressing the motion columns (plus other image means, here white matter and CSF,
        # whose artefact part lies in the same span) gives the same result for both variants.
        cols = [*MOTION_COLUMNS, "white_matter", "csf"]
        outs = []
        for m, c in ((means, conf), (clean_means, clean_conf)):
            design = np.column_stack([np.ones(N_VOL), c[cols].to_numpy()])
            b, *_ = np.linalg.lstsq(design, m, rcond=None)
            outs.append(m - design @ b)
        np.testing.assert_allclose(outs[0], outs[1], atol=5e-3)
        # It is large enough to matter and a 0.01-0.1 Hz band-pass keeps a good part of it.
        assert artefact.std() > 0.2 * truth["roi_signal"].std()
        freqs = np.fft.rfftfreq(N_VOL, d=2.0)
        spec = np.fft.rfft(artefact - artefact.mean(axis=0), axis=0)
        spec[(freqs < 0.01) | (freqs > 0.1)] = 0
        kept = np.fft.irfft(spec, n=N_VOL, axis=0)
        assert kept.var() > 0.1 * artefact.var()
        # Regressing the six motion columns from the image's parcel means removes it.
        design = np.column_stack([np.ones(N_VOL), params])
        b, *_ = np.linalg.lstsq(
            design, means - truth["roi_signal"] - truth["roi_nuisance"], rcond=None
        )
        resid = means - truth["roi_signal"] - truth["roi_nuisance"] - design @ b
        assert resid.std() < 0.2


# ---------------------------------------------------------------------------------------------
# real ABIDE data


def _read_abide(abide_dir: Path, file_id: str) -> np.ndarray:
    with tarfile.open(abide_dir / "rois_cc200.tar.xz", "r:xz") as tf:
        for member in tf:
            if member.name.endswith(f"/{file_id}_rois_cc200.1D"):
                fh = tf.extractfile(member)
                assert fh is not None
                return np.loadtxt(fh, comments="#")
    raise AssertionError(f"{file_id} not in archive")


@pytest.mark.realdata
def test_abide_series_are_painted(abide_dir: Path, tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_subjects=2, n_volumes=60, abide_dir=abide_dir, seed=1)
    meta = ds.metadata()
    assert ds.signal_source == "abide"
    pheno = pd.read_csv(abide_dir / "Phenotypic_V1_0b_preprocessed1.csv").set_index("FILE_ID")
    parts = ds.participants().set_index("participant_id")
    labels = _labels(ds)
    for subj, run in zip(meta["subjects"], ds.runs, strict=True):
        fid = subj["abide_file_id"]
        assert run.abide_file_id == fid
        row = pheno.loc[fid]
        p = parts.loc[f"sub-{subj['subject']}"]
        assert p.age == pytest.approx(float(row.AGE_AT_SCAN))
        assert p.sex == {1: "M", 2: "F"}[int(row.SEX)]
        assert p.fluid_intelligence == pytest.approx(float(row.PIQ))
        real = _read_abide(abide_dir, fid)[:60]
        truth = run.load()
        real_cols = ~truth["synthetic_rois"]
        assert real_cols.sum() >= 190
        np.testing.assert_allclose(truth["roi_source"][:, real_cols], real[:, real_cols])
        np.testing.assert_array_equal(truth["abide_row_index"], np.arange(60))
        means = _parcel_means(run.preproc_bold, labels)
        neural = means - truth["roi_baseline"] - truth["roi_nuisance"] - truth["roi_artefact"]
        r = _corr_columns(neural, truth["roi_signal"])
        strong = truth["roi_signal"].std(axis=0) > 2.0
        assert strong.sum() >= 190 and r[strong].min() > 0.999
        assert _corr_columns(neural[:, real_cols], real[:, real_cols]).min() > 0.95


# ---------------------------------------------------------------------------------------------
# BIDS validity, options, errors and the command line


def _validator() -> str | None:
    found = shutil.which("bids-validator-deno")
    if found:
        return found
    beside = Path(sys.executable).with_name("bids-validator-deno")
    return str(beside) if beside.exists() else None


def test_raw_bids_passes_the_validator(motion_ds: DatasetTruth) -> None:
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed")
    proc = subprocess.run(
        [exe, str(motion_ds.bids_dir)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_other_voxel_size_matches_nearest_resampled_atlas(tmp_path: Path) -> None:
    from nilearn.image import resample_to_img

    from brainfm.testdata.grid import load_bundled_atlas

    ds = make_dataset(tmp_path, n_subjects=1, n_volumes=20, voxel_size=4.0, seed=2)
    img = nib.load(ds.runs[0].preproc_bold)
    assert np.allclose(img.header.get_zooms()[:3], 4.0)
    resampled = resample_to_img(
        load_bundled_atlas(),
        img.slicer[..., 0],
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    np.testing.assert_array_equal(np.asarray(resampled.dataobj).astype(int), _labels(ds))


def test_make_dataset_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        make_dataset(tmp_path / "a", n_subjects=0)
    with pytest.raises(UsageError):
        make_dataset(tmp_path / "b", n_volumes=5)
    with pytest.raises(UsageError):
        make_dataset(tmp_path / "c", space="MNI-152")
    with pytest.raises(UsageError):
        make_dataset(tmp_path / "d", abide_file_ids=["CMU_a_0050642", "CMU_a_0050646"])
    with pytest.raises(InputError):
        make_dataset(tmp_path / "e", abide_dir=tmp_path / "missing")
    (tmp_path / "f" / "bids").mkdir(parents=True)
    with pytest.raises(UsageError, match="already exists"):
        make_dataset(tmp_path / "f")
    assert not any((tmp_path / "a").glob("*"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("BRAINFM_ABIDE_DIR", raising=False)
    out = tmp_path / "demo"
    assert cli_main([str(out), "--subjects", "1", "--volumes", "20", "--no-motion"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "bids") in printed and "desc-confounds_timeseries.tsv" in printed
    ds = DatasetTruth.from_dir(out)
    assert not ds.motion and len(ds.runs) == 1
    assert re.search(r"sub-01_task-rest_space-MNI152NLin6Asym_desc-preproc_bold", printed)
    # existing output -> usage error; --overwrite replaces it
    assert cli_main([str(out), "--subjects", "1", "--volumes", "20"]) == 64
    assert "already exists" in capsys.readouterr().err
    assert cli_main([str(out), "--subjects", "1", "--volumes", "20", "--overwrite"]) == 0
    assert DatasetTruth.from_dir(out).motion
    with pytest.raises(SystemExit) as exc:
        cli_main([str(tmp_path / "x"), "--volumes", "many"])
    assert exc.value.code == 64
    assert cli_main([str(tmp_path / "y"), "--abide-dir", str(tmp_path / "nope")]) == 66
    monkeypatch.setenv("BRAINFM_ABIDE_DIR", str(tmp_path / "nope"))
    assert cli_main([str(tmp_path / "z")]) == 66
    assert "nope" in capsys.readouterr().err
