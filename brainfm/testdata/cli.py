"""``brainfm-make-testdata``: write the synthetic test dataset from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from brainfm import __version__
from brainfm.errors import BrainfmError, UsageArgumentParser
from brainfm.logs import add_verbose_option, setup_logging

ENV_ABIDE_DIR = "BRAINFM_ABIDE_DIR"


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser of ``brainfm-make-testdata``.
    """
    p = UsageArgumentParser(
        prog="brainfm-make-testdata",
        description=(
            "Write a small synthetic resting-state dataset: a raw BIDS skeleton, "
            "fMRIPrep-style derivatives (preprocessed BOLD in MNI152NLin6Asym, brain mask, "
            "confounds) and the ground truth (painted CC200 signals, motion artefact) in "
            "OUT_DIR/bids, OUT_DIR/bids/derivatives/fmriprep and OUT_DIR/truth."
        ),
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder")
    p.add_argument("--subjects", type=int, default=2, help="number of subjects (default 2)")
    p.add_argument("--sessions", type=int, default=1, help="sessions per subject (default 1)")
    p.add_argument("--runs", type=int, default=1, help="runs per session (default 1)")
    p.add_argument("--volumes", type=int, default=120, help="volumes per run (default 120)")
    p.add_argument("--tr", type=float, default=2.0, help="repetition time in s (default 2.0)")
    p.add_argument(
        "--voxel-size", type=float, default=3.0, help="isotropic voxel size in mm (default 3)"
    )
    p.add_argument(
        "--no-motion",
        action="store_true",
        help="very still subjects (no spikes) and no motion artefact in the BOLD",
    )
    p.add_argument(
        "--no-artefact",
        action="store_true",
        help=(
            "keep the moving subjects' motion parameters but do not paint the artefact into "
            "the BOLD (same seed: differs from the default only by the artefact)"
        ),
    )
    p.add_argument(
        "--abide-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help=(
            "folder with the ABIDE PCP CC200 data (rois_cc200.tar.xz and "
            "Phenotypic_V1_0b_preprocessed1.csv): paint real ROI series and phenotypes. "
            f"Default: ${ENV_ABIDE_DIR} if set, else synthetic signals"
        ),
    )
    p.add_argument(
        "--abide-file-id",
        action="append",
        default=None,
        metavar="FILE_ID",
        help="ABIDE FILE_ID to use (repeat once per subject; needs --abide-dir)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT_DIR/bids and OUT_DIR/truth"
    )
    add_verbose_option(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brainfm-make-testdata``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0 ok, 64 bad usage or existing output, 66 missing/malformed ABIDE input.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    abide_dir = args.abide_dir
    if abide_dir is None and os.environ.get(ENV_ABIDE_DIR):
        abide_dir = Path(os.environ[ENV_ABIDE_DIR])
    from brainfm.testdata.maker import make_dataset

    try:
        truth = make_dataset(
            args.out_dir,
            n_subjects=args.subjects,
            n_sessions=args.sessions,
            n_runs=args.runs,
            n_volumes=args.volumes,
            tr=args.tr,
            voxel_size=args.voxel_size,
            motion=not args.no_motion,
            artefact=False if args.no_artefact else None,
            abide_dir=abide_dir,
            seed=args.seed,
            abide_file_ids=args.abide_file_id,
            overwrite=args.overwrite,
        )
    except BrainfmError as exc:
        print(f"brainfm-make-testdata: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"raw BIDS:        {truth.bids_dir}")
    print(f"fMRIPrep-style:  {truth.fmriprep_dir}")
    print(f"ground truth:    {truth.truth_dir}")
    for run in truth.runs:
        print(f"  {run.preproc_bold}")
        print(f"  {run.confounds}")
        print(f"  {run.truth_file}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
