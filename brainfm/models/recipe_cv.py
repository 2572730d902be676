"""``brainfm-train cv --recipe ensemble``: cross-validate the deployed recipe and its baselines.

On every outer fold (site-stratified K-fold, or one fold per site with ``leave-group-out``) the
shipped recipe (:func:`~brainfm.models.stacking.fit_ensemble`, with LMAE pretraining inside
the fold) is fitted on the training subjects only and predicts the test subjects with its
calibrated intervals; on the same folds the connectome baselines (ridge and kernel ridge on
Fisher-z connectivity, :mod:`brainfm.models.baselines`, penalty chosen on the training
subjects) and the training mean. Accuracy is computed from the pooled out-of-fold predictions
(:mod:`brainfm.models.evaluation`); the fold spread is reported beside it.

Writes ``cv_results.json`` (everything), ``cv_summary.tsv`` (one row per target and model) and
``predictions.tsv`` (one row per test subject) in the output folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.errors import UsageError
from brainfm.fileio import write_text_atomic, write_tsv_atomic
from brainfm.models.baselines import (
    BASELINE_KERNELS,
    connectivity_features,
    nested_kernel_ridge,
    subject_kernel,
)
from brainfm.models.cross_validation import json_default, load_cv_cohort, make_folds
from brainfm.models.evaluation import evaluate_predictions
from brainfm.models.options import TrainOptions
from brainfm.models.runtime import setup
from brainfm.models.stacking import RecipeOptions, fit_ensemble
from brainfm.models.targets import TargetSpec
from brainfm.models.train import pretrain

LOGGER = logging.getLogger(__name__)
#: The models of the report: the recipe, its two parts alone, the baselines.
MODELS = ("recipe", "recipe-linear", "recipe-network", *BASELINE_KERNELS, "training_mean")
#: Columns of ``cv_summary.tsv``.
SUMMARY_COLUMNS = ("target", "model", "n", "mae", "r", "r2", "balanced_mae", "coverage_90",
                   "fold_mae_mean", "fold_mae_sd", "fold_r_mean", "fold_r_sd")


def _baselines(kernels: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray,
               test: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Ridge, kernel ridge and training-mean predictions of the test subjects, per target."""
    out = {name: np.full((test.size, y.shape[1]), np.nan)
           for name in (*BASELINE_KERNELS, "training_mean")}
    for k in range(y.shape[1]):
        tr = train[np.isfinite(y[train, k])]
        out["training_mean"][:, k] = y[tr, k].mean()
        for kind in BASELINE_KERNELS:
            out[kind][:, k] = nested_kernel_ridge(kernels[kind], y[:, k], tr, test, seed=seed)[0]
    return out


def _recipe_fold(sessions: Sequence[Any], y: np.ndarray, specs: Sequence[TargetSpec],
                 sites: np.ndarray, train: np.ndarray, test: np.ndarray, opts: TrainOptions,
                 ctx: Any, pretrain_epochs: int, recipe: RecipeOptions, label: str
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Fit the recipe on ``train`` and predict ``test``: values per model and target."""
    train_sessions = [sessions[i] for i in train]
    init = None
    if pretrain_epochs > 0:
        init, _ = pretrain(train_sessions, opts, ctx, epochs=pretrain_epochs,
                           label=f"{label} pretrain")
    model, info = fit_ensemble(train_sessions, y[train], specs, sites[train], opts, ctx,
                               init=init, recipe=recipe, label=f"{label} recipe")
    card = {"roi_names": train_sessions[0].roi_names, "sampling_rate_hz": opts.sampling_rate_hz,
            "window": int(model.config.window), "prediction": {"stride": opts.stride}}
    outs = [model.predict_session(card, sessions[i], device=ctx.device) for i in test]
    values: dict[str, dict[str, np.ndarray]] = {}
    for s in specs:
        n = s.name
        comp = [o["components"][n] for o in outs]
        values[n] = {
            "recipe": np.array([o["predictions"][n] for o in outs], dtype=float),
            "lower90": np.array([o["predictions"][f"{n}_lower90"] for o in outs], dtype=float),
            "upper90": np.array([o["predictions"][f"{n}_upper90"] for o in outs], dtype=float),
            "recipe-linear": np.array([c["linear"] for c in comp], dtype=float),
            "recipe-network": np.array([np.nan if c["network"] is None else c["network"]
                                        for c in comp], dtype=float),
        }
    weights = {n: st["network_weight"] for n, st in info["stacking"].items()}
    return values, {"network_weight": weights,
                    "best_epochs": [m["best_epoch"] for m in info["members"]]}


def run_recipe_cv(
    deriv_dirs: Sequence[Path | str],
    out_dir: Path | str,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    n_folds: int = 5,
    group_by: str | None = "site",
    protocol: str = "stratified-kfold",
    participants_tsv: Path | str | None = None,
    recipe: RecipeOptions | None = None,
) -> dict[str, Any]:
    """Cross-validate the deployed recipe and the baselines on the same outer folds.

    The groups of ``group_by`` (sites) are also the recipe's inner folds inside every outer
    training set, as in ``brainfm-train ensemble --site-column``.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders (one session per participant).
    out_dir : path
        Folder for ``cv_results.json``, ``cv_summary.tsv`` and ``predictions.tsv``.
    specs : sequence of TargetSpec
        Targets.
    opts : TrainOptions
        Options (``pretrain_epochs``: LMAE epochs in each fold, default ``epochs``).
    n_folds : int, optional
        K of the stratified K-fold.
    group_by : str or None, optional
        participants.tsv column of the sites.
    protocol : str, optional
        ``stratified-kfold`` or ``leave-group-out``.
    participants_tsv : path, optional
        Targets table.
    recipe : RecipeOptions, optional
        Recipe choices (default: what ships).

    Returns
    -------
    dict
        What ``cv_results.json`` holds: ``targets`` (per target and model, the evaluation of
        :func:`~brainfm.models.evaluation.evaluate_predictions`), ``summary`` (the rows of
        ``cv_summary.tsv``), ``per_fold`` and the run's settings.
    """
    recipe = recipe or RecipeOptions()
    ctx = setup(opts)
    cohort = load_cv_cohort(deriv_dirs, specs, opts, group_by, protocol, participants_tsv)
    if len(set(cohort.pids)) != len(cohort.pids):
        raise UsageError("--recipe ensemble takes one session per participant; pass "
                         "derivatives with one session each (or use --recipe network)")
    order = {p: i for i, p in enumerate(cohort.pids)}
    sessions = [cohort.sessions[order[p]] for p in cohort.subjects]
    y = cohort.y[[order[p] for p in cohort.subjects]]
    sites = np.asarray(cohort.groups).astype(str)
    folds = make_folds(cohort.subjects, cohort.groups, n_folds, protocol, opts.seed)
    names = [s.name for s in specs]
    pretrain_epochs = opts.epochs if opts.pretrain_epochs is None else int(opts.pretrain_epochs)
    features = connectivity_features([s.conn for s in sessions])
    # a kernel entry pairs two subjects only: the whole-cohort kernel is sliced per fold
    kernels = {kind: subject_kernel(features, kind) for kind in BASELINE_KERNELS}
    preds = {n: {m: np.full(len(sessions), np.nan) for m in (*MODELS, "lower90", "upper90")}
             for n in names}
    fold_of = np.zeros(len(sessions), dtype=int)
    per_fold: list[dict[str, Any]] = []
    skipped: list[list[str]] = []
    known = np.isfinite(y).any(axis=1)
    t_all = time.perf_counter()
    for f, (train, test) in enumerate(folds, start=1):
        t0 = time.perf_counter()
        label = f"fold {f}/{len(folds)}"
        if not known[test].any():  # nothing to score: its sessions still pretrain other folds
            skipped.append(sorted(set(sites[test].tolist())))
            LOGGER.info("%s: skipped, none of its %d test subjects (%s) has a known target",
                        label, test.size, ", ".join(skipped[-1]))
            continue
        LOGGER.info("%s: %d training, %d test subjects", label, train.size, test.size)
        fold_of[test] = f
        values, info = _recipe_fold(sessions, y, specs, sites, train, test, opts, ctx,
                                    pretrain_epochs, recipe, label)
        base = _baselines(kernels, y, train, test, opts.seed + f)
        for k, n in enumerate(names):
            for m, v in values[n].items():
                preds[n][m][test] = v
            for m, v in base.items():
                preds[n][m][test] = v[:, k]
        per_fold.append({"fold": f, "n_train": int(train.size), "n_test": int(test.size),
                         "test_groups": sorted(set(sites[test].tolist())),
                         "seconds": round(time.perf_counter() - t0, 1), **info})
    ages = y[:, names.index(recipe.balance_by)] if recipe.balance_by in names else None
    results: dict[str, Any] = {}
    for k, n in enumerate(names):
        p = preds[n]
        results[n] = {m: evaluate_predictions(
            y[:, k], p[m], fold_of, ages,
            p["lower90"] if m == "recipe" else None, p["upper90"] if m == "recipe" else None,
            recipe.band_edges) for m in MODELS}
    summary = summary_rows(results)
    report = {
        "recipe": "ensemble", "protocol": protocol, "folds": len(folds) - len(skipped),
        "skipped_folds": skipped,
        "group_by": cohort.group_col, "n_subjects": int(known.sum()), "n_sessions": len(sessions),
        "pretrain_epochs": pretrain_epochs, "members": recipe.n_members,
        "band_edges": list(recipe.band_edges), "options": opts.to_dict(),
        "seconds": round(time.perf_counter() - t_all, 1),
        "headline": "pooled out-of-fold predictions (each subject once); fold_spread is the "
                    "mean ± sd over outer folds",
        "targets": results, "summary": summary, "per_fold": per_fold,
    }
    if ctx.is_main:
        _write(Path(out_dir), report, cohort, sessions, y, preds, fold_of, names)
    return report


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target and model (the columns of :data:`SUMMARY_COLUMNS`).

    Parameters
    ----------
    results : dict
        Per target and model, an evaluation of
        :func:`~brainfm.models.evaluation.evaluate_predictions`.

    Returns
    -------
    list of dict
        The rows of ``cv_summary.tsv``.
    """
    rows = []
    for target, models in results.items():
        for model, ev in models.items():
            spread = ev["fold_spread"]
            rows.append({
                "target": target, "model": model, "n": ev["pooled"]["n"],
                "mae": ev["pooled"]["mae"], "r": ev["pooled"]["r"], "r2": ev["pooled"]["r2"],
                "balanced_mae": ev.get("balanced_mae"),
                "coverage_90": (ev.get("coverage_90") or {}).get("all", {}).get("coverage"),
                "fold_mae_mean": spread["mae"]["mean"], "fold_mae_sd": spread["mae"]["sd"],
                "fold_r_mean": spread["r"]["mean"], "fold_r_sd": spread["r"]["sd"]})
    return rows


def summary_text(report: dict[str, Any]) -> str:
    """The short table printed at the end of ``brainfm-train cv``.

    Parameters
    ----------
    report : dict
        The result of :func:`run_recipe_cv`.

    Returns
    -------
    str
        Plain-text table: per target and model the pooled MAE, r, R², age-balanced MAE,
        90 % coverage and the fold spread of the MAE.
    """
    def num(v: float | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"brainfm-train cv: recipe ensemble, {report['protocol']}, {report['folds']} "
             f"folds, {report['n_subjects']} subjects with a known target of "
             f"{report['n_sessions']} (pooled out-of-fold predictions)",
             f"{'target':<20} {'model':<15} {'MAE':>7} {'r':>6} {'R2':>6} {'bal.MAE':>7} "
             f"{'cov90':>6}  fold MAE mean ± sd"]
    for row in report["summary"]:
        lines.append(f"{row['target']:<20} {row['model']:<15} {num(row['mae']):>7} "
                     f"{num(row['r']):>6} {num(row['r2']):>6} {num(row['balanced_mae']):>7} "
                     f"{num(row['coverage_90']):>6}  {num(row['fold_mae_mean'])} ± "
                     f"{num(row['fold_mae_sd'])}")
    return "\n".join(lines)


def _write(out: Path, report: dict[str, Any], cohort: Any, sessions: Sequence[Any],
           y: np.ndarray, preds: dict[str, dict[str, np.ndarray]], fold_of: np.ndarray,
           names: Sequence[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"fold": fold_of,
                          "participant_id": [f"sub-{s.participant_id}" for s in sessions]})
    if cohort.group_col:
        table[cohort.group_col] = np.asarray(cohort.groups).astype(str)
    for k, n in enumerate(names):
        table[f"{n}_true"] = y[:, k]
        table[n] = preds[n]["recipe"]
        table[f"{n}_lower90"] = preds[n]["lower90"]
        table[f"{n}_upper90"] = preds[n]["upper90"]
        for m in MODELS[1:]:
            table[f"{n}_{m.replace('-', '_')}"] = preds[n][m]
    write_tsv_atomic(out / "predictions.tsv", table, float_format="%.6g")
    write_tsv_atomic(out / "cv_summary.tsv", pd.DataFrame(report["summary"],
                                                          columns=list(SUMMARY_COLUMNS)),
                     float_format="%.6g")
    write_text_atomic(out / "cv_results.json",
                      json.dumps(report, indent=2, default=json_default) + "\n")
