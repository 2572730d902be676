"""Tests of the fMRIPrep backend: backend detection, exact command lines, input checks, node."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from brainfm.errors import InputError, ProcessingError, UsageError
from brainfm.preproc import fmriprep_command as fc
from brainfm.preproc.fmriprep_command import (
    build_fmriprep_command,
    check_anatomy,
    check_docker_image,
    detect_backend,
    find_license,
    fmriprep_available,
)
from brainfm.workflows.preproc.fmriprep import fmriprep_output_dir, run_fmriprep

BIDS = "/data/bids"
OUT = "/data/out/sourcedata/fmriprep"
WORK = "/scratch/work/fmriprep"
LICENSE = "/opt/fs/license.txt"
FMRIPREP_ARGS = [
    BIDS, OUT, "participant", "--participant-label", "01", "02",
    "--output-spaces", "MNI152NLin6Asym:res-2", "--nprocs", "8", "--omp-nthreads", "2",
    "--fs-license-file", LICENSE, "-w", WORK, "--notrack",
]


def _which(available: set[str]):
    return lambda name: f"/usr/bin/{name}" if name in available else None


def _command(backend: str, image: str | None, *, fs_no_reconall: bool = False) -> list[str]:
    return build_fmriprep_command(
        backend, BIDS, OUT, ["sub-01", "02"], image=image, nprocs=8, omp_nthreads=2,
        fs_license_file=LICENSE, fs_no_reconall=fs_no_reconall, work_dir=WORK,
    )


# ---------------------------------------------------------------------------------------------
# backend detection (shutil.which monkeypatched)


def test_native_fmriprep_is_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep", "fmriprep-docker", "docker"}))
    assert detect_backend() == "fmriprep"
    assert fmriprep_available()


def test_docker_without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep-docker", "docker"}))
    assert detect_backend() == "docker"
    # a tag always means Docker, even with a native install
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep", "fmriprep-docker", "docker"}))
    assert detect_backend("nipreps/fmriprep:25.2.0") == "docker"


def test_docker_wrapper_needs_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep-docker"}))
    with pytest.raises(InputError, match="not available") as info:
        detect_backend()
    assert info.value.exit_code == 66
    assert not fmriprep_available()
    with pytest.raises(InputError, match="Docker tag"):
        detect_backend("nipreps/fmriprep:25.2.0")


def test_sif_image_uses_apptainer_then_singularity(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    sif = tmp_path / "fmriprep.sif"
    sif.write_bytes(b"sif")
    monkeypatch.setattr(fc.shutil, "which", _which({"apptainer", "singularity", "fmriprep"}))
    assert detect_backend(str(sif)) == "apptainer"
    monkeypatch.setattr(fc.shutil, "which", _which({"singularity"}))
    assert detect_backend(str(sif)) == "singularity"
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep"}))
    with pytest.raises(InputError, match="apptainer"):
        detect_backend(str(sif))


def test_missing_image_is_an_input_error(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(fc.shutil, "which", _which({"apptainer"}))
    missing = tmp_path / "nope.sif"
    with pytest.raises(InputError, match=str(missing)) as info:
        detect_backend(str(missing))
    assert info.value.exit_code == 66


# ---------------------------------------------------------------------------------------------
# exact command lines


def test_native_command_line() -> None:
    assert _command("fmriprep", None) == ["fmriprep", *FMRIPREP_ARGS]
    assert _command("fmriprep", None, fs_no_reconall=True) == [
        "fmriprep", *FMRIPREP_ARGS, "--fs-no-reconall"]


def test_docker_command_line() -> None:
    assert _command("docker", "nipreps/fmriprep:25.2.0", fs_no_reconall=True) == [
        "fmriprep-docker", "-i", "nipreps/fmriprep:25.2.0", *FMRIPREP_ARGS, "--fs-no-reconall",
    ]
    assert _command("docker", None) == ["fmriprep-docker", *FMRIPREP_ARGS]


def test_apptainer_command_line_binds_and_cleans_the_environment() -> None:
    assert _command("apptainer", "/images/fmriprep-25.2.0.sif") == [
        "apptainer", "run", "--cleanenv",
        "-B", f"{BIDS}:{BIDS}:ro",
        "-B", f"{OUT}:{OUT}",
        "-B", f"{WORK}:{WORK}",
        "-B", f"{LICENSE}:{LICENSE}:ro",
        "/images/fmriprep-25.2.0.sif", *FMRIPREP_ARGS,
    ]
    singularity = _command("singularity", "/images/fmriprep.sif", fs_no_reconall=True)
    assert singularity[:3] == ["singularity", "run", "--cleanenv"]
    assert singularity[-1] == "--fs-no-reconall"


def test_command_line_errors_and_all_participants() -> None:
    with pytest.raises(UsageError):
        _command("podman", None)
    with pytest.raises(UsageError, match="IMAGE.sif"):
        _command("apptainer", None)
    argv = build_fmriprep_command("fmriprep", BIDS, OUT, None, image=None, nprocs=1,
                                  omp_nthreads=1, fs_license_file=LICENSE,
                                  fs_no_reconall=False, work_dir=WORK,
                                  skip_bids_validation=True)
    assert "--participant-label" not in argv and argv[-1] == "--skip-bids-validation"


# ---------------------------------------------------------------------------------------------
# input checks


def test_licence_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FS_LICENSE", raising=False)
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    with pytest.raises(InputError, match="licence") as info:
        find_license(None)
    assert info.value.exit_code == 66
    with pytest.raises(InputError, match="does not exist"):
        find_license(tmp_path / "license.txt")
    lic = tmp_path / "license.txt"
    lic.write_text("key\n")
    assert find_license(lic) == lic
    monkeypatch.setenv("FREESURFER_HOME", str(tmp_path))
    assert find_license(None) == lic


def _bids(root: Path, subjects: dict[str, bool], sessions: bool = False) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    for sub, has_t1w in subjects.items():
        base = root / f"sub-{sub}" / ("ses-1" if sessions else "")
        (base / "func").mkdir(parents=True)
        (base / "func" / f"sub-{sub}_task-rest_bold.nii.gz").write_bytes(b"")
        if has_t1w:
            (base / "anat").mkdir()
            (base / "anat" / f"sub-{sub}_T1w.nii.gz").write_bytes(b"")
    return root


def test_missing_t1w_is_an_input_error(tmp_path: Path) -> None:
    bids = _bids(tmp_path / "bids", {"01": True, "02": False})
    check_anatomy(bids, ["01"])
    with pytest.raises(InputError, match="sub-02 has no T1w") as info:
        check_anatomy(bids, None)
    assert info.value.exit_code == 66
    check_anatomy(_bids(tmp_path / "ses", {"01": True}, sessions=True), "sub-01")


def test_docker_image_must_be_local() -> None:
    def absent(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 1, "", "No such image")

    def present(argv, **kwargs):
        assert argv == ["docker", "image", "inspect", "nipreps/fmriprep:25.2.0"]
        return subprocess.CompletedProcess(argv, 0, "[]", "")

    with pytest.raises(InputError, match="docker pull"):
        check_docker_image("nipreps/fmriprep:25.2.0", run=absent)
    check_docker_image("nipreps/fmriprep:25.2.0", run=present)


# ---------------------------------------------------------------------------------------------
# the node, with a stand-in fmriprep executable on PATH


def _fake_fmriprep(bin_dir: Path, exit_code: int) -> Path:
    bin_dir.mkdir()
    script = bin_dir / "fmriprep"
    script.write_text(
        "#!/bin/sh\n"
        'echo "fake fmriprep $*"\n'
        f"if [ {exit_code} -ne 0 ]; then echo 'boom: no T1w found'; exit {exit_code}; fi\n"
        'printf \'{"Name": "fMRIPrep", "DatasetType": "derivative", '
        '"GeneratedBy": [{"Name": "fMRIPrep"}]}\' > "$2/dataset_description.json"\n'
        'printf "%s\\n" "$@" > "$2/argv.txt"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def test_run_fmriprep_runs_the_logged_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    bids = _bids(tmp_path / "bids", {"01": True})
    lic = tmp_path / "license.txt"
    lic.write_text("key\n")
    bin_dir = _fake_fmriprep(tmp_path / "bin", 0)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep"}))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="brainfm"):
        result = run_fmriprep(bids, out, ["01"], work_dir=tmp_path / "work", nprocs=2,
                              omp_nthreads=1, fs_license_file=lic, fs_no_reconall=True,
                              poll_sleep=0.05)
    assert result == fmriprep_output_dir(out) == out.absolute() / "sourcedata" / "fmriprep"
    argv = (result / "argv.txt").read_text().splitlines()
    expected = [str(bids.absolute()), str(result), "participant", "--participant-label", "01",
                "--output-spaces", "MNI152NLin6Asym:res-2", "--nprocs", "2",
                "--omp-nthreads", "1", "--fs-license-file", str(lic.absolute()), "-w",
                str((tmp_path / "work").absolute() / "fmriprep"), "--notrack",
                "--fs-no-reconall"]
    assert argv == expected
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "fmriprep " + " ".join(expected) in logged


def test_failing_fmriprep_is_a_processing_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bids = _bids(tmp_path / "bids", {"01": True})
    lic = tmp_path / "license.txt"
    lic.write_text("key\n")
    bin_dir = _fake_fmriprep(tmp_path / "bin", 3)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep"}))
    with pytest.raises(ProcessingError, match="exit status 3") as info:
        run_fmriprep(bids, tmp_path / "out", "01", work_dir=tmp_path / "work",
                     fs_license_file=lic, poll_sleep=0.05)
    assert "boom" in str(info.value) and info.value.exit_code == 1


def test_run_fmriprep_checks_inputs_before_running(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bids = _bids(tmp_path / "bids", {"01": False})
    lic = tmp_path / "license.txt"
    lic.write_text("key\n")
    monkeypatch.setattr(fc.shutil, "which", _which({"fmriprep"}))
    with pytest.raises(InputError, match="T1w"):
        run_fmriprep(bids, tmp_path / "out", ["01"], work_dir=tmp_path / "work",
                     fs_license_file=lic)
    monkeypatch.setattr(fc.shutil, "which", _which(set()))
    with pytest.raises(InputError, match="--preproc minimal"):
        run_fmriprep(bids, tmp_path / "out", ["01"], work_dir=tmp_path / "work",
                     fs_license_file=lic)
    assert not (tmp_path / "out").exists()


def test_bids_filter_file_reaches_fmriprep_and_its_container(tmp_path: Path) -> None:
    filters = tmp_path / "filters.json"
    filters.write_text('{"bold": {"run": 2}}')
    for backend, image in (("fmriprep", None), ("apptainer", "/images/fmriprep.sif")):
        argv = build_fmriprep_command(
            backend, BIDS, OUT, None, image=image, nprocs=1, omp_nthreads=1,
            fs_license_file=LICENSE, fs_no_reconall=False, work_dir=WORK,
            bids_filter_file=filters)
        at = argv.index("--bids-filter-file")
        assert argv[at + 1] == str(filters)
        if backend == "apptainer":
            assert f"{filters}:{filters}:ro" in argv
    argv = build_fmriprep_command("fmriprep", BIDS, OUT, None, image=None, nprocs=1,
                                  omp_nthreads=1, fs_license_file=LICENSE,
                                  fs_no_reconall=False, work_dir=WORK)
    assert "--bids-filter-file" not in argv
