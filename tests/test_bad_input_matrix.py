"""The bad-input contract, case by case, for every command (issue 12).

Each case breaks one thing a user can get wrong and asserts what the user sees: the exit code
(64 usage, 66 input), one ``<prog>: error:`` line that names the offending file or option, no
Python traceback on the console, the input tree unchanged (checksums and modification times),
and no participant published by a run that failed before processing. Inputs the group level
can read with a caveat (exit 0) give one warning line that names the file and the participants.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from fake_pcp import make_fake_pcp

from brainfm.bidsapp.cli import main as brainfm_main
from brainfm.derivatives import incomplete_participants, participant_report_path
from brainfm.importers.cli import main as import_main
from brainfm.models.cli import main as train_main
from brainfm.testdata import make_dataset

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict[str, str]:
    """Checksum and modification time of every file below ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            + str(p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def assert_contract(capfd: pytest.CaptureFixture[str], code: int, expected: int, prog: str,
                    names: str, before: dict[str, str], root: Path) -> str:
    out, err = capfd.readouterr()
    assert code == expected, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    assert names in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert snapshot(root) == before
    return lines[0]


# --------------------------------------------------------------------------------------------
# participant level
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("matrix") / "ds", n_subjects=2, n_volumes=60,
                        seed=7).out_dir


def _func(ds: Path, sub: str = "01") -> Path:
    return ds / "bids" / "derivatives" / "fmriprep" / f"sub-{sub}" / "func"


def _bold_json(ds: Path) -> Path:
    return next(_func(ds).glob("*_desc-preproc_bold.json"))


def _bold(ds: Path) -> Path:
    return next(_func(ds).glob("*_desc-preproc_bold.nii.gz"))


def _confounds(ds: Path) -> Path:
    return next(_func(ds).glob("*_desc-confounds_timeseries.tsv"))


def _set_json(path: Path, **values: object) -> Path:
    meta = json.loads(path.read_text())
    meta.update(values)
    path.write_text(json.dumps(meta))
    return path


def _edit_confounds(ds: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    path = _confounds(ds)
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _fd(value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table["framewise_displacement"] = value
        return table
    return edit


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _nan_bold(path: Path) -> Path:
    img = nb.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[..., 5] = np.nan
    nb.Nifti1Image(data, img.affine, img.header).to_filename(path)
    return path


def _big_card(ds: Path, tmp: Path) -> Path:
    model = tmp / "bigmodel"
    shutil.copytree(Path(__file__).parents[1] / "brainfm" / "data" / "models" / "default", model)
    card = json.loads((model / "model_card.json").read_text())
    card["ensemble"]["members"][0]["config"]["d_model"] = 10**7
    (model / "model_card.json").write_text(json.dumps(card))
    return model


DEFAULT_MODEL = Path(__file__).parents[1] / "brainfm" / "data" / "models" / "default"


def _edited_model(tmp: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of the default model whose card ``edit`` changed (in place)."""
    model = tmp / "editedmodel"
    shutil.copytree(DEFAULT_MODEL, model)
    card = json.loads((model / "model_card.json").read_text())
    edit(card)
    (model / "model_card.json").write_text(json.dumps(card))
    return model


def _rename_target(card: dict) -> None:
    card["targets"][0]["name"] = "brain_age"


def _swap_rois(card: dict) -> None:
    card["roi_names"][:2] = card["roi_names"][1::-1]


def _loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to("loop")
    return tmp / "loop"


def _a_file(tmp: Path) -> Path:
    (tmp / "notamodel.json").write_text("{}")
    return tmp / "notamodel.json"


# Each case: (id, setup(ds, tmp) -> (extra options, text the message must contain), exit code).
# setup may break the dataset copy ``ds`` and prepare things in ``tmp`` (outside the input).
PARTICIPANT_CASES: list[tuple[str, Callable[[Path, Path], tuple[list[str], str]], int]] = [
    ("tr-not-a-number",
     lambda ds, tmp: ([], str(_set_json(_bold_json(ds), RepetitionTime="two"))), 66),
    ("tr-in-milliseconds",
     lambda ds, tmp: ([], str(_set_json(_bold_json(ds), RepetitionTime=2000))), 66),
    ("tr-zero", lambda ds, tmp: ([], str(_set_json(_bold_json(ds), RepetitionTime=0))), 66),
    ("fd-all-na-with-censoring",
     lambda ds, tmp: (["--fd-thresh", "0.5"], str(_edit_confounds(ds, _fd("n/a")))), 66),
    ("fd-not-numeric-with-censoring",
     lambda ds, tmp: (["--fd-thresh", "0.5"], str(_edit_confounds(ds, _fd("high")))), 66),
    ("confound-column-missing",
     lambda ds, tmp: ([], str(_edit_confounds(ds, lambda t: t.drop(columns="global_signal")))),
     66),
    ("confounds-file-missing",
     lambda ds, tmp: ([], _confounds(ds).unlink() or "confounds"), 66),
    ("confounds-fewer-rows",
     lambda ds, tmp: ([], str(_edit_confounds(ds, lambda t: t.iloc[:-5]))), 66),
    ("bold-truncated", lambda ds, tmp: ([], str(_truncate(_bold(ds)))), 66),
    ("bold-with-nans", lambda ds, tmp: ([], _nan_bold(_bold(ds)).name), 66),
    ("band-pass-inverted",
     lambda ds, tmp: (["--lower-bpf", "0.1", "--upper-bpf", "0.01"], "--lower-bpf"), 64),
    ("unknown-participant",  # 18: the filters selected nothing (README's exit codes)
     lambda ds, tmp: (["--participant-label", "99"], "sub-99"), 18),
    ("unknown-atlas", lambda ds, tmp: (["--atlases", "NoSuchAtlas"], "NoSuchAtlas"), 64),
    ("model-folder-missing",
     lambda ds, tmp: (["--model", str(tmp / "nomodel")], str(tmp / "nomodel")), 66),
    ("model-card-absurd-size",
     lambda ds, tmp: (["--model", str(_big_card(ds, tmp))], "model_card.json"), 66),
    ("work-dir-inside-input",
     lambda ds, tmp: (["-w", str(ds / "bids" / "work")], str(ds / "bids" / "work")), 64),
    # a card edited after training: its targets are not what the weights predict (issue 27)
    ("model-card-target-renamed",
     lambda ds, tmp: (["--model", str(_edited_model(tmp, _rename_target))],
                      str(tmp / "editedmodel" / "model_card.json")), 66),
    ("model-card-rois-reordered",  # same 200 ROIs, another order: said so, before any work
     lambda ds, tmp: (["--model", str(_edited_model(tmp, _swap_rois))], "another order"), 66),
    ("model-is-a-file",
     lambda ds, tmp: (["--model", str(_a_file(tmp))], f"{tmp / 'notamodel.json'} is a file"),
     66),
    ("model-symlink-loop",
     lambda ds, tmp: (["--model", str(_loop(tmp))], f"{tmp / 'loop'} is a symbolic link that "
                                                    "loops"), 66),
    ("nprocs-negative", lambda ds, tmp: (["--nprocs", "-1"], "--nprocs"), 64),
    ("lock-timeout-negative", lambda ds, tmp: (["--lock-timeout", "-5"], "--lock-timeout"), 64),
]


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in PARTICIPANT_CASES],
                         ids=[c[0] for c in PARTICIPANT_CASES])
def test_participant_bad_input(base_dataset: Path, tmp_path: Path, setup, expected: int,
                               capfd: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    extra, names = setup(ds, tmp_path)
    before = snapshot(ds)
    out = tmp_path / "out"
    work = [] if "-w" in extra else ["-w", str(tmp_path / "work")]
    code = brainfm_main([str(ds / "bids"), str(out), "participant", "--skip-bids-validation",
                         "--nprocs", "1", "--min-time", "0", *work, *extra])
    assert_contract(capfd, code, expected, "brainfm", names, before, ds)
    # nothing of the broken participant is published (sub-01 is the one broken, when one is):
    # at most the record of the attempt (sub-01/log/), and no report, so it counts as incomplete
    assert not (out / "sub-01" / "func").exists() and not (out / "sub-01.html").exists()
    assert {p.name for p in (out / "sub-01").glob("*")} <= {"log"}


def test_usage_errors_exit_64_with_one_line(tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    for argv in (["--nuisance-regressors", "99P"], ["--nprocs", "two"], ["--fd-thresh", "x"]):
        with pytest.raises(SystemExit) as exc:
            brainfm_main([str(tmp_path), str(tmp_path / "out"), "participant", *argv])
        out, err = capfd.readouterr()
        assert exc.value.code == 64 and argv[1] in err and "Traceback" not in out + err
        assert not (tmp_path / "out").exists()


def test_output_problems(base_dataset: Path, tmp_path: Path,
                         capfd: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    before = snapshot(ds)

    def run(out: Path) -> int:
        return brainfm_main([str(ds / "bids"), str(out), "participant", "--skip-bids-validation",
                             "--nprocs", "1", "-w", str(tmp_path / "work")])

    # the output folder is a file
    (tmp_path / "file").write_text("x")
    assert_contract(capfd, run(tmp_path / "file"), 64, "brainfm", str(tmp_path / "file"),
                    before, ds)
    # a symbolic link in the output that leads into the input
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "sub-01").symlink_to(ds / "bids" / "sub-01")
    assert_contract(capfd, run(linked), 64, "brainfm", str(linked / "sub-01"), before, ds)
    # an output dataset_description.json that is not a JSON object
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "dataset_description.json").write_text("[1, 2]")
    assert_contract(capfd, run(listed), 64, "brainfm", str(listed / "dataset_description.json"),
                    before, ds)
    # an output_dir that is a symbolic link to nowhere (not "File exists")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    line = assert_contract(capfd, run(dangling), 64, "brainfm", str(dangling), before, ds)
    assert "symbolic link" in line and str(tmp_path / "gone") in line
    # bids_dir that does not exist
    code = brainfm_main([str(tmp_path / "nope"), str(tmp_path / "o"), "participant"])
    assert_contract(capfd, code, 66, "brainfm", str(tmp_path / "nope"), before, ds)
    # bids_dir equal to the output
    code = brainfm_main([str(ds / "bids"), str(ds / "bids"), "participant"])
    assert_contract(capfd, code, 64, "brainfm", str(ds / "bids"), before, ds)


@pytest.mark.parametrize("limit", [200_000, 700_000])  # outside any node, inside one
def test_full_disk_exits_1_and_publishes_no_participant(base_dataset: Path, tmp_path: Path,
                                                        limit: int) -> None:
    """A full disk, as a file-size limit (writes fail with EFBIG as they would with ENOSPC)."""
    import resource

    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    before = snapshot(ds)

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "brainfm.bidsapp.cli", str(ds / "bids"), str(out), "participant",
         "--skip-bids-validation", "--nprocs", "1", "--min-time", "0",
         "-w", str(tmp_path / "w")], preexec_fn=small_disk, capture_output=True, text=True,
        env={**os.environ, "NIPYPE_NO_ET": "1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("brainfm: error:")]
    assert len(line) == 1, proc.stderr
    # what and where: the file, or (failures inside nodes, one line per participant) the crash
    # file that holds the traceback
    assert "File too large" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert incomplete_participants(out) == sorted(p.name for p in out.glob("sub-*/"))
    assert not list(out.glob("sub-*.html"))
    assert snapshot(ds) == before


@pytest.fixture()
def small_tmpfs(tmp_path: Path):
    """A real 2 MB file system (tmpfs), so that every write fails once it is full, small ones
    (logs, crash files, nipype's result files) included; skipped where mounting is not
    allowed (needs root and mount rights, as in CI)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        why = mounted.stderr.strip() or "mount failed"
        pytest.skip(f"cannot mount a 2 MB tmpfs here ({why}): needs root and mount rights")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# (id, which folder lies on the full disk, --nprocs): nipype's Linear and MultiProc plugins
FULL_DISK_CASES = [
    ("work-dir-full-linear", "work", "1"),
    ("work-dir-full-multiproc", "work", "2"),
    ("output-dir-full-linear", "output", "1"),
    ("output-dir-full-multiproc", "output", "2"),
]


@pytest.mark.parametrize(("where", "nprocs"), [c[1:] for c in FULL_DISK_CASES],
                         ids=[c[0] for c in FULL_DISK_CASES])
def test_real_full_disk_ends_at_once_with_one_line(base_dataset: Path, tmp_path: Path,
                                                   small_tmpfs: Path, where: str,
                                                   nprocs: str) -> None:
    """A full work or output disk: exit 1 within seconds, one line naming the full folder, no
    traceback, no nipype lines on the console, no participant published (issue 27)."""
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    before = snapshot(ds)
    out = small_tmpfs / "out" if where == "output" else tmp_path / "out"
    work = small_tmpfs / "work" if where == "work" else tmp_path / "work"
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "brainfm.bidsapp.cli", str(ds / "bids"), str(out),
             "participant", "--skip-bids-validation", "--nprocs", nprocs, "--min-time", "0",
             "-w", str(work)], capture_output=True, text=True,
            env={**os.environ, "NIPYPE_NO_ET": "1"}, timeout=150)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"brainfm hung on a full disk (killed after {err.timeout} s)")
    assert time.monotonic() - started < 120
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("brainfm: error:")]
    assert len(lines) == 1, proc.stderr
    assert "No space left on device" in lines[0] and str(small_tmpfs) in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Logging error" not in proc.stderr and "nipype" not in proc.stdout, proc.stdout
    assert [ln for ln in proc.stderr.splitlines() if "nipype.workflow" in ln] == []
    assert snapshot(ds) == before
    assert not list(out.glob("sub-*.html"))
    assert incomplete_participants(out) == sorted(p.name for p in out.glob("sub-*/"))


def test_duplicate_submission_fails_fast_or_waits(base_dataset: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """The same participants submitted twice at once (same output and work dir): the second
    job stops at once with one line (exit 64), or waits with --lock-timeout; the first job
    completes untouched (issue 27)."""
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    before = snapshot(ds)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(ds / "bids"), str(out), "participant", "--skip-bids-validation", "--nprocs", "1",
            "--min-time", "0", "-w", str(work)]
    first = subprocess.Popen([sys.executable, "-m", "brainfm.bidsapp.cli", *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NIPYPE_NO_ET": "1"})
    try:
        assert first.stderr is not None
        deadline = time.monotonic() + 120
        for line in first.stderr:  # the first job holds its locks once the workflow runs
            if "nipype plugin" in line or time.monotonic() > deadline:
                break
        capfd.readouterr()
        started = time.monotonic()
        code = brainfm_main(argv)
        line = assert_contract(capfd, code, 64, "brainfm", "sub-01, sub-02", before, ds)
        assert str(out / ".brainfm-locks" / "sub-01.lock") in line and "--lock-timeout" in line
        assert time.monotonic() - started < 30  # fails fast, before any work
        # asked to wait, it runs once the first has finished
        assert brainfm_main([*argv, "--lock-timeout", "300"]) == 0
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert "Traceback" not in err and "brainfm: error" not in err
    assert incomplete_participants(out) == []
    assert {p.name for p in out.glob("sub-*.html")} == {"sub-01.html", "sub-02.html"}
    assert snapshot(ds) == before


def _oblique(ds: Path) -> str:
    path = _bold(ds)
    img = nb.load(path)
    angle = np.radians(10)
    rotation = np.array([[1, 0, 0, 0], [0, np.cos(angle), -np.sin(angle), 0],
                         [0, np.sin(angle), np.cos(angle), 0], [0, 0, 0, 1]])
    nb.Nifti1Image(np.asanyarray(img.dataobj), rotation @ img.affine, img.header
                   ).to_filename(path)
    return f"{path} is labelled space-MNI152NLin6Asym but its voxel grid is oblique"


# (id, setup(ds) -> the text of the warning): input that is suspicious, not wrong
WARNING_CASES = [
    ("oblique-affine-labelled-mni", _oblique),
    ("sidecar-tr-disagrees-with-header",
     lambda ds: f"RepetitionTime 2.5 s in {_set_json(_bold_json(ds), RepetitionTime=2.5)} "
                "disagrees with the NIfTI header"),
]


@pytest.mark.parametrize("setup", [c[1] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES])
def test_suspicious_input_is_warned(base_dataset: Path, tmp_path: Path, setup,
                                    capfd: pytest.CaptureFixture[str],
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="brainfm")
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    text = setup(ds)
    before = snapshot(ds)
    code = brainfm_main([str(ds / "bids"), str(tmp_path / "out"), "participant",
                         "--skip-bids-validation", "--boilerplate-only", "--nprocs", "1",
                         "-w", str(tmp_path / "work")])
    out, err = capfd.readouterr()
    assert code == 0 and "Traceback" not in out + err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if text in w]) == 1, warnings
    assert snapshot(ds) == before


def test_node_failure_under_multiproc_is_quiet(base_dataset: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """A node that fails in a MultiProc worker: one error line, none of nipype's WARNING
    lines on the console at default verbosity (they go to work/logs/nipype.log; issue 27)."""
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    bold = _nan_bold(_bold(ds))
    before = snapshot(ds)
    code = brainfm_main([str(ds / "bids"), str(tmp_path / "out"), "participant",
                         "--skip-bids-validation", "--nprocs", "2", "--min-time", "0",
                         "-w", str(tmp_path / "work")])
    out, err = capfd.readouterr()
    assert code == 66 and str(bold) in err, err
    assert "nipype" not in out and "WARNING" not in out + err, out
    assert snapshot(ds) == before
    assert "Error on" in (tmp_path / "work" / "logs" / "nipype.log").read_text()


def test_edited_model_card_is_another_model(tmp_path: Path) -> None:
    """The model hash covers the card: an edited card is reported as another model, the
    weights' hash stays (issue 27); the packaged card file itself is not changed."""
    from brainfm.models.checkpoint import verify_checkpoint

    original = verify_checkpoint(DEFAULT_MODEL)
    edited = verify_checkpoint(_edited_model(
        tmp_path, lambda card: card["targets"][0].update(note="edited")))
    assert edited["weights_sha256"] == original["weights_sha256"]
    assert edited["model_sha256"] != original["model_sha256"]
    assert "model_sha256" not in json.loads((DEFAULT_MODEL / "model_card.json").read_text())


@pytest.fixture()
def read_only_dir(tmp_path: Path):
    """A folder nobody can write, root included: a read-only bind mount (skipped where the
    sandbox allows no mount; permission bits do not stop root)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    steps = (["mount", "--bind", str(folder), str(folder)],
             ["mount", "-o", "remount,bind,ro", str(folder)])
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("no read-only bind mount here (needs root and mount rights)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_unwritable_output_work_and_import_folders(base_dataset: Path, tmp_path: Path,
                                                   read_only_dir: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    before = snapshot(ds)
    common = ["participant", "--skip-bids-validation", "--nprocs", "1"]
    out = read_only_dir / "out"
    code = brainfm_main([str(ds / "bids"), str(out), *common, "-w", str(tmp_path / "w")])
    assert_contract(capfd, code, 64, "brainfm", str(out), before, ds)
    work = read_only_dir / "work"
    code = brainfm_main([str(ds / "bids"), str(tmp_path / "out"), *common, "-w", str(work)])
    assert_contract(capfd, code, 64, "brainfm", str(work), before, ds)
    assert not (tmp_path / "out").exists()  # refused before any shared output
    src = make_fake_pcp(tmp_path / "pcp")
    before = snapshot(src)
    code = import_main(["pcp", str(src), str(read_only_dir / "imported")])
    assert_contract(capfd, code, 64, "brainfm-import", str(read_only_dir / "imported"), before,
                    src)


def test_partial_coverage_raw_epi_is_refused_before_preprocessing(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A 40 s, 3-slice EPI: named with its size and length, not preprocessed until it fails."""
    bids = tmp_path / "bids"
    func = bids / "sub-01" / "func"
    func.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    bold = func / "sub-01_task-rest_bold.nii.gz"
    nb.Nifti1Image(np.ones((64, 64, 3, 20), np.int16), np.diag([3.0, 3.0, 3.0, 1.0])
                   ).to_filename(bold)
    (func / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0,
                                                                  "TaskName": "rest"}))
    before = snapshot(bids)
    code = brainfm_main([str(bids), str(tmp_path / "out"), "participant", "--preproc",
                         "minimal", "--skip-bids-validation", "--nprocs", "1",
                         "-w", str(tmp_path / "w")])
    line = assert_contract(capfd, code, 66, "brainfm", str(bold), before, bids)
    assert "64x64x3 voxels" in line and "40 s" in line and "--preproc fmriprep" in line


def test_relative_model_folder_predicts(base_dataset: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--model mymodel`` from the current folder (the predict node runs elsewhere)."""
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    shutil.copytree(Path(__file__).parents[1] / "brainfm" / "data" / "models" / "default",
                    tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    assert brainfm_main(["ds/bids", "out", "participant", "--skip-bids-validation", "--nprocs",
                         "1", "--min-time", "0", "--model", "mymodel", "-w", "w"]) == 0
    predictions = pd.read_csv(next((tmp_path / "out").glob("sub-01/func/*_predictions.tsv")),
                              sep="\t")
    assert np.isfinite(predictions["age"]).all()


def test_all_runs_excluded_is_warned_and_counted(base_dataset: Path, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="brainfm")
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    img = nb.load(_bold(ds))
    nb.Nifti1Image(np.zeros(img.shape, np.float32), img.affine, img.header).to_filename(_bold(ds))
    before = snapshot(ds)
    out = tmp_path / "out"
    code = brainfm_main([str(ds / "bids"), str(out), "participant", "--skip-bids-validation",
                         "--nprocs", "1", "--min-time", "0", "-w", str(tmp_path / "work")])
    out_text, err = capfd.readouterr()
    assert code == 0 and "Traceback" not in out_text + err
    err = err + caplog.text
    assert "WARNING" in err and "sub-01: every run was excluded" in err and "carry a signal" in err
    assert "sub-02: every run" not in err
    assert "(1 included, 1 excluded)" in err
    assert snapshot(ds) == before
    predictions = pd.read_csv(out / "sub-01" / "func" / "sub-01_desc-brainfm_predictions.tsv",
                              sep="\t", keep_default_na=False)
    assert predictions.loc[0, "age"] == "n/a"


def test_group_of_participants_without_predictions_says_so(base_dataset: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]
                                                            ) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    for sub in ("01", "02"):
        bold = _bold(ds).parent.parent.parent / f"sub-{sub}" / "func"
        path = next(bold.glob("*_desc-preproc_bold.nii.gz"))
        img = nb.load(path)
        nb.Nifti1Image(np.zeros(img.shape, np.float32), img.affine, img.header).to_filename(path)
    out = tmp_path / "out"
    assert brainfm_main([str(ds / "bids"), str(out), "participant", "--skip-bids-validation",
                         "--nprocs", "1", "--min-time", "0", "-w", str(tmp_path / "w")]) == 0
    assert brainfm_main([str(ds / "bids"), str(out), "group"]) == 0
    assert "Traceback" not in "".join(capfd.readouterr())
    html = (out / "group_report.html").read_text()
    assert "No age prediction to show" in html and "No brain-age gap" in html


@pytest.mark.parametrize(("nprocs", "signum"), [("1", signal.SIGTERM), ("2", signal.SIGINT)])
def test_signal_gives_one_line_and_128_plus_signal(base_dataset: Path, tmp_path: Path,
                                                   nprocs: str, signum: int) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    before = snapshot(ds)
    cmd = [sys.executable, "-m", "brainfm.bidsapp.cli", str(ds / "bids"), str(tmp_path / "out"),
           "participant", "--skip-bids-validation", "--nprocs", nprocs,
           "-w", str(tmp_path / "work")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NIPYPE_NO_ET": "1"})
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until the workflow runs
        if "nipype plugin" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode in (128 + signum, 0), err  # 0: it finished before the signal
    if proc.returncode:
        assert err.strip().splitlines() == [f"brainfm: interrupted by {name}; rerun the "
                                            "same command to finish"], err
        assert "Traceback" not in out + err
    assert snapshot(ds) == before
    # a participant is complete only with its report, written last; a rerun completes the rest
    out_dir = tmp_path / "out"
    for folder in out_dir.glob("sub-*/"):
        complete = participant_report_path(out_dir, folder.name).is_file()
        assert complete == (folder.name not in incomplete_participants(out_dir))
    rerun = subprocess.run(cmd, capture_output=True, text=True,
                           env={**os.environ, "NIPYPE_NO_ET": "1"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "nipype.workflow" not in rerun.stdout + rerun.stderr  # quiet at default verbosity
    assert incomplete_participants(out_dir) == []
    assert {p.name for p in out_dir.glob("sub-*.html")} == {"sub-01.html", "sub-02.html"}


# --------------------------------------------------------------------------------------------
# group level
# --------------------------------------------------------------------------------------------


def test_group_bad_input(base_dataset: Path, tmp_path: Path,
                         capfd: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(base_dataset, ds)
    bids, out = ds / "bids", tmp_path / "out"

    def group(*extra: str) -> int:
        return brainfm_main([str(bids), str(out), "group", *extra])

    before = snapshot(ds)
    # no participant level yet
    assert_contract(capfd, group(), 66, "brainfm", str(out), before, ds)
    assert brainfm_main([str(bids), str(out), "participant", "--skip-bids-validation",
                         "--nprocs", "1", "--min-time", "0", "-w", str(tmp_path / "w")]) == 0
    capfd.readouterr()
    # ages that are not numbers, in the input's participants.tsv
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    table["age"] = ["twelve"] * len(table)
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    before = snapshot(ds)
    assert_contract(capfd, group(), 66, "brainfm", str(bids / "participants.tsv"), before, ds)
    assert not (out / "group_predictions.tsv").exists()
    # a reference sample that does not exist
    missing = tmp_path / "nope.tsv"
    code = group("--bias-correction", "linear", "--reference-ages", str(missing))
    assert_contract(capfd, code, 66, "brainfm", str(missing), before, ds)
    # an unknown correction
    with pytest.raises(SystemExit) as exc:
        group("--bias-correction", "quadratic")
    _, err = capfd.readouterr()
    assert exc.value.code == 64 and "quadratic" in err and "Traceback" not in err
    assert snapshot(ds) == before


def _ages(fx: dict, ages: dict[str, float]) -> str:
    """Write these ages into the fixture's participants.tsv; return its path."""
    path = fx["bids"] / "participants.tsv"
    table = pd.read_csv(path, sep="\t")
    for sub, age in ages.items():
        table.loc[table["participant_id"] == sub, "age"] = age
    table.to_csv(path, sep="\t", index=False)
    return str(path)


def _drop_predictions(fx: dict, sub: str) -> str:
    """Remove this participant's predictions (its time series stay); return its ID."""
    func = fx["out"] / sub / "func"
    for path in func.glob("*_predictions.*"):
        path.unlink()
    (func / f"{sub}_task-rest_space-MNI152NLin6Asym_atlas-CC200_stat-mean_timeseries.tsv"
     ).write_text("a\tb\n1\t2\n")
    return sub


def _second_model(fx: dict, sub: str) -> str:
    """Give this participant's predictions another model hash; return its short form."""
    path = next(fx["out"].glob(f"{sub}/func/*_predictions.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "ModelSHA256": "ab" * 32}))
    return "abababababab…"


# Each case: (id, setup(fx, tmp) -> (extra options, texts the one error or warning line must
# contain), exit code). ``fx`` is tests/test_group.py's fixture of participant-level outputs
# (sub-01 .. sub-05, ages known); exit 0 means a run that goes on with one warning line.
GROUP_CASES: list[tuple[str, Callable[[dict, Path], tuple[list[str], list[str]]], int]] = [
    ("age-missing-codes",
     lambda fx, tmp: ([], [_ages(fx, {"sub-02": -9999, "sub-04": -999}), "'age'", "sub-02",
                           "sub-04", "read as n/a"]), 0),
    ("age-negative", lambda fx, tmp: ([], [_ages(fx, {"sub-03": -5}), "sub-03: -5", "n/a"]), 66),
    ("age-zero", lambda fx, tmp: ([], [_ages(fx, {"sub-03": 0}), "sub-03: 0", "n/a"]), 66),
    ("age-150", lambda fx, tmp: ([], [_ages(fx, {"sub-03": 150}), "sub-03: 150", "n/a"]), 66),
    ("mixed-models",
     lambda fx, tmp: ([], [str(fx["out"]), _second_model(fx, "sub-02"), "sub-02",
                           "--allow-mixed-models"]), 64),
    ("mixed-models-allowed",
     lambda fx, tmp: (["--allow-mixed-models"], [str(fx["out"]), _second_model(fx, "sub-02"),
                                                 "sub-02", "per model"]), 0),
    ("participant-without-predictions",
     lambda fx, tmp: ([], ["left out", _drop_predictions(fx, "sub-03"),
                           "time series but no predictions"]), 0),
    ("ages-in-months",
     lambda fx, tmp: ([], [_ages(fx, {s: 12 * a for s, a in fx["ages"].items()}), "months",
                           "divide the column by 12"]), 66),
]


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in GROUP_CASES],
                         ids=[c[0] for c in GROUP_CASES])
def test_group_bad_input_case(tmp_path: Path, setup, expected: int,
                              capfd: pytest.CaptureFixture[str],
                              caplog: pytest.LogCaptureFixture) -> None:
    from test_group import write_group_fixture

    fx = write_group_fixture(tmp_path, n_participants=5, sessions_for=(), experts=False)
    extra, names = setup(fx, tmp_path)
    before = snapshot(fx["bids"])
    caplog.set_level(logging.WARNING, logger="brainfm")
    code = brainfm_main([str(fx["bids"]), str(fx["out"]), "group", *extra])
    if expected:
        line = assert_contract(capfd, code, expected, "brainfm", names[0], before, fx["bids"])
        assert all(n in line for n in names), line
        assert not (fx["out"] / "group_predictions.tsv").exists()
        return
    out, err = capfd.readouterr()
    assert code == 0 and "Traceback" not in out + err, err
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and names[0] in r.getMessage()]
    assert len(warned) == 1 and all(n in warned[0] for n in names), warned
    assert snapshot(fx["bids"]) == before
    assert (fx["out"] / "group_report.html").is_file()


# --------------------------------------------------------------------------------------------
# importer
# --------------------------------------------------------------------------------------------

PHENOTYPE_CASES = [  # (id, column, row, value, text of the message)
    ("sub-id-not-a-number", "SUB_ID", 0, "abc", "SUB_ID 'abc'"),
    ("sub-id-negative", "SUB_ID", 0, "-5", "SUB_ID '-5'"),
    ("age-as-words", "AGE_AT_SCAN", 1, "twelve", "'twelve'"),
    ("age-overflows", "AGE_AT_SCAN", 1, "1e400", "'1e400'"),
    ("age-negative", "AGE_AT_SCAN", 1, "-3", "'-3'"),
    ("piq-as-words", "PIQ", 1, "high", "'high'"),
    ("duplicate-file-id", None, 0, None, "also on line 2"),
]


@pytest.mark.parametrize(("column", "row", "value", "text"), [c[1:] for c in PHENOTYPE_CASES],
                         ids=[c[0] for c in PHENOTYPE_CASES])
def test_importer_phenotype_values(tmp_path: Path, column: str | None, row: int, value: str,
                                   text: str, capfd: pytest.CaptureFixture[str]) -> None:
    src = make_fake_pcp(tmp_path / "pcp")
    csv = src / "Phenotypic_V1_0b_preprocessed1.csv"
    table = pd.read_csv(csv, dtype=str)
    if column is None:
        table = pd.concat([table, table.iloc[[row]]])
    else:
        table.loc[row, column] = value
    table.to_csv(csv, index=False)
    before = snapshot(src)
    code = import_main(["pcp", str(src), str(tmp_path / "out")])
    line = assert_contract(capfd, code, 66, "brainfm-import", str(csv), before, src)
    assert text in line and "line" in line
    assert not (tmp_path / "out").exists()


def test_importer_output_problems(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    src = make_fake_pcp(tmp_path / "pcp", archive=True)
    before = snapshot(src)
    (tmp_path / "file").write_text("x")
    code = import_main(["pcp", str(src), str(tmp_path / "file")])
    assert_contract(capfd, code, 64, "brainfm-import", str(tmp_path / "file"), before, src)
    code = import_main(["pcp", str(src), str(src / "inside")])
    assert_contract(capfd, code, 64, "brainfm-import", str(src / "inside"), before, src)
    code = import_main(["pcp", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert_contract(capfd, code, 66, "brainfm-import", str(tmp_path / "missing"), before, src)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def test_training_bad_input(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from toy_cohort import make_toy_cohort

    toy = tmp_path / "toy"
    make_toy_cohort(toy, 12, seed=1)
    before = snapshot(toy)
    common = ["--epochs", "1", "--window", "32", "--patch-len", "4", "-o", str(tmp_path / "o")]
    code = train_main(["finetune", str(tmp_path / "nope"), "--target", "age", *common])
    assert_contract(capfd, code, 66, "brainfm-train", str(tmp_path / "nope"), before, toy)
    code = train_main(["finetune", str(toy), "--atlas", "Toy", "--target", "iq=FSIQ", *common])
    assert_contract(capfd, code, 64, "brainfm-train", "FSIQ", before, toy)
    table = tmp_path / "participants.tsv"
    table.write_text("participant_id\tage\nsub-999\t20\n")
    code = train_main(["finetune", str(toy), "--atlas", "Toy", "--target", "age",
                       "--participants-tsv", str(table), *common])
    assert_contract(capfd, code, 66, "brainfm-train", str(table), before, toy)
    code = train_main(["predict", "--model", str(tmp_path / "nomodel"), str(toy),
                       "-o", str(tmp_path / "p.tsv")])
    assert_contract(capfd, code, 66, "brainfm-train", str(tmp_path / "nomodel"), before, toy)
    # some subjects with one ROI column fewer: the odd files are named, not the first read
    files = sorted(toy.glob("sub-*/func/*_timeseries.tsv"))
    for odd in files[-2:]:
        table = pd.read_csv(odd, sep="\t")
        table.drop(columns=table.columns[3]).to_csv(odd, sep="\t", index=False, na_rep="n/a")
    before = snapshot(toy)
    code = train_main(["finetune", str(toy), "--atlas", "Toy", "--target", "age", *common])
    line = assert_contract(capfd, code, 66, "brainfm-train", str(files[-2]), before, toy)
    assert "15 columns where 16 are expected" in line and "10 of the 12 files" in line
    assert "the model" not in line


def test_finetune_on_too_few_subjects_says_it_has_no_validation(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """brainfm-train refuses fewer than 40 subjects (TRAIN_CASES); the function still warns."""
    from toy_cohort import TINY, make_toy_cohort

    from brainfm.models.options import TrainOptions
    from brainfm.models.runtime import setup
    from brainfm.models.sessions import load_sessions
    from brainfm.models.targets import TargetSpec, load_participants, target_matrix
    from brainfm.models.timeseries import find_timeseries
    from brainfm.models.train import finetune

    toy = tmp_path / "toy"
    make_toy_cohort(toy, 3, seed=1)
    sessions = load_sessions(find_timeseries(toy, "Toy"))
    specs = [TargetSpec("age", "age")]
    y = target_matrix(load_participants(toy / "participants.tsv"),
                      [s.participant_id for s in sessions], specs)
    opts = TrainOptions(atlas="Toy", epochs=1, threads=1, model=dict(TINY))
    with caplog.at_level(logging.WARNING, logger="brainfm.models"):
        finetune(sessions, y, specs, opts, setup(opts))
    assert "none for inner validation" in caplog.text and "3 participant(s)" in caplog.text


@pytest.fixture(scope="module")
def train_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """44 toy subjects (ages 10 to 40, sites S0 to S2): enough to train on."""
    from toy_cohort import make_toy_cohort

    toy = tmp_path_factory.mktemp("train-cohort") / "toy"
    make_toy_cohort(toy, 44, seed=1)
    return toy


def _table(toy: Path, tmp: Path, edit: Callable[[pd.DataFrame], None]) -> str:
    """The cohort's participants.tsv edited into ``tmp`` (the input stays as it is)."""
    table = pd.read_csv(toy / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    table["age"] = table["age"].astype(object)
    edit(table)
    path = tmp / "participants.tsv"
    table.to_csv(path, sep="\t", index=False)
    return str(path)


def _set(column: str, values: dict[int, object]) -> Callable[[pd.DataFrame], None]:
    def edit(table: pd.DataFrame) -> None:
        for row, value in values.items():
            table.loc[row, column] = str(value)
    return edit


def _months(table: pd.DataFrame) -> None:
    table["age"] = [str(round(12 * float(a), 1)) for a in table["age"]]


def _sites(n: int) -> Callable[[pd.DataFrame], None]:
    def edit(table: pd.DataFrame) -> None:
        table["site"] = [f"S{i % n}" for i in range(len(table))]
    return edit


# Each case: (id, subcommand, edit of participants.tsv, texts the one error (or, exit 0,
# warning) line must contain besides the file, exit code). The table is passed with
# --participants-tsv; the cohort has 44 subjects (sub-000 .. sub-043).
TRAIN_CASES: list[tuple[str, str, Callable[[pd.DataFrame], None], list[str], int]] = [
    ("age-missing-codes", "finetune",
     _set("age", {0: -9999, 1: -999, 2: -99, 3: "n/a"}),
     ["no age for 4 of the 44", "sub-000, sub-001, sub-002, sub-003", "left out"], 0),
    ("age-negative", "finetune", _set("age", {3: -5}), ["sub-003: -5", "n/a"], 66),
    ("age-150", "cv", _set("age", {3: 150}), ["sub-003: 150", "0 < age < 120"], 66),
    ("ages-in-months", "finetune", _months, ["months", "divide the column by 12"], 66),
    ("too-few-subjects", "finetune", _set("age", dict.fromkeys(range(12, 44), -9999)),
     ["too few subjects to train and validate a model: 12; at least 40"], 66),
    ("ensemble-too-few-subjects", "ensemble", _set("age", dict.fromkeys(range(39, 44), "n/a")),
     ["too few subjects to train and validate a model: 39; at least 40"], 66),
    ("ensemble-two-sites", "ensemble", _sites(2),
     ["'site'", "2 site(s) (S0, S1)", "at least 3", "brainfm-train finetune"], 64),
]


@pytest.mark.parametrize(("command", "edit", "names", "expected"),
                         [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_training_cohort_case(train_cohort: Path, tmp_path: Path, command: str, edit,
                              names: list[str], expected: int,
                              capfd: pytest.CaptureFixture[str],
                              caplog: pytest.LogCaptureFixture) -> None:
    table = _table(train_cohort, tmp_path, edit)
    before = snapshot(train_cohort)
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="brainfm")
    no_pretraining = [] if command == "finetune" else ["--pretrain-epochs", "0"]
    code = train_main([command, str(train_cohort), "--atlas", "Toy", "--target", "age",
                       "--participants-tsv", table, "--epochs", "1", *no_pretraining,
                       "--window", "32", "--patch-len", "4", "--d-model", "16",
                       "--n-experts", "2", "--ssm-layers", "1", "--d-state", "4",
                       "--threads", "1", "-o", str(out)])
    if expected:
        line = assert_contract(capfd, code, expected, "brainfm-train", table, before,
                               train_cohort)
        assert all(n in line for n in names), line
        assert not out.exists()  # refused before any training: nothing written
        return
    std_out, err = capfd.readouterr()
    assert code == 0 and "Traceback" not in std_out + err, err
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and table in r.getMessage()]
    assert len(warned) == 1 and all(n in warned[0] for n in names), warned
    assert snapshot(train_cohort) == before
    assert (out / "model_card.json").is_file()


def test_signal_inside_a_finalizer_still_gives_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    """A signal that lands in a weakref callback or ``__del__`` (SQLAlchemy's under pybids, seen
    in CI) is not lost with an "Exception ignored" traceback: the command stops with one line."""
    import gc

    from brainfm.errors import run_command

    class Finalised:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # delivered while the finalizer runs
            sum(range(1000))  # bytecode for the handler to run on, inside the finalizer

    def body() -> int:
        Finalised()
        gc.collect()
        for _ in range(10_000):  # the command's own code, where the interruption belongs
            sum(range(100))
        return 0

    assert run_command("brainfm", body) == 128 + signal.SIGTERM
    err = capfd.readouterr().err
    assert err.strip().splitlines() == ["brainfm: interrupted by SIGTERM; rerun the same "
                                        "command to finish"], err
