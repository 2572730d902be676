"""``brainfm-import``: convert public datasets into brainfm ROI time-series derivatives."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from brainfm import __version__
from brainfm.errors import UsageArgumentParser, run_command
from brainfm.importers.camcan import import_camcan
from brainfm.importers.pcp import DEFAULT_PIPELINE, PIPELINES, import_pcp, parse_tr_overrides
from brainfm.logs import add_verbose_option, setup_logging

PROG = "brainfm-import"


def build_parser() -> argparse.ArgumentParser:
    """Build the ``brainfm-import`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        Parser with one subcommand per importer.
    """
    parser = UsageArgumentParser(
        prog=PROG, description="Convert public datasets into brainfm ROI time-series derivatives."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_verbose_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=UsageArgumentParser)
    pcp = sub.add_parser(
        "pcp",
        help="ABIDE I Preprocessed Connectomes Project ROI time series",
        description="Import ABIDE PCP rois_<atlas>/ .1D files (folder or .tar.xz archive, "
        "streamed) and the phenotype CSV into brainfm derivatives.",
    )
    pcp.add_argument("src", type=Path, help="folder with rois_<atlas>/ or rois_<atlas>.tar.xz, "
                     "or the folder/archive itself")
    pcp.add_argument("out", type=Path, help="output derivatives folder (new or empty)")
    pcp.add_argument("--atlas", default="cc200", help="PCP atlas name (default: cc200)")
    pcp.add_argument("--tr-override", action="append", metavar="SITE=TR", default=[],
                     help="repetition time in seconds for a site (repeatable)")
    pcp.add_argument("--phenotype", type=Path, default=None,
                     help="phenotype CSV (default: Phenotypic_V1_0b_preprocessed1.csv next to "
                     "SRC)")
    pcp.add_argument("--pipeline", choices=list(PIPELINES), default=DEFAULT_PIPELINE,
                     help="the PCP pipeline the series come from, recorded as their "
                     "DenoisingStrategy (default: filt_global)")
    pcp.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    camcan = sub.add_parser(
        "camcan",
        help="Cam-CAN targets (age, sex, Cattell fluid intelligence) into participants.tsv",
        description="Write participants.tsv (participant_id, age, sex, fluid_intelligence = "
        "Cattell Culture Fair total, site) from the Cam-CAN release's cc700-scored folder into "
        "a brainfm derivatives folder, for brainfm-train.",
    )
    camcan.add_argument("scored", type=Path, help="the release's cc700-scored folder")
    camcan.add_argument("out", type=Path, help="brainfm derivatives folder (brainfm "
                        "participant's output), where participants.tsv is written")
    camcan.add_argument("--participants", type=Path, default=None,
                        help="participant data: participant_data.csv, or the BIDS release's "
                        "participants.tsv (default: SCORED/participant_data.csv)")
    camcan.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT/participants.tsv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brainfm-import``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0 on success, else the :class:`~brainfm.errors.BrainfmError` exit code
        (64 usage, 66 missing input).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_command(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.command == "camcan":
        done = import_camcan(args.scored, args.out, participants=args.participants,
                             overwrite=args.overwrite)
        logging.getLogger(PROG).info(
            "wrote %s: %d participants, %d with a Cattell total", done.path,
            done.n_participants, done.n_with_cattell)
        return
    summary = import_pcp(
        args.src, args.out, atlas=args.atlas,
        tr_override=parse_tr_overrides(args.tr_override),
        phenotype=args.phenotype, overwrite=args.overwrite, pipeline=args.pipeline,
    )
    logging.getLogger(PROG).info(
        "wrote %d subjects (%d sites, %d all-zero ROI columns as n/a, %d skipped) to %s in %.1f s",
        summary.n_subjects, len(summary.sites), summary.masked_rois, len(summary.skipped),
        summary.out_dir, summary.seconds,
    )


if __name__ == "__main__":
    sys.exit(main())
