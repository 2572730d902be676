"""The ``brainfm`` command line: ``brainfm bids_dir output_dir participant|group``."""

from __future__ import annotations

import os

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network, ever

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from brainfm import __version__  # noqa: E402
from brainfm.errors import UsageArgumentParser, run_command  # noqa: E402
from brainfm.logs import add_verbose_option, setup_logging  # noqa: E402

PROG = "brainfm"
#: Denoising strategies offered on the command line (see brainfm.postproc.confounds).
STRATEGY_CHOICES = ("pcp", "24P", "36P", "acompcor", "none")


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def _strategy_argument(value: str) -> str:
    """A built-in strategy's name, or a strategy file made absolute now (nodes run elsewhere)."""
    from brainfm.postproc.confounds import is_strategy_file

    if is_strategy_file(value):
        path = os.path.abspath(value)
        if not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"strategy file {path} does not exist")
        return path
    if value not in STRATEGY_CHOICES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {', '.join(STRATEGY_CHOICES)}, or give a "
            "strategy .yml file)")
    return value


def _int_or_auto(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {value!r}"
                                         ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, following the BIDS Apps conventions."""
    parser = UsageArgumentParser(
        prog=PROG,
        description="brainfm: brain age and fluid intelligence from resting-state fMRI. "
                    "Participant level: fMRIPrep derivatives -> denoised ROI time series and "
                    "connectivity (BIDS derivatives). Group level: cohort tables and report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", help="the input BIDS dataset (read only)")
    parser.add_argument("output_dir", help="the output derivatives folder (outside bids_dir)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="processing stage")
    parser.add_argument("--version", action="version", version=f"brainfm {__version__}")
    add_verbose_option(parser)

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="participants to process (with or without 'sub-'); default all")
    sel.add_argument("--session-label", "--session_label", "--session-id", nargs="+",
                     metavar="LABEL",
                     help="sessions to process (with or without 'ses-'); default all")
    sel.add_argument("-t", "--task-id", "--task_id", nargs="+", default=["rest"], metavar="TASK",
                     help="task label(s) of the BOLD runs (default: rest)")
    sel.add_argument("--bids-filter-file", metavar="JSON",
                     help="PyBIDS queries by input type that narrow the selection, as in "
                          'fMRIPrep and XCP-D: e.g. {"bold": {"run": 2}} (keys: bold, mask, '
                          "confounds; bold also selects the raw runs brainfm preprocesses)")
    sel.add_argument("--fmriprep-dir", metavar="PATH",
                     help="fMRIPrep derivatives (default: bids_dir/derivatives/fmriprep, or "
                          "bids_dir itself when it is an fMRIPrep derivatives dataset)")
    sel.add_argument("--preproc", choices=["fmriprep", "minimal"],
                     help="how to preprocess raw BOLD when no fMRIPrep derivatives exist: run "
                          "fMRIPrep (default when fmriprep, fmriprep-docker or apptainer/"
                          "singularity with --fmriprep-image is available) or brainfm's minimal "
                          "preprocessing (affine only; docs/preprocessing.md)")
    sel.add_argument("--fmriprep-image", metavar="TAG|SIF",
                     help="fMRIPrep Docker tag (fmriprep-docker) or Apptainer/Singularity .sif")
    sel.add_argument("--fs-license-file", metavar="PATH",
                     help="FreeSurfer licence for fMRIPrep (default: $FS_LICENSE)")
    sel.add_argument("--fs-no-reconall", action="store_true",
                     help="pass --fs-no-reconall to fMRIPrep")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                     help="do not run bids-validator on bids_dir")

    par = parser.add_argument_group("parcellation")
    par.add_argument("--atlases", nargs="+", default=["CC200"], metavar="ATLAS",
                     help="bundled atlases: CC200, Schaefer2018-200, Schaefer2018-400, "
                          "Schaefer2018-1000")
    par.add_argument("--atlas-file", metavar="NIFTI",
                     help="a custom 3-D label atlas in the BOLD's standard space")
    par.add_argument("--atlas-labels", metavar="TSV",
                     help="index/name table of --atlas-file (BIDS dseg.tsv)")
    par.add_argument("--atlas-name", default="Custom",
                     help="alphanumeric BIDS atlas- label of --atlas-file")
    par.add_argument("--allow-atlas-space-mismatch", action="store_true",
                     help="parcellate BOLD in another template space than the atlas (e.g. "
                          "MNI152NLin2009cAsym with the MNI152NLin6Asym atlases) when "
                          "TEMPLATEFLOW_HOME has neither the atlas in that space nor the "
                          "transform to warp it (approximate; see the README)")
    par.add_argument("--min-coverage", type=float, default=0.5,
                     help="ROIs with less of their voxels in the brain mask are set to n/a")

    den = parser.add_argument_group("denoising")
    den.add_argument("--nuisance-regressors", "-p", type=_strategy_argument, default="pcp",
                     metavar="{" + ",".join(STRATEGY_CHOICES) + "} | FILE.yml",
                     help="confound strategy; 'pcp' emulates the ABIDE PCP filt_global "
                          "processing the default model was trained on; or a .yml file with the "
                          "keys of brainfm/data/strategies/*.yml (your own strategy)")
    den.add_argument("--fd-thresh", type=float, default=0.5,
                     help="censor volumes with framewise displacement above this (mm); 0 disables")
    den.add_argument("--dummy-scans", type=_int_or_auto, default=0, metavar="N|auto",
                     help="initial volumes to drop; 'auto': as many as fMRIPrep flagged "
                          "(its non_steady_state_outlier_XX confound columns)")
    den.add_argument("--lower-bpf", type=_float_or_none, default=None,
                     help="high-pass cutoff in Hz (default: the strategy's; 0 disables)")
    den.add_argument("--upper-bpf", type=_float_or_none, default=None,
                     help="low-pass cutoff in Hz (default: the strategy's; 0 disables)")
    den.add_argument("--min-time", type=float, default=120.0,
                     help="runs with less retained time (s) after censoring are excluded")

    mod = parser.add_argument_group("prediction")
    mod.add_argument("--model", default=None, metavar="DIR",
                     help="model folder from brainfm-train, 'default' for the packaged model, "
                          "or 'none' to skip predictions (default: the packaged model when the "
                          "run's atlases and denoising suit it; otherwise a warning and no "
                          "predictions)")
    mod.add_argument("--allow-model-mismatch", action="store_true",
                     help="predict even when the denoising strategy differs from the model's "
                          "(a warning instead of an error)")
    mod.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="where the model runs")

    grp = parser.add_argument_group("group level")
    grp.add_argument("--bias-correction", choices=("none", "linear", "residual"), default="none",
                     help="brain-age bias correction: 'linear' regresses predicted on true age "
                          "and inverts it (Cole 2018, Beheshti 2019); 'residual' regresses the gap "
                          "on age (Smith 2019); fitted on --reference-ages, else 5-fold "
                          "cross-validated within the cohort. Corrected metrics are inflated.")
    grp.add_argument("--reference-ages", metavar="TSV",
                     help="participants.tsv (participant_id, age) of a reference sample among "
                          "the participants in output_dir")
    grp.add_argument("--allow-mixed-models", action="store_true",
                     help="aggregate predictions made by different models (the 'model' column "
                          "of group_predictions.tsv); metrics are then computed per model "
                          "(default: refuse, exit 64)")

    perf = parser.add_argument_group("performance")
    perf.add_argument("-w", "--work-dir", metavar="PATH",
                      help="nipype working directory (reused by reruns); default "
                           "output_dir/../work, or ./work when that is inside the dataset")
    rec = parser.add_argument_group("run records (output_dir/logs/ and sub-<label>/log/)")
    rec.add_argument("--config-file", metavar="TOML",
                     help="options from the brainfm.toml a run recorded (options given here "
                          "win)")
    rec.add_argument("--boilerplate-only", action="store_true",
                     help="write the methods boilerplate (logs/CITATION.md) and stop")
    perf.add_argument("--stop-on-first-crash", action="store_true",
                      help="stop every participant at the first failure (default: the other "
                           "participants finish, and the failed ones are named at the end)")
    perf.add_argument("--nprocs", "--n-cpus", "--nthreads", type=int, default=0,
                      help="parallel processes (0: every CPU this job may use, e.g. its "
                           "SLURM or container allocation)")
    perf.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                      help="wait this long for a participant that another brainfm job is "
                           "processing in the same output or work folder (default: stop at "
                           "once with a message)")
    perf.add_argument("--omp-nthreads", type=int, default=1,
                      help="threads per process for numerical libraries")
    perf.add_argument("--use-plugin", metavar="YAML",
                      help="nipype execution plugin settings (keys 'plugin' and 'plugin_args'), "
                           "e.g. to submit nodes to SLURM or SGE; see docs/hpc.md")
    perf.add_argument("--poll-sleep", type=float, default=0.2, help=argparse.SUPPRESS)
    return parser


def _limit_threads(n_threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n_threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Run brainfm; return the process exit code (also used as ``sys.exit`` status)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if known.config_file:
        code = run_command(PROG, lambda: _defaults_from_record(parser, known.config_file))
        if code:
            return code
    args = parser.parse_args(argv)
    args.command = argv
    setup_logging(args.verbose)
    return run_command(PROG, lambda: _run(args))


def _defaults_from_record(parser: argparse.ArgumentParser, path: str) -> None:
    """``--config-file``: the recorded options become the parser's defaults."""
    from brainfm.bidsapp.records import NOT_RECORDED, read_config_file

    known = {a.dest for a in parser._actions} - {"help", "version", *NOT_RECORDED}
    parser.set_defaults(**read_config_file(path, known))


def _run(args: argparse.Namespace) -> None:
    from brainfm.bidsapp.config import from_args
    from brainfm.fileio import protected_inputs

    config = from_args(args)
    _limit_threads(config.omp_nthreads)
    with protected_inputs([config.bids_dir, config.fmriprep_dir], allowed=[config.output_dir]):
        if config.analysis_level == "group":
            from brainfm.bidsapp.group import run_group_level

            run_group_level(config)
        else:
            from brainfm.bidsapp.participant import run_participant_level

            run_participant_level(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
