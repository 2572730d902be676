"""Command-line face: version, help, usage errors and their exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brainfm import __version__
from brainfm.bidsapp.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"brainfm {__version__}"


def test_help_lists_bids_app_options():
    out = subprocess.run([sys.executable, "-m", "brainfm.bidsapp.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--participant-label", "--session-label", "--task-id", "--fmriprep-dir",
                   "--atlases", "--atlas-file", "--atlas-labels", "--nuisance-regressors",
                   "--fd-thresh", "--dummy-scans", "--lower-bpf", "--upper-bpf",
                   "--min-coverage", "--work-dir", "--nprocs", "--omp-nthreads",
                   "--skip-bids-validation", "--version"):
        assert option in out


def test_missing_bids_dir_is_66(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("inside", ["", "sub-01", "derivatives"])  # derivatives/<name> is fine
def test_output_inside_input_is_64(tmp_path, capsys, inside):
    bids = tmp_path / "bids"
    bids.mkdir()
    out = bids / inside if inside else bids
    assert main([str(bids), str(out), "participant", "--skip-bids-validation"]) == 64
    assert "never writes into the input" in capsys.readouterr().err
    assert not (bids / "derivatives").exists()


def test_group_level_without_participant_outputs_is_66(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "group"]) == 66
    assert "run the participant level first" in capsys.readouterr().err


def test_bad_choice_is_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), str(tmp_path / "o"), "participant", "--nuisance-regressors", "x"])
    assert exc.value.code == 64


def test_use_plugin_file_is_checked(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    bad = tmp_path / "plugin.yml"
    bad.write_text("plugin_args: {n_procs: 2}\n")
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "group",
                 "--use-plugin", str(bad)]) == 64
    assert "'plugin' key" in capsys.readouterr().err


def test_relative_model_folder_is_made_absolute_at_parse_time(tmp_path, monkeypatch):
    """The predict node runs in its own work folder: a relative --model must not depend on it."""
    from brainfm.bidsapp.cli import build_parser
    from brainfm.bidsapp.config import from_args

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (bids / "derivatives" / "fmriprep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant",
                                      "--model", "models/mine"])
    assert from_args(args).model == str(tmp_path / "models" / "mine")
    for keyword in ("default", "none"):
        args = build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant",
                                          "--model", keyword])
        assert from_args(args).model == keyword


def test_nprocs_zero_uses_the_cpus_this_process_may_run_on(monkeypatch):
    from brainfm.bidsapp import config

    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(config.os, "cpu_count", lambda: 64)
    assert config.available_cpus() == 3
