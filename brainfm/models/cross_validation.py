"""Cross-validation of the training recipe (``brainfm-train cv``): folds and the run."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.errors import UsageError
from brainfm.fileio import write_text_atomic, write_tsv_atomic
from brainfm.models.cohort_checks import training_targets
from brainfm.models.loop import regression_metrics
from brainfm.models.options import TrainOptions
from brainfm.models.runs import load_cohort, participants_path
from brainfm.models.runtime import setup
from brainfm.models.targets import TargetSpec, load_participants, resolve_column
from brainfm.models.train import finetune, predict_sessions, prediction_card, pretrain

LOGGER = logging.getLogger(__name__)


def make_folds(subjects: np.ndarray, groups: np.ndarray, n_folds: int, protocol: str, seed: int
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer cross-validation folds over subjects.

    Parameters
    ----------
    subjects : ndarray of str
        One entry per subject.
    groups : ndarray of str
        Group (site) of each subject.
    n_folds : int
        K of ``stratified-kfold`` (ignored by ``leave-group-out``).
    protocol : {"stratified-kfold", "leave-group-out"}
        K folds stratified by group, or one test fold per group.
    seed : int
        Shuffling seed of the K-fold.

    Returns
    -------
    list of (train, test)
        Index arrays into ``subjects``.

    Raises
    ------
    UsageError
        Unknown protocol, fewer than two groups for leave-group-out, or an impossible K.
    """
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    if protocol == "leave-group-out":
        if len(set(groups.tolist())) < 2:
            raise UsageError("leave-group-out needs at least 2 groups")
        return list(LeaveOneGroupOut().split(subjects, groups=groups))
    if protocol != "stratified-kfold":
        raise UsageError(f"--protocol must be stratified-kfold or leave-group-out, not {protocol}")
    if n_folds < 2 or n_folds > subjects.size:
        raise UsageError(f"--folds {n_folds}: need 2 <= folds <= {subjects.size} subjects")
    _, counts = np.unique(groups, return_counts=True)
    if counts.max() < n_folds:
        from sklearn.model_selection import KFold

        LOGGER.warning("no group has %d members; using plain shuffled K-fold", n_folds)
        return list(KFold(n_folds, shuffle=True, random_state=seed).split(subjects))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(n_folds, shuffle=True, random_state=seed)
                    .split(subjects, groups))


@dataclass
class CVCohort:
    """The inputs of a cross-validation: sessions, targets and the group of each subject.

    Attributes
    ----------
    frame : pandas.DataFrame
        participants.tsv, indexed by participant label.
    group_col : str or None
        Its column of the groups (sites), None for none.
    sessions : list of SessionData
        The cohort's sessions.
    pids : list of str
        Participant of each session.
    y : ndarray of shape (n_sessions, K)
        Raw targets of each session (NaN = missing).
    subjects : ndarray of str
        The participants, sorted (what the folds split).
    groups : ndarray of str
        Group of each subject (``"0"``-like constant without a group column).
    """

    frame: pd.DataFrame
    group_col: str | None
    sessions: list[Any]
    pids: list[str]
    y: np.ndarray
    subjects: np.ndarray
    groups: np.ndarray


def load_cv_cohort(deriv_dirs: Sequence[Path | str], specs: Sequence[TargetSpec],
                   opts: TrainOptions, group_by: str | None, protocol: str,
                   participants_tsv: Path | str | None) -> CVCohort:
    """Load and check a cross-validation's cohort (both ``--recipe`` of ``brainfm-train cv``).

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    specs : sequence of TargetSpec
        Targets.
    opts : TrainOptions
        Options (atlas, sampling rate).
    group_by : str or None
        participants.tsv column of the groups.
    protocol : str
        ``stratified-kfold`` or ``leave-group-out`` (which needs a group column).
    participants_tsv : path, optional
        Targets table (default ``deriv_dirs[0]/participants.tsv``).

    Returns
    -------
    CVCohort
        The cohort.

    Raises
    ------
    UsageError
        No target, or leave-group-out without a group column; unknown columns.
    """
    if not specs:
        raise UsageError("give at least one --target (e.g. --target age)")
    ptsv = participants_path(deriv_dirs, participants_tsv)
    frame = load_participants(ptsv)
    group_col = resolve_column(frame, group_by, str(ptsv)) if group_by else None
    if protocol == "leave-group-out" and group_col is None:
        raise UsageError("--protocol leave-group-out needs --group-by COLUMN")
    for s in specs:
        resolve_column(frame, s.column, str(ptsv))
    sessions = load_cohort(deriv_dirs, opts)
    pids = [s.participant_id for s in sessions]
    y = training_targets(frame, pids, specs, str(ptsv))
    subjects = np.array(sorted(set(pids)), dtype=object)
    if group_col is None:
        groups = np.zeros(subjects.size, dtype=object)
    else:
        col = frame[group_col].to_dict()
        groups = np.array([str(col.get(p, "n/a")) for p in subjects], dtype=object)
    return CVCohort(frame, group_col, list(sessions), pids, y, subjects, groups)


def run_cv(
    deriv_dirs: Sequence[Path | str],
    out_dir: Path | str,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    n_folds: int = 5,
    group_by: str | None = "site",
    protocol: str = "stratified-kfold",
    participants_tsv: Path | str | None = None,
) -> dict[str, Any]:
    """``brainfm-train cv``: cross-validation with pretraining inside each fold.

    Folds split subjects; with ``stratified-kfold`` they are stratified by the ``group_by``
    column (site-stratified K-fold), with ``leave-group-out`` each group is a test fold. In
    every fold the LMAE pretraining (``opts.pretrain_epochs``, 0 = none) and the fine-tuning
    see the training subjects only.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    out_dir : path
        Folder for ``predictions.tsv`` and ``metrics.json``.
    specs : sequence of TargetSpec
        Targets.
    opts : TrainOptions
        Options.
    n_folds : int, optional
        K of the K-fold.
    group_by : str or None, optional
        participants.tsv column to stratify by (or the groups of leave-group-out).
    protocol : str, optional
        ``stratified-kfold`` or ``leave-group-out``.
    participants_tsv : path, optional
        Targets table (default ``deriv_dirs[0]/participants.tsv``).

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.
    """
    ctx = setup(opts)
    cohort = load_cv_cohort(deriv_dirs, specs, opts, group_by, protocol, participants_tsv)
    frame, group_col, sessions, pids, y = (cohort.frame, cohort.group_col, cohort.sessions,
                                           cohort.pids, cohort.y)
    subjects, groups = cohort.subjects, cohort.groups
    folds = make_folds(subjects, groups, n_folds, protocol, opts.seed)
    names = [s.name for s in specs]
    pretrain_epochs = opts.epochs if opts.pretrain_epochs is None else int(opts.pretrain_epochs)
    rows: list[dict[str, Any]] = []
    fold_metrics: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for f, (tr_s, te_s) in enumerate(folds, start=1):
        t0 = time.perf_counter()
        train_subj, test_subj = set(subjects[tr_s].tolist()), set(subjects[te_s].tolist())
        tr = [i for i, p in enumerate(pids) if p in train_subj]
        te = [i for i, p in enumerate(pids) if p in test_subj]
        LOGGER.info("fold %d/%d: %d training, %d test subjects", f, len(folds), len(train_subj),
                    len(test_subj))
        pre = None
        if pretrain_epochs > 0:
            pre, _ = pretrain([sessions[i] for i in tr], opts, ctx, epochs=pretrain_epochs,
                              label=f"fold {f} pretrain")
        model, scaler, _info = finetune([sessions[i] for i in tr], y[tr], specs, opts, ctx,
                                        init=pre, label=f"fold {f} finetune")
        card = prediction_card(scaler, specs, model.config, opts)
        pred = predict_sessions(model, card, [sessions[i] for i in te], opts.stride,
                                    ctx.device)
        per_target: dict[str, Any] = {}
        for k, name in enumerate(names):
            m = regression_metrics(y[te, k], pred[:, k])
            m["mae_training_mean"] = regression_metrics(
                y[te, k], np.full(len(te), scaler.mean[k]))["mae"]
            per_target[name] = m
        fold_metrics.append({"fold": f, "n_train": len(train_subj), "n_test": len(test_subj),
                             "test_groups": sorted(set(groups[te_s].tolist())),
                             "seconds": round(time.perf_counter() - t0, 1), **per_target})
        LOGGER.info("fold %d: %s (%.0f s)", f, "; ".join(
            f"{n} MAE {m['mae']:.3f} (training mean {m['mae_training_mean']:.3f}) r {m['r']:.3f}"
            for n, m in per_target.items()), time.perf_counter() - t0)
        col = frame[group_col].to_dict() if group_col else {}
        for j, i in enumerate(te):
            s = sessions[i]
            row: dict[str, Any] = {"fold": f, "participant_id": f"sub-{s.participant_id}",
                                   "session_id": f"ses-{s.session_id}" if s.session_id else "n/a"}
            if group_col:
                row[group_col] = col.get(s.participant_id, "n/a")
            for k, name in enumerate(names):
                row[f"{name}_true"] = y[i, k]
                row[name] = pred[j, k]
                row[f"{name}_std"] = pred[j, len(names) + k]
            rows.append(row)
    summary: dict[str, Any] = {
        "protocol": protocol, "folds": len(folds), "group_by": group_col,
        "n_subjects": int(subjects.size), "n_sessions": len(sessions),
        "pretrain_epochs": pretrain_epochs, "options": opts.to_dict(),
        "seconds": round(time.perf_counter() - t_all, 1), "targets": {}, "per_fold": fold_metrics,
    }
    for name in names:
        entry: dict[str, Any] = {}
        for metric in ("mae", "r", "r2", "mae_training_mean"):
            vals = np.array([fm[name][metric] for fm in fold_metrics], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            entry[metric] = {
                "mean": float(finite.mean()) if finite.size else None,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                "per_fold": [None if not np.isfinite(v) else float(v) for v in vals],
            }
        summary["targets"][name] = entry
    if ctx.is_main:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(rows)
        if table["session_id"].eq("n/a").all():
            table = table.drop(columns="session_id")
        write_tsv_atomic(out / "predictions.tsv", table, float_format="%.6g")
        write_text_atomic(out / "metrics.json",
                          json.dumps(summary, indent=2, default=json_default) + "\n")
        for name in names:
            e = summary["targets"][name]
            LOGGER.info("cv %s: MAE %.3f ± %.3f (training mean %.3f), r %.3f ± %.3f, "
                        "R² %.3f ± %.3f", name, *(
                            _nan(e[m][s]) for m, s in (("mae", "mean"), ("mae", "sd"),
                                                       ("mae_training_mean", "mean"),
                                                       ("r", "mean"), ("r", "sd"),
                                                       ("r2", "mean"), ("r2", "sd"))))
    return summary


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def json_default(obj: Any) -> Any:
    """``json.dumps`` default of the CV outputs: numpy scalars and paths.

    Parameters
    ----------
    obj : object
        What ``json`` cannot write.

    Returns
    -------
    object
        Its plain Python value.

    Raises
    ------
    TypeError
        Anything else.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
