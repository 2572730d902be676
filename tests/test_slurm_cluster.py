"""The documented SLURM paths on a real (one-node) SLURM cluster.

``scripts/ci_slurm.sh`` starts the cluster in CI (Debian's slurm-wlm and munge); these tests
skip, saying so, where ``sinfo`` finds none. They run brainfm natively (the Apptainer path is
covered by tests/test_containers.py with stand-ins: Apptainer does not run here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from brainfm.testdata import make_dataset

ROOT = Path(__file__).resolve().parents[1]
ARRAY = ROOT / "scripts" / "slurm" / "brainfm_participant_array.sbatch"
SLURM_PLUGIN = ROOT / "brainfm" / "data" / "nipype_plugins" / "slurm.yml"
WAIT_S = 900


def _cluster_state() -> str:
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                          check=False)
    states = set(proc.stdout.split())
    if proc.returncode != 0 or not states & {"idle", "mix", "alloc"}:
        return f"no SLURM node up (sinfo: {proc.stdout.strip() or proc.stderr.strip()[:200]})"
    return ""


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_cluster_state()), reason=f"{_cluster_state()}; start a one-node "
                       "cluster with scripts/ci_slurm.sh (as root)"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("slurm") / "data", n_subjects=2, n_volumes=80,
                        seed=5)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["NIPYPE_NO_ET"] = "1"
    env.update(extra)
    return env


def _job_fields(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job`` as one dict per job (array tasks are separate jobs)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True, check=False).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]


def _wait(job_ids: list[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True,
                                text=True, check=False).stdout.strip()
        if not queued:
            return
        time.sleep(2)
    subprocess.run(["scancel", *job_ids], check=False)
    pytest.fail(f"SLURM jobs {job_ids} still queued after {WAIT_S} s")


def test_documented_array_and_dependent_group_job(dataset, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ARRAY), "--skip-bids-validation"], cwd=tmp_path, capture_output=True,
        text=True, check=False,
        env=_env(BIDS_DIR=str(dataset.bids_dir), OUT_DIR=str(out),
                 SCRATCH_DIR=str(tmp_path / "scratch")))
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"participant array (\d+) \(2 tasks\) and group job (\d+)", proc.stdout)
    assert found, proc.stdout
    array_id, group_id = found.groups()
    group = _job_fields(group_id)[0]
    assert group["Dependency"].startswith(f"afterok:{array_id}"), group  # held by the array
    _wait([array_id, group_id])
    tasks = _job_fields(array_id)
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["1", "2"]
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), tasks
    group = _job_fields(group_id)[0]
    assert group["JobState"] == "COMPLETED", group
    started = datetime.fromisoformat(group["StartTime"])
    assert started >= max(datetime.fromisoformat(t["EndTime"]) for t in tasks)
    for label in ("01", "02"):
        assert (out / f"sub-{label}.html").is_file()
        assert (tmp_path / f"brainfm-participant-{array_id}_{int(label)}.log").is_file()
    assert (out / "group_report.html").is_file() and (out / "group_predictions.tsv").is_file()
    assert not list(tmp_path.glob("brainfm-crash-*"))
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").iterdir())


def test_nipype_slurm_plugin_through_use_plugin(dataset, tmp_path):
    """The shipped slurm.yml, unchanged: every node becomes a SLURM job (LOGNAME unset, as in
    containers and CI, where nipype's plugin alone fails)."""
    env = _env()
    env.pop("LOGNAME", None)
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("brainfm")), str(dataset.bids_dir), str(out),
         "participant", "--participant-label", "01", "--skip-bids-validation",
         "--use-plugin", str(SLURM_PLUGIN), "-w", str(work)],
        cwd=tmp_path, capture_output=True, text=True, check=False, env=env, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (out / "sub-01.html").is_file()
    batch = work / "brainfm_wf" / "batch"
    submitted = sorted(p.name for p in batch.glob("slurm-*.out"))
    scripts = sorted(p.name for p in batch.glob("batchscript_*.sh"))
    assert len(submitted) == len(scripts) >= 3, (submitted, scripts)
    assert any("extract_roi_signals" in s for s in scripts)
