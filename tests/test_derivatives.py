"""Derivative naming and safe writing of shared files."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest

from brainfm.derivatives import BIDSIGNORE_PATTERNS, build_name, init_output_dataset
from brainfm.fileio import write_tsv_atomic


def test_build_name_orders_entities_and_skips_empty():
    name = build_name({"atlas": "CC200", "sub": "01", "task": "rest", "ses": None,
                       "space": "MNI152NLin6Asym", "stat": "mean", "run": "2"},
                      "timeseries", ".tsv")
    assert name == ("sub-01_task-rest_run-2_space-MNI152NLin6Asym_atlas-CC200_stat-mean_"
                    "timeseries.tsv")


def test_entity_order_is_the_installed_schema_s():
    """res/den come after atlas (schema order), stat just before desc; the order is the
    schema's own list, not a copy that can drift."""
    from bidsschematools.schema import load_schema

    from brainfm.derivatives import entity_order

    schema = load_schema()
    expected = [schema["objects"]["entities"][e]["name"] for e in schema["rules"]["entities"]]
    assert [k for k in entity_order() if k != "stat"] == expected
    name = build_name({"desc": "x", "den": "91k", "res": "2", "atlas": "CC200", "stat": "mean",
                       "space": "MNI152NLin2009cAsym", "sub": "01"}, "timeseries", ".tsv")
    assert name == ("sub-01_space-MNI152NLin2009cAsym_atlas-CC200_res-2_den-91k_stat-mean_"
                    "desc-x_timeseries.tsv")


def test_build_name_rejects_unknown_entity():
    with pytest.raises(KeyError):
        build_name({"sub": "01", "colour": "red"}, "bold", ".tsv")


def test_tsv_written_with_na_and_no_leftover_temp(tmp_path):
    target = tmp_path / "a" / "x.tsv"
    write_tsv_atomic(target, pd.DataFrame({"a": [1.0, None]}))
    assert target.read_text() == "a\n1.0\nn/a\n"
    assert [p.name for p in target.parent.iterdir()] == ["x.tsv"]


def _init(out):
    for _ in range(20):
        init_output_dataset(out, {"raw": "/data/bids"})


def test_parallel_jobs_keep_shared_files_intact(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_init, args=(tmp_path,)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "brainfm"
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines == list(BIDSIGNORE_PATTERNS)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_dataset_description_links_every_uri_and_names_no_container_outside_one(
        tmp_path, monkeypatch):
    monkeypatch.delenv("BRAINFM_IMAGE_TAG", raising=False)
    monkeypatch.delenv("APPTAINER_CONTAINER", raising=False)
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    bids = tmp_path / "bids"
    init_output_dataset(tmp_path / "out", {"raw": bids, "preprocessed": bids})
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetLinks"] == {"raw": bids.as_uri(), "preprocessed": bids.as_uri()}
    assert desc["SourceDatasets"] == [{"URL": bids.as_uri()}]  # the same folder once
    assert "Container" not in desc["GeneratedBy"][0] and "CodeURL" not in desc["GeneratedBy"][0]
    assert desc["BIDSVersion"] >= "1.11" and "License" not in desc
    # a later run of the same version adds its links and the model's licence
    fmriprep = tmp_path / "fmriprep"
    init_output_dataset(tmp_path / "out", {"preprocessed": fmriprep}, license_text="CC BY")
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["preprocessed"] == fmriprep.as_uri()
    assert desc["License"] == "CC BY"
    assert [s["URL"] for s in desc["SourceDatasets"]] == [bids.as_uri(), fmriprep.as_uri()]
    monkeypatch.setenv("BRAINFM_IMAGE_TAG", "brainfm:1.0")
    init_output_dataset(tmp_path / "out2", {"raw": bids})
    desc = json.loads((tmp_path / "out2" / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "brainfm:1.0"}


def test_output_lock_names_the_lock_file_when_another_job_holds_it(tmp_path):
    """A second writer waits on the shared-files lock, then gives up with a clear message."""
    import subprocess
    import sys

    from brainfm.errors import UsageError
    from brainfm.fileio import output_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from brainfm.fileio import output_lock\n"
        f"with output_lock({str(tmp_path)!r}):\n"
        "    print('held', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=r"\.brainfm\.lock stayed locked"):
            with output_lock(tmp_path, timeout=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path, timeout=5):  # free again once the holder is gone
        pass


def test_index_ignore_keeps_the_selected_participants_and_datatypes(tmp_path):
    """pybids indexes only the participants asked for, and not the folders a run never reads."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    from brainfm.derivatives import index_ignore

    (tmp_path / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    for sub in ("01", "02", "010"):
        for folder, name in (("func", "task-rest_desc-preproc_bold.nii.gz"),
                             ("anat", "desc-preproc_T1w.nii.gz"),
                             ("ses-1/func", "ses-1_task-rest_desc-preproc_bold.nii.gz"),
                             ("ses-1/anat", "ses-1_desc-preproc_T1w.nii.gz")):
            path = tmp_path / f"sub-{sub}" / folder / f"sub-{sub}_{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def indexed(**kwargs) -> list[str]:
        indexer = BIDSLayoutIndexer(validate=False, ignore=index_ignore(**kwargs))
        layout = BIDSLayout(tmp_path, validate=False, is_derivative=True, indexer=indexer)
        return sorted(Path(f).relative_to(tmp_path).as_posix()
                      for f in layout.get(return_type="filename", extension=".nii.gz"))

    assert len(indexed()) == 12  # nothing added: every participant and datatype
    only = indexed(participants=["sub-01", "02"], datatypes=["anat"])
    assert only == ["sub-01/func/sub-01_task-rest_desc-preproc_bold.nii.gz",
                    "sub-01/ses-1/func/sub-01_ses-1_task-rest_desc-preproc_bold.nii.gz",
                    "sub-02/func/sub-02_task-rest_desc-preproc_bold.nii.gz",
                    "sub-02/ses-1/func/sub-02_ses-1_task-rest_desc-preproc_bold.nii.gz"]


@pytest.mark.parametrize("high, low, kind", [(0.01, 0.1, "Bandpass filter"),
                                             (0.01, None, "High-pass filter"),
                                             (None, 0.08, "Low-pass filter")])
def test_software_filters_round_trip(high, low, kind):
    from brainfm.derivatives import bandpass_cutoffs, software_filters

    field = software_filters(high, low)
    assert list(field) == [kind] and field[kind]["Filter order"] == 5
    assert bandpass_cutoffs({"SoftwareFilters": field}) == (high, low)
    assert software_filters(None, 0) == {} and bandpass_cutoffs({}) == (None, None)


def test_copy_nifti_atomic_resaves_when_the_extension_changes(tmp_path):
    """A user atlas given as .nii lands as a real .nii.gz (not .nii bytes under a .gz name)."""
    import nibabel as nib
    import numpy as np

    from brainfm.fileio import copy_nifti_atomic

    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "atlas.nii")
    out = copy_nifti_atomic(tmp_path / "atlas.nii", tmp_path / "o" / "tpl-X_atlas-A_dseg.nii.gz")
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), data)
    same = copy_nifti_atomic(out, tmp_path / "p" / "copy.nii.gz")
    assert same.read_bytes() == out.read_bytes()
