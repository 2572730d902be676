"""The group level: cohort table, brain-age gap, bias correction, metrics and HTML report.

Reads only the output dataset (and ``bids_dir/participants.tsv`` when present) and writes, at
the root of the output dataset:

``group_predictions.tsv`` (+ ``.json`` column descriptions)
    One row per participant and session. Predictions are ``<target>_pred`` and
    ``<target>_pred_std`` (e.g. ``age_pred``, ``fluid_intelligence_pred``); the known values
    from ``participants.tsv`` keep the plain name (``age``, ``fluid_intelligence``);
    ``age_gap`` = ``age_pred - age``; with a bias correction also ``age_pred_corrected`` and
    ``age_gap_corrected``; QC: ``n_runs`` (runs used), ``n_runs_excluded``,
    ``retained_seconds``, ``mean_fd``; and ``sex``/``site`` when ``participants.tsv`` has them.
    The ``.json`` also lists under ``left_out`` the participants and sessions without a
    prediction (``participant_id``, ``session_id``, ``reason``), named in one warning line too.
``group_metrics.json``
    Per target with known values: ``n``, ``mae``, ``rmse``, ``mean_error``, ``pearson_r``,
    ``pearson_p``, ``r2`` over the sessions; the brain-age gap summary; the bias-corrected
    metrics when a correction is used (inflated by construction; see the warning in the file).
``group_biascorrection.json``
    The correction's coefficients (only with ``--bias-correction linear|residual``).
``group_report.html``
    The self-contained cohort report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brainfm.bidsapp.config import Config
from brainfm.derivatives import init_output_dataset
from brainfm.fileio import write_json_atomic, write_text_atomic, write_tsv_atomic
from brainfm.group.result import GroupResult, compute_group
from brainfm.group.table import column_descriptions

LOGGER = logging.getLogger(__name__)

#: Output file names (at the root of the output dataset).
PREDICTIONS_FILE = "group_predictions.tsv"
METRICS_FILE = "group_metrics.json"
BIAS_FILE = "group_biascorrection.json"
REPORT_FILE = "group_report.html"


def _update_shared_files(output_dir: Path, bids_dir: Path | None) -> None:
    """Refresh ``.bidsignore`` (the ``group_*`` pattern) keeping the recorded sources."""
    init_output_dataset(output_dir, {"raw": bids_dir} if bids_dir is not None else {})


def write_group_outputs(result: GroupResult, output_dir: str | Path,
                        bids_dir: str | Path | None = None) -> dict[str, Path]:
    """Render the report, then write every group output atomically.

    Parameters
    ----------
    result : GroupResult
        From :func:`compute_group`.
    output_dir : path
        The output dataset.
    bids_dir : path, optional
        The input dataset (named in the report).

    Returns
    -------
    dict
        ``predictions``, ``predictions_json``, ``metrics``, ``report`` and (with a correction)
        ``bias_correction``: the paths written.
    """
    from brainfm.reports.group_report import render_group_report

    output_dir = Path(output_dir)
    html = render_group_report(result, output_dir, bids_dir)
    _update_shared_files(output_dir, Path(bids_dir) if bids_dir else None)
    written = {
        "predictions": write_tsv_atomic(output_dir / PREDICTIONS_FILE, result.table),
        "predictions_json": write_json_atomic(
            output_dir / PREDICTIONS_FILE.replace(".tsv", ".json"),
            {**column_descriptions(result.table, result.targets, result.truth_columns),
             "left_out": result.left_out}),
        "metrics": write_json_atomic(output_dir / METRICS_FILE, result.metrics),
    }
    bias_path = output_dir / BIAS_FILE
    if result.correction is not None:
        written["bias_correction"] = write_json_atomic(bias_path, result.correction)
    elif bias_path.exists():
        bias_path.unlink()  # a previous run's coefficients no longer describe the table
    written["report"] = write_text_atomic(output_dir / REPORT_FILE, html)
    return written


def run_group_level(config: Config) -> dict[str, Path]:
    """Run the group level for a :class:`~brainfm.bidsapp.config.Config`.

    Reads ``config.output_dir`` (and ``config.bids_dir/participants.tsv``), and the optional
    fields ``bias_correction`` (``'none'``, ``'linear'``, ``'residual'``; default ``'none'``),
    ``reference_ages`` (path or ``None``) and ``allow_mixed_models`` (default ``False``).

    Parameters
    ----------
    config : brainfm.bidsapp.config.Config
        The run configuration.

    Returns
    -------
    dict
        The files written (see :func:`write_group_outputs`).

    Raises
    ------
    InputError
        No participant-level predictions, malformed ``participants.tsv``, missing
        ``--reference-ages`` (exit 66).
    UsageError
        Inconsistent options, predictions of several models without
        ``--allow-mixed-models`` (exit 64).
    """
    output_dir = Path(config.output_dir)
    bids_dir = Path(config.bids_dir) if getattr(config, "bids_dir", None) else None
    method = getattr(config, "bias_correction", None) or "none"
    reference = getattr(config, "reference_ages", None)
    LOGGER.info("brainfm group level: %s (bias correction: %s%s)", output_dir, method,
                f", reference {reference}" if reference else "")
    result = compute_group(output_dir, bids_dir, method, reference,
                           allow_mixed_models=getattr(config, "allow_mixed_models", False))
    written = write_group_outputs(result, output_dir, bids_dir)
    LOGGER.info("group level: %d session(s) of %d participant(s); wrote %s",
                result.metrics["n_sessions"], result.metrics["n_participants"],
                ", ".join(p.name for p in written.values()))
    return written
