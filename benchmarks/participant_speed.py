"""Participant-level wall time and peak memory against a bare nibabel load of the same BOLD.

Makes a realistic-size fMRIPrep-style run (the full 2 mm MNI152NLin6Asym grid, 91 x 109 x 91,
240 volumes by default), then measures, each as a whole command in a fresh process (wall time
from process start to exit, peak resident memory of the process and its children), and all in
the same run of this script:

- ``nibabel load``: ``python -c`` that imports nibabel and calls
  ``nibabel.load(bold).get_fdata(dtype=float32)``: the floor, reading the data once;
- ``streamed extraction``: :func:`brainfm.postproc.parcellate.extract_roi_signals` alone, for
  the same atlases;
- ``library imports``: ``python -c`` that only imports the libraries every participant run
  loads (PyTorch for the model, nilearn and matplotlib for the report, pybids, nipype, pandas):
  with the streamed extraction, the floor of any run that predicts and reports in one process;
- ``brainfm participant``: the whole command (``brainfm bids out participant``: indexing,
  extraction, denoising, connectivity, predictions, derivatives, HTML report), fresh work dir;
- ``nilearn``: ``NiftiLabelsMasker`` + ``load_confounds_strategy`` with the same 36P strategy,
  one masker per atlas, as a nilearn user would write it.

With ``--volumes 120 240 480`` every step runs at each length, to show how time and memory
grow with the run (time should grow linearly; brainfm's memory not at all). Ratios are against
the nibabel load of the same file in the same run.

Usage::

    python benchmarks/participant_speed.py [--volumes 240] [--atlases CC200 Schaefer2018-400]
        [--nprocs 1] [--repeats 2] [--keep DIR] [--skip-nilearn]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Runs one command, prints its wall time and the peak RSS of it and its descendants (JSON).
MEASURE_SNIPPET = """
import json, resource, subprocess, sys, time
cmd = json.loads(sys.argv[1])
t = time.perf_counter()
proc = subprocess.run(cmd, capture_output=True, text=True)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": wall, "peak_rss_mb": peak, "exit_code": proc.returncode,
                  "stderr": proc.stderr[-3000:]}))
"""

LOAD_SNIPPET = """
import sys
import nibabel as nb, numpy as np
data = nb.load(sys.argv[1]).get_fdata(dtype=np.float32)
"""

EXTRACT_SNIPPET = """
import sys
from brainfm.atlases import resolve_atlases
from brainfm.postproc.parcellate import extract_roi_signals
extract_roi_signals(sys.argv[1], resolve_atlases(sys.argv[3:]), sys.argv[2])
"""

#: The libraries every participant run loads (model, report, indexing, workflow).
IMPORTS_SNIPPET = ("import torch, nilearn.plotting, bids, nipype.pipeline.engine, pandas, "
                   "matplotlib.figure")

NILEARN_SNIPPET = """
import sys
from nilearn.interfaces.fmriprep import load_confounds_strategy
from nilearn.maskers import NiftiLabelsMasker
from brainfm.atlases import get_atlas
bold, mask = sys.argv[1], sys.argv[2]
confounds, sample_mask = load_confounds_strategy(
    bold, denoise_strategy="simple", motion="full", wm_csf="full", global_signal="full")
for name in sys.argv[3:]:
    atlas = get_atlas(name)
    masker = NiftiLabelsMasker(labels_img=str(atlas.image), mask_img=mask, standardize=False,
                               strategy="mean")
    masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
"""


def make_full_grid_dataset(root: Path, n_volumes: int) -> tuple[Path, Path, Path]:
    """Paint a dataset on the 2 mm grid and place it on the full MNI152NLin6Asym 2 mm grid."""
    import nibabel as nb
    import numpy as np

    from brainfm.atlases import brain_mask_file
    from brainfm.testdata import make_dataset

    dataset = make_dataset(root / "data", n_subjects=1, n_volumes=n_volumes, voxel_size=2.0,
                           seed=0)
    template = nb.load(brain_mask_file())
    run = dataset.runs[0]
    for path in (run.preproc_bold, run.brain_mask):
        img = nb.load(path)
        shift = np.linalg.solve(template.affine, img.affine)  # voxel offset of the crop
        offset = np.rint(shift[:3, 3]).astype(int)
        assert np.allclose(shift[:3, :3], np.eye(3)), "grids must share the 2 mm voxel size"
        data = np.asarray(img.dataobj, dtype=np.float32 if img.ndim == 4 else np.uint8)
        full = np.zeros(template.shape + data.shape[3:], dtype=data.dtype)
        sl = tuple(slice(o, o + n) for o, n in zip(offset, data.shape[:3], strict=True))
        full[sl] = data
        header = img.header.copy()
        header.set_data_shape(full.shape)
        out = nb.Nifti1Image(full, template.affine, header)
        out.set_sform(template.affine, 4)
        out.set_qform(template.affine, 4)
        out.to_filename(path)
    return dataset.bids_dir, run.preproc_bold, run.brain_mask


def measure(cmd: list[str]) -> dict:
    """Wall time and peak RSS of ``cmd`` run to completion in a fresh process."""
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    proc = subprocess.run([sys.executable, "-c", MEASURE_SNIPPET, json.dumps(cmd)],
                          capture_output=True, text=True, check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark step failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result["exit_code"] != 0:
        raise RuntimeError(f"{cmd[:3]} exited with {result['exit_code']}:\n{result['stderr']}")
    return result


def brainfm_command() -> list[str]:
    """The installed ``brainfm`` entry point (beside this interpreter), or ``python -m``."""
    script = Path(sys.executable).with_name("brainfm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "brainfm.bidsapp.cli"]


def measure_length(root: Path, n_volumes: int, args: argparse.Namespace) -> dict[str, dict]:
    """Every step on one run of ``n_volumes`` volumes (best wall of the repeats)."""
    folder = root / f"vols{n_volumes}"
    t0 = time.perf_counter()
    bids_dir, bold, mask = make_full_grid_dataset(folder, n_volumes)
    print(f"made {bold.name}: {n_volumes} volumes, {bold.stat().st_size / 1e6:.0f} MB on disk, "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    steps = {
        "nibabel load": [sys.executable, "-c", LOAD_SNIPPET, str(bold)],
        "streamed extraction": [sys.executable, "-c", EXTRACT_SNIPPET, str(bold), str(mask),
                                *args.atlases],
        "library imports": [sys.executable, "-c", IMPORTS_SNIPPET],
    }
    if not args.skip_nilearn:
        steps["nilearn masker + load_confounds"] = [
            sys.executable, "-c", NILEARN_SNIPPET, str(bold), str(mask), *args.atlases]
    results: dict[str, list[dict]] = {name: [] for name in [*steps, "brainfm participant"]}
    for repeat in range(args.repeats):
        for name, cmd in steps.items():
            results[name].append(measure(cmd))
        out, work = folder / f"out{repeat}", folder / f"work{repeat}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        results["brainfm participant"].append(measure(
            [*brainfm_command(), str(bids_dir), str(out), "participant",
             "--skip-bids-validation", "--atlases", *args.atlases, "--nprocs", str(args.nprocs),
             "-w", str(work)]))
    return {name: {"seconds": min(r["seconds"] for r in runs),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
            for name, runs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[240],
                        help="run lengths to measure (e.g. 120 240 480)")
    parser.add_argument("--atlases", nargs="+", default=["CC200", "Schaefer2018-400"])
    parser.add_argument("--nprocs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-nilearn", action="store_true",
                        help="leave out the nilearn comparison")
    parser.add_argument("--keep", type=Path, help="keep the data and outputs in this folder")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="brainfm-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    load_avg = os.getloadavg()[0]
    by_length = {n: measure_length(root, n, args) for n in args.volumes}
    print()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {load_avg:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"BOLD: 91x109x91 voxels (2 mm); atlases {' '.join(args.atlases)}; nprocs "
          f"{args.nprocs}; best wall of {args.repeats}; every step a whole command in a fresh "
          "process")
    for n, steps in by_length.items():
        base = steps["nibabel load"]
        array_mb = 91 * 109 * 91 * n * 4 / 2**20
        print()
        print(f"{n} volumes (float32 array {array_mb:.0f} MB)")
        print(f"{'step':<34}{'wall s':>9}{'ratio':>8}{'peak RSS MB':>14}{'/ array':>9}")
        for name, r in steps.items():
            print(f"{name:<34}{r['seconds']:>9.2f}{r['seconds'] / base['seconds']:>8.2f}"
                  f"{r['peak_rss_mb']:>14.0f}{r['peak_rss_mb'] / array_mb:>9.2f}")
    if len(by_length) > 1:
        first, last = min(by_length), max(by_length)
        print()
        print(f"growth from {first} to {last} volumes ({last / first:.1f}x the data)")
        for name in by_length[first]:
            a, b = by_length[first][name], by_length[last][name]
            print(f"{name:<34} time x{b['seconds'] / a['seconds']:.2f}, "
                  f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
