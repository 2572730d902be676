#!/usr/bin/env python
"""pybids indexing of an fMRIPrep dataset: the whole dataset against what a participant job reads.

Builds an fMRIPrep-like tree of empty files (per participant: the ``func`` files brainfm reads,
segmentations, ``anat`` transforms, ``figures`` and ``log``, as fMRIPrep 25 writes them; counts
below) and times ``BIDSLayout`` on it as brainfm's input collection did before (everything) and
does now (:func:`brainfm.derivatives.index_ignore`: one participant, no ``anat``/``figures``/
``log``), in the same run.

Usage::

    python benchmarks/indexing.py [--participants 100 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bids import BIDSLayout, BIDSLayoutIndexer

from brainfm.bidsapp.inputs import _UNUSED_DATATYPES
from brainfm.derivatives import index_ignore


def make_tree(root: Path, n: int) -> int:
    """An fMRIPrep-like derivatives tree of ``n`` participants; returns the number of files."""
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "bench", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep", "Version": "25.2.0"}]}))
    count = 1
    for i in range(n):
        s = f"sub-{i:04d}"
        run = f"{s}_task-rest"
        files = {
            "func": [f"{run}_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz",
                     f"{run}_space-MNI152NLin6Asym_res-2_desc-preproc_bold.json",
                     f"{run}_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz",
                     f"{run}_desc-confounds_timeseries.tsv",
                     f"{run}_desc-confounds_timeseries.json",
                     *(f"{run}_space-T1w_desc-aseg{k}_dseg.nii.gz" for k in range(5))],
            "anat": [f"{s}_desc-preproc_T1w.nii.gz", f"{s}_desc-brain_mask.nii.gz",
                     *(f"{s}_from-T1w_to-MNI{k}_mode-image_xfm.h5" for k in range(10))],
            "figures": [f"{s}_desc-fig{k}_bold.svg" for k in range(20)],
            "log": [f"run{k}.toml" for k in range(3)],
        }
        for folder, names in files.items():
            (root / s / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                path = root / s / folder / name
                path.write_text('{"RepetitionTime": 2.0}' if name.endswith(".json") else "")
                count += 1
    return count


def index_seconds(root: Path, ignore: list | None, repeats: int) -> tuple[float, int]:
    """Best wall time of indexing ``root`` (and the number of files indexed)."""
    best, n_files = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        kwargs = {} if ignore is None else {
            "indexer": BIDSLayoutIndexer(validate=False, ignore=ignore)}
        layout = BIDSLayout(str(root), validate=False, is_derivative=True,
                            config=["bids", "derivatives"], **kwargs)
        best = min(best, time.perf_counter() - start)
        n_files = len(layout.get())
    return best, n_files


def main(argv: list[str] | None = None) -> int:
    """Print the indexing time of the whole tree and of one participant's needs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--participants", type=int, nargs="+", default=[100, 300])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    print("participants  files  whole dataset (s)  one participant (s)  ratio")
    for n in args.participants:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            n_files = make_tree(root, n)
            whole, _ = index_seconds(root, None, args.repeats)
            one, indexed = index_seconds(root, index_ignore(["0007"], _UNUSED_DATATYPES),
                                         args.repeats)
            print(f"{n:12d} {n_files:6d} {whole:18.2f} {one:20.3f} {whole / one:6.0f}x"
                  f"  ({indexed} files indexed for one participant)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
