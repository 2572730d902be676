"""Participant-level wall time and peak memory against a bare nibabel load of the same BOLD.

Makes a realistic-size fMRIPrep-style run (the full 2 mm MNI152NLin6Asym grid, 91 x 109 x 91,
240 volumes by default), then measures, each in a fresh Python process and in the same run of
this script:

- ``load``: ``nibabel.load(bold).get_fdata(dtype=float32)`` (the floor: reading the data once);
- ``brainfm``: ``brainfm bids out participant`` (extraction for the chosen atlases, denoising,
  connectivity, writing), with a fresh work directory.

Usage::

    python benchmarks/participant_speed.py [--volumes 240] [--atlases CC200 Schaefer2018-400]
        [--nprocs 1] [--repeats 2] [--keep DIR]
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

LOAD_SNIPPET = """
import json, resource, sys, time
import nibabel as nb, numpy as np
t = time.perf_counter()
data = nb.load(sys.argv[1]).get_fdata(dtype=np.float32)
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_rss_mb":
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "shape": list(data.shape)}))
"""

BRAINFM_SNIPPET = """
import json, resource, sys, time
from brainfm.bidsapp.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
elapsed = time.perf_counter() - t
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak, "exit_code": rc}))
"""


def make_full_grid_dataset(root: Path, n_volumes: int) -> tuple[Path, Path]:
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
    return dataset.bids_dir, run.preproc_bold


def run_json(args: list[str]) -> dict:
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    proc = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True,
                          check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark step failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=240)
    parser.add_argument("--atlases", nargs="+", default=["CC200", "Schaefer2018-400"])
    parser.add_argument("--nprocs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the data and outputs in this folder")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="brainfm-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bids_dir, bold = make_full_grid_dataset(root, args.volumes)
    print(f"made {bold.name} ({bold.stat().st_size / 1e6:.0f} MB on disk) in "
          f"{time.perf_counter() - t0:.1f} s")

    loads, runs = [], []
    for repeat in range(args.repeats):
        loads.append(run_json([LOAD_SNIPPET, str(bold)]))
        out, work = root / f"out{repeat}", root / f"work{repeat}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        result = run_json([BRAINFM_SNIPPET, str(bids_dir), str(out), "participant",
                           "--skip-bids-validation", "--atlases", *args.atlases,
                           "--nprocs", str(args.nprocs), "-w", str(work)])
        if result["exit_code"] != 0:
            raise RuntimeError(f"brainfm exited with {result['exit_code']}")
        runs.append(result)

    load_s = min(r["seconds"] for r in loads)
    run_s = min(r["seconds"] for r in runs)
    shape = loads[0]["shape"]
    print()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"BOLD: {shape[0]}x{shape[1]}x{shape[2]} voxels x {shape[3]} volumes (2 mm); atlases "
          f"{' '.join(args.atlases)}; nprocs {args.nprocs}; best of {args.repeats}")
    print(f"{'step':<34}{'wall s':>10}{'peak RSS MB':>14}{'ratio':>8}")
    print(f"{'nibabel load (float32)':<34}{load_s:>10.2f}"
          f"{max(r['peak_rss_mb'] for r in loads):>14.0f}{1.0:>8.2f}")
    print(f"{'brainfm participant (1 run)':<34}{run_s:>10.2f}"
          f"{max(r['peak_rss_mb'] for r in runs):>14.0f}{run_s / load_s:>8.2f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
