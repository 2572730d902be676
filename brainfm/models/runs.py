"""``brainfm-train`` runs: discover and load a cohort, train or predict, write the results."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from brainfm import __version__
from brainfm.derivatives import reliability_columns
from brainfm.errors import InputError, UsageError
from brainfm.fileio import write_tsv_atomic
from brainfm.models.checkpoint import load_checkpoint, resolve_model_dir, save_checkpoint
from brainfm.models.cohort_checks import training_targets
from brainfm.models.ensemble import interval_columns
from brainfm.models.loop import window_length
from brainfm.models.model import BrainFM, BrainFMConfig
from brainfm.models.options import TrainOptions
from brainfm.models.predict import predict_subject
from brainfm.models.runtime import setup
from brainfm.models.sessions import SessionData, load_sessions
from brainfm.models.targets import TargetSpec, load_participants, resolve_column
from brainfm.models.timeseries import DEFAULT_SAMPLING_RATE_HZ, find_timeseries
from brainfm.models.train import finetune, prediction_card, pretrain
from brainfm.models.windows import default_stride

LOGGER = logging.getLogger(__name__)


def load_cohort(
    deriv_dirs: Sequence[Path | str],
    opts: TrainOptions,
    expected_roi_names: Sequence[str] | None = None,
) -> list[SessionData]:
    """Find and load every session of ``opts.atlas`` under the derivatives folders.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    opts : TrainOptions
        ``atlas`` and ``sampling_rate_hz``.
    expected_roi_names : sequence of str, optional
        Required ROI names (from a model card).

    Returns
    -------
    list of SessionData
        The sessions.
    """
    t0 = time.perf_counter()
    files = find_timeseries(deriv_dirs, opts.atlas)
    # the label as spelled in the file names (matching is case-insensitive): the model card's
    opts.atlas = files[0].atlas
    sessions = load_sessions(files, opts.sampling_rate_hz, expected_roi_names)
    LOGGER.info("loaded %d sessions of %d participants (%d runs, atlas %s) in %.1f s",
                len(sessions), len({s.participant_id for s in sessions}), len(files), opts.atlas,
                time.perf_counter() - t0)
    return sessions


def _denoising(sessions: Sequence[SessionData]) -> str | None:
    strategies = {d for s in sessions for d in s.denoising}
    return strategies.pop() if len(strategies) == 1 else None


def base_card(kind: str, sessions: Sequence[SessionData], deriv_dirs: Sequence[Path | str],
               opts: TrainOptions, cfg: BrainFMConfig) -> dict[str, Any]:
    """The common part of every model card: atlas, ROIs, sampling, window, training options."""
    card: dict[str, Any] = {
        "kind": kind,
        "atlas": opts.atlas,
        "roi_names": list(sessions[0].roi_names),
        "n_rois": sessions[0].n_rois,
        "sampling_rate_hz": opts.sampling_rate_hz,
        "repetition_time_handling": (
            f"each run resampled to {opts.sampling_rate_hz} Hz (polyphase), ROIs standardised "
            "per run; connectivity at the native rate"
        ),
        "window": window_length(cfg),
        "window_seconds": window_length(cfg) / opts.sampling_rate_hz,
        "prediction": {"stride": default_stride(window_length(cfg), opts.stride)},
        "training": {
            "cohort": [str(Path(d)) for d in deriv_dirs],
            "n_sessions": len(sessions),
            "options": opts.to_dict(),
            "brainfm_version": __version__,
        },
    }
    strategy = _denoising(sessions)
    if strategy:
        card["denoising_strategy"] = strategy
    return card


def run_pretrain(deriv_dirs: Sequence[Path | str], out_dir: Path | str, opts: TrainOptions
                 ) -> Path | None:
    """``brainfm-train pretrain``: LMAE pretraining on all sessions, then a checkpoint.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    out_dir : path
        Checkpoint folder.
    opts : TrainOptions
        Options.

    Returns
    -------
    Path or None
        The checkpoint folder (None on ranks other than 0).
    """
    ctx = setup(opts)
    sessions = load_cohort(deriv_dirs, opts)
    model, info = pretrain(sessions, opts, ctx)
    if not ctx.is_main:
        return None
    card = base_card("pretrain", sessions, deriv_dirs, opts, model.config)
    card["targets"] = []
    card["training"].update({"n_subjects": info["n_subjects"], "epochs": opts.epochs,
                             "epochs_run": len(info["history"]), "seed": opts.seed,
                             "seconds": round(info["seconds"], 1), "history": info["history"]})
    card["metrics"] = info["metrics"]
    path = save_checkpoint(Path(out_dir), model, card)
    LOGGER.info("pretrained model written to %s", path)
    return Path(path)


def participants_path(deriv_dirs: Sequence[Path | str], explicit: Path | str | None) -> Path:
    """The targets table: ``explicit``, else the first derivatives folder's participants.tsv."""
    if explicit is not None:
        return Path(explicit)
    return Path(deriv_dirs[0]) / "participants.tsv"


def _load_init(init: Path | str, opts: TrainOptions, roi_names: Sequence[str]) -> BrainFM:
    try:
        pre, card = load_checkpoint(resolve_model_dir(str(init)), expected_atlas=opts.atlas,
                                    expected_roi_names=list(roi_names))
    except FileNotFoundError as exc:
        raise InputError(f"--init {init}: {exc}") from exc
    if abs(float(card.get("sampling_rate_hz", opts.sampling_rate_hz)) - opts.sampling_rate_hz) \
            > 1e-9:
        raise UsageError(
            f"--init {init} was trained at {card.get('sampling_rate_hz')} Hz, this run uses "
            f"{opts.sampling_rate_hz} Hz"
        )
    return pre


def run_finetune(
    deriv_dirs: Sequence[Path | str],
    out_dir: Path | str,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    init: Path | str | None = None,
    participants_tsv: Path | str | None = None,
) -> Path | None:
    """``brainfm-train finetune``: supervised training on all sessions, then a checkpoint.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    out_dir : path
        Checkpoint folder.
    specs : sequence of TargetSpec
        Targets.
    opts : TrainOptions
        Options.
    init : path, optional
        Pretraining checkpoint whose encoder initialises the model.
    participants_tsv : path, optional
        Targets table (default ``deriv_dirs[0]/participants.tsv``).

    Returns
    -------
    Path or None
        The checkpoint folder (None on ranks other than 0).
    """
    if not specs:
        raise UsageError("give at least one --target (e.g. --target age)")
    ctx = setup(opts)
    ptsv = participants_path(deriv_dirs, participants_tsv)
    frame = load_participants(ptsv)
    for s in specs:
        resolve_column(frame, s.column, str(ptsv))
    sessions = load_cohort(deriv_dirs, opts)
    y = training_targets(frame, [s.participant_id for s in sessions], specs, str(ptsv))
    pre = _load_init(init, opts, sessions[0].roi_names) if init is not None else None
    model, scaler, info = finetune(sessions, y, specs, opts, ctx, init=pre)
    if not ctx.is_main:
        return None
    card = base_card("finetune", sessions, deriv_dirs, opts, model.config)
    card.update(prediction_card(scaler, specs, model.config, opts))
    card["training"].update({
        "n_subjects": info["n_subjects"], "epochs": opts.epochs,
        "epochs_run": len(info["history"]), "seed": opts.seed,
        "participants_tsv": str(ptsv), "init": str(init) if init is not None else None,
        "seconds": round(info["seconds"], 1), "history": info["history"],
    })
    card["metrics"] = {"inner_validation": info["metrics"]}
    for spec in specs:
        m = info["metrics"].get(spec.name)
        if m:
            LOGGER.info("inner validation %s: MAE %.3f (training mean %.3f), r %.3f, R² %.3f, "
                        "n %d", spec.name, m["mae"], m["mae_training_mean"], m["r"], m["r2"],
                        m["n"])
    path = save_checkpoint(Path(out_dir), model, card)
    LOGGER.info("model written to %s", path)
    return Path(path)


def run_predict(
    model_dir: Path | str,
    deriv_dirs: Sequence[Path | str],
    out_tsv: Path | str,
    device: str = "cpu",
    participants: Sequence[str] | None = None,
    stride: int | None = None,
) -> pd.DataFrame:
    """``brainfm-train predict``: one row per participant (and session).

    Parameters
    ----------
    model_dir : path or "default"
        Checkpoint folder or ``default`` (the bundled weights).
    deriv_dirs : sequence of path
        Derivatives folders with time series of the model's atlas.
    out_tsv : path
        Output TSV: ``participant_id``, [``session_id``], then ``<name>``, ``<name>_std`` per
        target.
    device : str, optional
        ``cpu`` or ``cuda``.
    participants : sequence of str, optional
        Only these participants.
    stride : int, optional
        Sliding-window step (default: the card's).

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    try:
        path = resolve_model_dir(str(model_dir))
        model, card = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise InputError(f"--model {model_dir}: {exc}") from exc
    from brainfm.models.predict import card_targets

    targets = card_targets(card)
    atlas = str(card.get("atlas") or "")
    rate = float(card.get("sampling_rate_hz", DEFAULT_SAMPLING_RATE_HZ))
    files = find_timeseries(deriv_dirs, atlas, participants=participants)
    sessions = load_sessions(files, rate, card.get("roi_names") or None)
    model.to(torch.device(device))
    rows = []
    for s in sessions:
        res = predict_subject(model, card, s, stride=stride, device=device)
        row: dict[str, Any] = {"participant_id": f"sub-{s.participant_id}",
                               "session_id": f"ses-{s.session_id}" if s.session_id else "n/a"}
        for t in targets:
            for column in (t["name"], f"{t['name']}_std", *interval_columns(t["name"]),
                           *reliability_columns(t["name"])):
                if column in res["predictions"]:  # ensembles add calibrated intervals
                    row[column] = res["predictions"][column]
        if "ood" in res:
            row["out_of_distribution"] = res["ood"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table["session_id"].eq("n/a").all():
        table = table.drop(columns="session_id")
    write_tsv_atomic(Path(out_tsv), table, float_format="%.6g")
    LOGGER.info("predictions for %d sessions written to %s", len(rows), out_tsv)
    return table
