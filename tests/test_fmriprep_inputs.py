"""fMRIPrep outputs as labs have them: where the output and the work folder may go."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from brainfm.bidsapp.cli import main
from brainfm.testdata import make_dataset

pytestmark = pytest.mark.slow


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            + str(p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.parents)}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fmriprep") / "ds", n_subjects=1, n_volumes=60,
                        seed=5).out_dir


def test_output_in_bids_derivatives_is_accepted(base: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    out = bids / "derivatives" / "brainfm"
    before = snapshot(bids)
    monkeypatch.chdir(tmp_path)  # the default work dir (./work, as fMRIPrep's) lands here
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--nprocs", "1",
                 "--min-time", "0"])
    assert code == 0, capfd.readouterr().err
    # the input is unchanged but for the new derivatives folder, and no work folder is in it
    assert snapshot(bids, skip=out) == before
    assert sorted(p.name for p in (bids / "derivatives").iterdir()) == ["brainfm", "fmriprep"]
    assert (tmp_path / "work" / "brainfm_wf").is_dir()
    assert list((out / "sub-01" / "func").glob("*_timeseries.tsv"))
    # a rerun does not take its own outputs for inputs
    assert main([str(bids), str(out), "participant", "--skip-bids-validation", "--nprocs", "1",
                 "--model", "none", "--min-time", "0"]) == 0
    # group level there too
    assert main([str(bids), str(out), "group"]) == 0
    assert snapshot(bids, skip=out) == before


@pytest.mark.parametrize("where", ["bids", "sub-01", "derivatives/fmriprep/out",
                                   "derivatives"])
def test_other_places_inside_the_input_are_refused(base: Path, tmp_path: Path, where: str,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    out = bids / where if where != "bids" else bids
    before = snapshot(bids)
    code = main([str(bids), str(out), "participant", "--skip-bids-validation",
                 "-w", str(tmp_path / "w")])
    err = capfd.readouterr().err
    assert code == 64 and "Traceback" not in err and str(out) in err
    assert snapshot(bids) == before


def test_link_inside_a_derivatives_output_into_the_input_is_refused(
        base: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    out = bids / "derivatives" / "brainfm"
    out.mkdir()
    os.symlink(bids / "sub-01", out / "sub-01")
    before = snapshot(bids)
    code = main([str(bids), str(out), "participant", "--skip-bids-validation",
                 "-w", str(tmp_path / "w")])
    assert code == 64 and "symbolic link" in capfd.readouterr().err
    assert snapshot(bids) == before


def test_fmriprep_folder_as_bids_dir_with_validation_on(base: Path, tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    from brainfm.bidsapp.validation import validator_executable

    if validator_executable() is None:
        pytest.skip("bids-validator-deno is not installed (the test extra installs it)")
    shutil.copytree(base, tmp_path / "ds")
    fmriprep = tmp_path / "ds" / "bids" / "derivatives" / "fmriprep"
    # what fMRIPrep writes beside the data, which the validator does not know
    (fmriprep / "sub-01" / "figures").mkdir()
    (fmriprep / "sub-01" / "figures" / "sub-01_desc-summary_T1w.html").write_text("<html/>")
    (fmriprep / "logs").mkdir()
    (fmriprep / "logs" / "CITATION.md").write_text("fMRIPrep")
    (fmriprep / "sub-01.html").write_text("<html/>")
    before = snapshot(fmriprep)
    code = main([str(fmriprep), str(tmp_path / "out"), "participant", "--nprocs", "1",
                 "--model", "none", "--min-time", "0", "-w", str(tmp_path / "w")])
    assert code == 0, capfd.readouterr().err
    assert snapshot(fmriprep) == before
    assert list((tmp_path / "out" / "sub-01" / "func").glob("*_timeseries.tsv"))
    # a raw dataset is still validated
    (tmp_path / "ds" / "bids" / "sub-01" / "func" / "sub-01_task-rest_junk.txt").write_text("x")
    code = main([str(tmp_path / "ds" / "bids"), str(tmp_path / "out2"), "participant",
                 "-w", str(tmp_path / "w2")])
    assert code == 16 and "sub-01_task-rest_junk.txt" in capfd.readouterr().err


def test_one_broken_participant_does_not_stop_the_others(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    truth = make_dataset(tmp_path / "ds", n_subjects=3, n_volumes=60, seed=2)
    bids = truth.bids_dir
    func = truth.fmriprep_dir / "sub-02" / "func"
    bold = next(func.glob("*_desc-preproc_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[: bold.stat().st_size // 3])  # header fine, data cut
    before = snapshot(bids)
    out = tmp_path / "out"
    common = ["participant", "--skip-bids-validation", "--nprocs", "1", "--min-time", "0"]
    code = main([str(bids), str(out), *common, "-w", str(tmp_path / "w")])
    err = capfd.readouterr().err
    assert code == 66 and "Traceback" not in err  # the failure's own kind: a corrupt input
    line = [ln for ln in err.splitlines() if ln.startswith("brainfm: error:")]
    assert len(line) == 1 and "sub-02" in line[0] and "2 other participant(s) finished" in line[0]
    for sub in ("01", "03"):  # the others are complete
        assert (out / f"sub-{sub}" / f"sub-{sub}_desc-runs_qc.tsv").is_file()
        assert (out / f"sub-{sub}" / "func" / f"sub-{sub}_desc-brainfm_predictions.tsv").is_file()
    assert not (out / "sub-02" / "func").exists() and not (out / "sub-02.html").exists()
    # a second broken participant, found before any work: both named, exit 1
    next((truth.fmriprep_dir / "sub-03" / "func").glob("*_timeseries.tsv")).unlink()
    before = snapshot(bids)
    code = main([str(bids), str(tmp_path / "out2"), *common, "-w", str(tmp_path / "w2")])
    err = capfd.readouterr().err
    assert code == 1 and "2 of 3 participants failed: sub-03, sub-02" in err
    assert (tmp_path / "out2" / "sub-01" / "sub-01_desc-runs_qc.tsv").is_file()
    # --stop-on-first-crash: the first problem stops everything, before any work here
    code = main([str(bids), str(tmp_path / "out3"), *common, "-w", str(tmp_path / "w3"),
                 "--stop-on-first-crash"])
    assert code == 66 and not (tmp_path / "out3").exists()
    assert snapshot(bids) == before


def test_dummy_scans_auto_counts_fmriprep_non_steady_state_columns(
        base: Path, tmp_path: Path) -> None:
    import json

    import pandas as pd

    from brainfm.postproc.censoring import resolve_dummy_scans

    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    confounds = next((bids / "derivatives" / "fmriprep" / "sub-01" / "func").glob(
        "*_desc-confounds_timeseries.tsv"))
    table = pd.read_csv(confounds, sep="\t")
    for k in range(3):  # fMRIPrep's one-hot columns for volumes 0, 1, 2
        table[f"non_steady_state_outlier{k:02d}"] = (table.index == k).astype(int)
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    assert resolve_dummy_scans("auto", table) == 3 and resolve_dummy_scans(2, table) == 2
    assert resolve_dummy_scans("auto", table.drop(columns=[c for c in table.columns
                                                          if c.startswith("non_")])) == 0
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "--skip-bids-validation", "--nprocs", "1",
                 "--model", "none", "--min-time", "0", "--fd-thresh", "0", "--dummy-scans",
                 "auto", "-w", str(tmp_path / "w")]) == 0
    func = out / "sub-01" / "func"
    outliers = pd.read_csv(next(func.glob("*_outliers.tsv")), sep="\t")
    assert outliers["dummy"].tolist()[:4] == [1, 1, 1, 0] and outliers["dummy"].sum() == 3
    sidecar = json.loads(next(func.glob("*_stat-mean_timeseries.json")).read_text())
    assert sidecar["DummyScans"] == 3 and sidecar["NumberOfVolumesRetained"] == 57


def test_fmriprep_1_4_to_20_1_layout_is_read(base: Path, tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    func = bids / "derivatives" / "fmriprep" / "sub-01" / "func"
    for path in sorted(func.iterdir()):  # desc-confounds_regressors, label-brain_mask
        name = path.name.replace("desc-confounds_timeseries", "desc-confounds_regressors")
        path.rename(func / name.replace("desc-brain_mask", "label-brain_mask"))
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--nprocs", "1",
                 "--model", "none", "--min-time", "0", "-w", str(tmp_path / "w")])
    assert code == 0, capfd.readouterr().err
    assert list((out / "sub-01" / "func").glob("*_stat-mean_timeseries.tsv"))
    # before 1.4 (other names, other columns): refused, naming the file and the version
    confounds = next(func.glob("*_desc-confounds_regressors.tsv"))
    confounds.rename(func / "sub-01_task-rest_bold_confounds.tsv")
    code = main([str(bids), str(tmp_path / "out2"), "participant", "--skip-bids-validation",
                 "--nprocs", "1", "-w", str(tmp_path / "w2")])
    err = capfd.readouterr().err
    assert code == 66 and "sub-01_task-rest_bold_confounds.tsv" in err and "1.4" in err


def test_custom_strategy_file(base: Path, tmp_path: Path,
                              capfd: pytest.CaptureFixture[str]) -> None:
    import json

    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    strategy = tmp_path / "my9p.yml"
    strategy.write_text(
        "name: my9P\ndescription: 6 motion, WM, CSF, global signal; 0.01-0.1 Hz\n"
        "motion: basic\nwm_csf: basic\nglobal_signal: basic\ncompcor: none\nn_compcor: 0\n"
        "compcor_fallback: none\ndetrend_order: 1\nhigh_pass: 0.01\nlow_pass: 0.1\n")
    out = tmp_path / "out"
    common = ["participant", "--skip-bids-validation", "--nprocs", "1", "--min-time", "0"]
    assert main([str(bids), str(out), *common, "-w", str(tmp_path / "w"), "--model", "none",
                 "--nuisance-regressors", str(strategy)]) == 0, capfd.readouterr().err
    sidecar = json.loads(next((out / "sub-01" / "func").glob("*_stat-mean_timeseries.json"))
                         .read_text())
    assert sidecar["DenoisingStrategy"] == "my9P"
    assert sidecar["DenoisingStrategyFile"] == str(strategy)
    assert sidecar["NuisanceRegressors"] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                             "rot_z", "white_matter", "csf", "global_signal",
                                             "trend_linear"]
    # a broken file: usage error naming it
    strategy.write_text("name: x\nmotion: sideways\n")
    code = main([str(bids), str(tmp_path / "o2"), *common, "-w", str(tmp_path / "w2"),
                 "--nuisance-regressors", str(strategy)])
    err = capfd.readouterr().err
    assert code == 64 and str(strategy) in err and "Traceback" not in err


def test_bids_filter_file_selects_one_of_two_runs(tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    import json

    truth = make_dataset(tmp_path / "ds", n_subjects=1, n_runs=2, n_volumes=60, seed=4)
    filters = tmp_path / "filter.json"
    filters.write_text(json.dumps({"bold": {"run": 2}}))
    out = tmp_path / "out"
    common = ["participant", "--skip-bids-validation", "--nprocs", "1", "--min-time", "0",
              "--model", "none"]
    assert main([str(truth.bids_dir), str(out), *common, "-w", str(tmp_path / "w"),
                 "--bids-filter-file", str(filters)]) == 0, capfd.readouterr().err
    series = sorted(p.name for p in (out / "sub-01" / "func").glob("*_stat-mean_timeseries.tsv"))
    assert len(series) == 1 and "_run-2_" in series[0]
    # a filter that selects nothing, and one that is not a filter
    filters.write_text(json.dumps({"bold": {"run": 7}}))
    code = main([str(truth.bids_dir), str(tmp_path / "o2"), *common, "-w", str(tmp_path / "w2"),
                 "--bids-filter-file", str(filters)])
    assert code == 18 and "--bids-filter-file" in capfd.readouterr().err
    filters.write_text(json.dumps({"func": {"run": 1}}))
    code = main([str(truth.bids_dir), str(tmp_path / "o3"), *common, "-w", str(tmp_path / "w3"),
                 "--bids-filter-file", str(filters)])
    err = capfd.readouterr().err
    assert code == 64 and str(filters) in err and "'func'" in err


def test_several_tasks(base: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    func = bids / "derivatives" / "fmriprep" / "sub-01" / "func"
    for path in sorted(func.iterdir()):  # the same run again as task "movie"
        shutil.copy(path, func / path.name.replace("task-rest", "task-movie"))
    out = tmp_path / "out"
    common = ["participant", "--skip-bids-validation", "--nprocs", "1", "--min-time", "0",
              "--model", "none"]
    assert main([str(bids), str(out), *common, "-w", str(tmp_path / "w"),
                 "-t", "rest", "movie"]) == 0, capfd.readouterr().err
    tasks = sorted(p.name.split("_")[1] for p in
                   (out / "sub-01" / "func").glob("*_stat-mean_timeseries.tsv"))
    assert tasks == ["task-movie", "task-rest"]
    code = main([str(bids), str(tmp_path / "o2"), *common, "-w", str(tmp_path / "w2"),
                 "--task-id", "nback"])
    assert code == 18 and "task nback" in capfd.readouterr().err


def test_run_records_and_config_file(base: Path, tmp_path: Path,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    import tomllib

    shutil.copytree(base, tmp_path / "ds")
    bids = tmp_path / "ds" / "bids"
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "--skip-bids-validation", "--nprocs", "1",
                 "--min-time", "0", "--fd-thresh", "0.3", "--model", "none",
                 "-w", str(tmp_path / "w")]) == 0
    (record,) = (out / "sub-01" / "log").glob("*/brainfm.toml")
    options = tomllib.loads(record.read_text())["options"]
    assert options["fd_thresh"] == 0.3 and options["work_dir"] == str(tmp_path / "w")
    run_id = record.parent.name
    log = (out / "logs" / run_id / "brainfm.log").read_text()
    assert f"run {run_id}" in log and "brainfm finished" in log
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "above 0.3 mm" in citation and "Craddock" in citation
    # the record runs again with the same options; the command line wins over it
    capfd.readouterr()
    assert main([str(bids), str(tmp_path / "out2"), "participant", "--config-file", str(record),
                 "--min-time", "5"]) == 0, capfd.readouterr().err
    (again,) = (tmp_path / "out2" / "sub-01" / "log").glob("*/brainfm.toml")
    rerun = tomllib.loads(again.read_text())["options"]
    assert rerun["fd_thresh"] == 0.3 and rerun["min_time"] == 5.0
    # --boilerplate-only: the methods text, nothing processed
    assert main([str(bids), str(tmp_path / "out3"), "participant", "--skip-bids-validation",
                 "--boilerplate-only", "--model", "none", "-w", str(tmp_path / "w3")]) == 0
    assert (tmp_path / "out3" / "logs" / "CITATION.md").is_file()
    assert not list((tmp_path / "out3").glob("sub-*"))
    # a record with an option brainfm does not have
    record.write_text(record.read_text().replace("fd_thresh", "fd_threshold"))
    code = main([str(bids), str(tmp_path / "out4"), "participant", "--config-file", str(record)])
    err = capfd.readouterr().err
    assert code == 64 and "fd_threshold" in err and str(record) in err
