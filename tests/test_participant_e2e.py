"""End-to-end participant level on the painted fixture: known answers, outputs, validation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from output_tree import output_tree

from brainfm.atlases import get_atlas
from brainfm.bidsapp.cli import main
from brainfm.postproc.denoise import denoise_roi_signals
from brainfm.postproc.parcellate import extract_roi_signals
from brainfm.testdata import make_dataset

pytestmark = pytest.mark.slow

EXPECTED = Path(__file__).parent / "data" / "expected_participant_outputs.txt"
TS = "sub-{s}_task-rest_space-MNI152NLin6Asym_atlas-CC200_stat-mean_timeseries.tsv"


@pytest.fixture(scope="module")
def painted(tmp_path_factory, abide_dir_or_none):
    """The same subjects and motion painted with and without the motion artefact.

    Both variants share signals, noise and confounds (motion parameters), so their denoised
    outputs differ by exactly what is left of the artefact.
    """
    root = tmp_path_factory.mktemp("painted")
    common = {"n_subjects": 2, "n_volumes": 200, "motion": True, "abide_dir": abide_dir_or_none,
              "seed": 3}
    motion = make_dataset(root / "motion", artefact=True, **common)
    clean = make_dataset(root / "clean", artefact=False, **common)
    return {"motion": motion, "clean": clean, "root": root}


def run_brainfm(dataset, out: Path, *extra: str) -> int:
    return main([str(dataset.bids_dir), str(out), "participant", "--skip-bids-validation",
                 "-w", str(out.parent / f"work_{out.name}"), "--nprocs", "2", "--poll-sleep",
                 "0.05", *extra])


def read_ts(out: Path, subject: str) -> pd.DataFrame:
    path = out / f"sub-{subject}" / "func" / TS.format(s=subject)
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def columnwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


@pytest.fixture(scope="module")
def outputs(painted):
    """Run brainfm once per variant needed by the checks below."""
    root = painted["root"]
    no_filter = ("--lower-bpf", "0", "--upper-bpf", "0", "--fd-thresh", "0")
    runs = {
        "clean_none": (painted["clean"], ("--nuisance-regressors", "none", *no_filter)),
        "clean_24P": (painted["clean"], ("--nuisance-regressors", "24P", *no_filter)),
        "motion_24P": (painted["motion"], ("--nuisance-regressors", "24P", *no_filter)),
        "motion_none": (painted["motion"], ("--nuisance-regressors", "none", *no_filter)),
        "default": (painted["motion"], ("--atlases", "CC200", "Schaefer2018-200")),
    }
    outs = {}
    for name, (dataset, extra) in runs.items():
        out = root / "out" / name
        assert run_brainfm(dataset, out, *extra) == 0, name
        outs[name] = out
    return outs


def test_parcellation_returns_the_painted_series(painted, outputs):
    atlas = get_atlas("CC200")
    for run in painted["clean"].runs:
        truth = run.load()
        painted_series = truth["roi_signal"] + truth["roi_nuisance"]
        # the parcellation alone
        extracted = extract_roi_signals(run.preproc_bold, [atlas], run.brain_mask)["CC200"]
        assert np.nanmedian(columnwise_r(extracted.timeseries, painted_series)) >= 0.99
        # the whole workflow without confound regression or filtering equals the painted
        # series put through the same (linear) detrending
        expected = denoise_roi_signals(
            painted_series, run.load_confounds(), tr=run.tr, strategy="none", fd_thresh=0,
            dummy_scans=0, lower_bpf=0, upper_bpf=0, min_time=0).timeseries
        got = read_ts(outputs["clean_none"], run.subject).to_numpy()
        r = columnwise_r(got, expected)
        assert np.nanmedian(r) >= 0.99, np.nanmedian(r)


def artefact_removed(outputs, painted, strategy: str) -> list[float]:
    fractions = []
    for run in painted["motion"].runs:
        artefact = run.load()["roi_artefact"]
        left = (read_ts(outputs[f"motion_{strategy}"], run.subject)
                - read_ts(outputs[f"clean_{strategy}" if strategy == "24P" else "clean_none"],
                          run.subject)).to_numpy()
        keep = np.isfinite(left).all(0)
        fractions.append(1 - np.var(left[:, keep], 0).sum() / np.var(artefact[:, keep], 0).sum())
    return fractions


def test_confound_regression_removes_the_planted_artefact(painted, outputs):
    assert min(artefact_removed(outputs, painted, "24P")) >= 0.90
    for run in painted["motion"].runs:
        got = read_ts(outputs["motion_24P"], run.subject).to_numpy()
        r = columnwise_r(got, run.load()["roi_signal"])
        assert np.nanmedian(r) >= 0.8, np.nanmedian(r)


def test_without_confound_regression_the_artefact_check_fails(painted, outputs):
    assert max(artefact_removed(outputs, painted, "none")) < 0.90


def test_fd_thresh_zero_disables_censoring(painted, outputs):
    for run in painted["motion"].runs:
        sub = run.subject
        uncensored = read_ts(outputs["motion_24P"], sub)
        assert len(uncensored) == run.n_volumes
        censored = read_ts(outputs["default"], sub)
        outliers = pd.read_csv(outputs["default"] / f"sub-{sub}" / "func"
                               / f"sub-{sub}_task-rest_outliers.tsv", sep="\t")
        assert outliers["outlier"].sum() > 0  # the planted spikes are censored at 0.5 mm
        assert len(censored) == run.n_volumes - int(outliers["outlier"].sum())


def test_output_tree_matches_expected_list(outputs):
    out = outputs["default"]
    assert output_tree(out) == EXPECTED.read_text().split()


def test_sidecars_and_dataset_description(outputs):
    out = outputs["default"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "brainfm"
    sidecar = json.loads((out / "sub-01" / "func" / TS.format(s="01")).with_suffix(".json")
                         .read_text())
    assert sidecar["RepetitionTime"] == 2.0
    assert sidecar["SamplingFrequency"] == 0.5
    assert sidecar["DenoisingStrategy"] == "pcp"
    assert sidecar["SoftwareFilters"]["Bandpass filter"]["High-pass cutoff (Hz)"] > 0
    assert len(sidecar["Sources"]) >= 3
    for uri in sidecar["Sources"]:  # every BIDS URI resolves through DatasetLinks
        _, name, rel = uri.split(":", 2)
        assert (Path(desc["DatasetLinks"][name].removeprefix("file://")) / rel).is_file(), uri
    atlas_source = [u for u in sidecar["Sources"] if u.startswith("bids:atlases:")]
    assert atlas_source == ["bids:atlases:tpl-MNI152NLin6Asym/anat/"
                            "tpl-MNI152NLin6Asym_atlas-CC200_res-03_dseg.nii.gz"]
    description = json.loads((out / "sourcedata" / "atlases" / "atlas-CC200_description.json")
                             .read_text())
    assert description["AtlasName"] == "CC200" and "Craddock" in description["License"]
    relmat = pd.read_csv(out / "sub-01" / "func" /
                         "sub-01_task-rest_space-MNI152NLin6Asym_atlas-CC200_stat-"
                         "pearsoncorrelation_relmat.tsv", sep="\t", index_col=0)
    assert relmat.shape == (200, 200)
    np.testing.assert_allclose(np.diag(relmat.to_numpy()), 1.0, atol=1e-8)


def test_pybids_queries_atlas_stat_and_suffix_with_the_shipped_config(outputs):
    from bids import BIDSLayout

    from brainfm.derivatives import PYBIDS_CONFIG

    out = outputs["default"]
    layout = BIDSLayout(out, config=["bids", "derivatives", str(PYBIDS_CONFIG)], validate=False)
    found = layout.get(subject="01", atlas="Schaefer200", stat="pearsoncorrelation",
                       suffix="relmat", extension=".tsv", return_type="filename")
    assert [Path(f).name for f in found] == [
        "sub-01_task-rest_space-MNI152NLin6Asym_atlas-Schaefer200_stat-pearsoncorrelation_"
        "relmat.tsv"]
    means = layout.get(stat="mean", suffix="timeseries", extension=".tsv")
    assert sorted(f.entities["atlas"] for f in means) == ["CC200", "CC200", "Schaefer200",
                                                          "Schaefer200"]


def _validate(exe: str, dataset: Path) -> dict:
    proc = subprocess.run([exe, str(dataset), "--datasetTypes", "derivative", "--format",
                           "json"], capture_output=True, text=True, check=False)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert proc.returncode == 0 and not errors, errors[:5]
    return report


def test_bids_validator_accepts_participant_and_group_output(painted, outputs, tmp_path):
    """0 errors, and every file outside .bidsignore is one the validator checked.

    ``.bidsignore`` names only suffixes BIDS does not define (and the reports, run records), so
    the files left (here ``dataset_description.json`` and anything standard a later version
    adds) are validated; the atlases are a BIDS dataset of their own in ``sourcedata/``, where
    every file is checked.
    """
    import pathspec

    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno is not installed")
    out = tmp_path / "out"
    shutil.copytree(outputs["default"], out)
    assert main([str(painted["motion"].bids_dir), str(out), "group"]) == 0
    ignore = pathspec.GitIgnoreSpec.from_lines((out / ".bidsignore").read_text().splitlines())
    # hidden files and folders (.bidsignore, .brainfm.lock, .brainfm-locks/) are not validated
    files = [p.relative_to(out).as_posix() for p in out.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)]
    standard = [f for f in files if not ignore.match_file(f)
                and not f.startswith(("logs/", "sourcedata/"))]
    assert "dataset_description.json" in standard
    report = _validate(exe, out)
    assert report["summary"]["totalFiles"] == len(standard) + 1  # and .bidsignore itself
    atlases = out / "sourcedata" / "atlases"
    atlas_files = [p for p in atlases.rglob("*") if p.is_file()]
    # the dataset description, and per atlas its description, image, table and sidecar
    assert len(atlas_files) == 1 + 2 * 4
    report = _validate(exe, atlases)
    assert report["summary"]["totalFiles"] == len(atlas_files)


def test_rerun_reuses_finished_nodes(painted, outputs, caplog):
    out = outputs["default"]
    before = (out / "sub-01" / "func" / TS.format(s="01")).read_text()
    caplog.set_level("INFO", logger="nipype.workflow")
    assert run_brainfm(painted["motion"], out, "--atlases", "CC200", "Schaefer2018-200",
                       "-v") == 0
    cached = [r.getMessage() for r in caplog.records if "Cached" in r.getMessage()
              or "cached" in r.getMessage()]
    assert cached, "a rerun with the same work dir must reuse finished nodes"
    assert (out / "sub-01" / "func" / TS.format(s="01")).read_text() == before
