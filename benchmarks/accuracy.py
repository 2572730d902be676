#!/usr/bin/env python
"""Accuracy of brainfm against classic connectome baselines on ABIDE I (PCP, CC200).

One command evaluates, on the same folds, for age and PIQ (the fluid-intelligence proxy):

- baselines: the training-mean predictor; ridge and kernel ridge regression (correlation
  kernel) on Fisher-z connectivity, penalties chosen by an inner 5-fold on the training subjects;
- brainfm: the full model (LMAE pretraining with local masking, RWMoE, SSM) and its ablations:
  no pretraining, random instead of local masking, an MLP instead of the RWMoE, mean pooling
  instead of the SSM;

under two protocols: site-stratified 5-fold cross-validation and leave-one-site-out. In every
fold, pretraining, target scaling, penalties, early stopping and the brain-age bias correction
see the training subjects only. It writes ``accuracy.md`` (tables, command, machine, date, git
commit) and ``accuracy.json`` (every fold's numbers) into ``--out``.

Usage (from the repository root, after ``scripts/setup_env.sh``)::

    python benchmarks/accuracy.py ../shared/data/abide-pcp-cc200 --jobs 2

The imported time series are cached in ``--cache`` and every finished training in
``--work-dir``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import evaluation as E
import numpy as np
from provenance import git_commit, machine

from brainfm.derivatives import reliability_columns
from brainfm.fileio import write_text_atomic
from brainfm.group.brainage import apply_bias_correction, fit_bias_correction
from brainfm.importers.pcp import import_pcp
from brainfm.models import runs
from brainfm.models.age_bands import balanced_mae
from brainfm.models.baselines import (
    BASELINE_KERNELS,
    connectivity_features,
    nested_kernel_ridge,
    subject_kernel,
)
from brainfm.models.cli import load_options
from brainfm.models.cross_validation import make_folds
from brainfm.models.ensemble import interval_columns
from brainfm.models.evaluation import correlation_ci
from brainfm.models.loop import regression_metrics
from brainfm.models.options import RECOMMENDED_CONFIG, TrainOptions
from brainfm.models.runtime import DistContext, setup
from brainfm.models.sessions import SessionData
from brainfm.models.stacking import fit_ensemble
from brainfm.models.targets import TargetSpec, load_participants, target_matrix
from brainfm.models.train import finetune, predict_sessions, prediction_card, pretrain

LOGGER = logging.getLogger("accuracy")
HERE = Path(__file__).resolve().parent
#: The recommended configuration shipped in the package (brainfm/data/configs/brainfm.yaml).
DEFAULT_CONFIG = RECOMMENDED_CONFIG

#: Targets: model name, participants.tsv column of the imported PCP data, label in the report.
TARGETS = (TargetSpec("age", "age"), TargetSpec("fluid_intelligence", "piq"))
TARGET_LABELS = {"age": "age", "fluid_intelligence": "PIQ"}
PROTOCOLS = {"kfold": "stratified-kfold", "loso": "leave-group-out"}
PROTOCOL_TITLES = {"kfold": "Site-stratified 5-fold CV", "loso": "Leave-one-site-out"}

#: brainfm variants: which pretraining they start from and their model overrides.
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"pretrain": "local", "model": {}},
    "no-pretrain": {"pretrain": None, "model": {}},
    "random-mask": {"pretrain": "random", "model": {}},
    "mlp": {"pretrain": "local", "model": {"use_rwmoe": False}},
    "meanpool": {"pretrain": "local", "model": {"use_ssm": False}},
    # what ships (brainfm.models.stacking): site-bagged members stacked with the linear member;
    # its task also reports the network members alone and the linear member alone
    "recipe": {"pretrain": "local", "model": {}, "own_task": True},
}
#: Results that the recipe's task derives (the ablation of its two parts).
RECIPE_PARTS = {"recipe-network": "network", "recipe-linear": "linear"}
VARIANT_TITLES = {
    "full": "brainfm (LMAE + RWMoE + SSM)",
    "no-pretrain": "brainfm, no pretraining",
    "random-mask": "brainfm, random masking",
    "mlp": "brainfm, MLP instead of RWMoE",
    "meanpool": "brainfm, mean pooling instead of SSM",
    "recipe": "brainfm (shipped: site-bagged LMAE + RWMoE + SSM members stacked with linear)",
    "recipe-network": "brainfm network members alone (log age)",
    "recipe-linear": "linear member alone (ridge, normalised edges, log age)",
}
BASELINE_TITLES = {"mean": "training mean", "ridge": "ridge (Fisher-z edges)",
                   "krr": "kernel ridge (correlation kernel)"}


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


@dataclass
class Cohort:
    """Loaded sessions with their targets and sites (one session per subject)."""

    sessions: list[SessionData]
    targets: np.ndarray  # (n, K) raw values, NaN = missing
    sites: np.ndarray  # (n,) str

    @property
    def subjects(self) -> np.ndarray:
        """Participant labels, one per session."""
        return np.array([s.participant_id for s in self.sessions], dtype=object)


def prepare_cache(data: Path, cache: Path) -> Path:
    """Import the PCP time series into brainfm derivatives once (atomically) and reuse them.

    Parameters
    ----------
    data : Path
        Folder with ``rois_cc200.tar.xz`` (or ``rois_cc200/``) and the phenotype CSV.
    cache : Path
        Derivatives folder to create or reuse.

    Returns
    -------
    Path
        The derivatives folder.
    """
    if (cache / "participants.tsv").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    LOGGER.info("importing %s into %s (once)", data, cache)
    import_pcp(data, tmp / "abide", overwrite=True)
    os.replace(tmp / "abide", cache)
    tmp.rmdir()
    return cache


def load_cohort(deriv: Path, opts: TrainOptions) -> Cohort:
    """Sessions, targets and sites of the imported cohort.

    Parameters
    ----------
    deriv : Path
        Imported derivatives (with ``participants.tsv``).
    opts : TrainOptions
        Atlas and sampling rate.

    Returns
    -------
    Cohort
        The cohort.
    """
    sessions = runs.load_cohort([deriv], opts)
    frame = load_participants(deriv / "participants.tsv")
    pids = [s.participant_id for s in sessions]
    y = target_matrix(frame, pids, list(TARGETS), str(deriv / "participants.tsv"))
    sites = np.array([str(frame.loc[p, "site"]) for p in pids], dtype=object)
    return Cohort(sessions=sessions, targets=y, sites=sites)


def outer_folds(cohort: Cohort, protocol: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer folds of a protocol (``kfold`` or ``loso``) as session index arrays."""
    return make_folds(cohort.subjects, cohort.sites, 5, PROTOCOLS[protocol], seed)


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def run_baselines(cohort: Cohort, folds: list[tuple[np.ndarray, np.ndarray]], seed: int
                  ) -> dict[str, list[dict[str, Any]]]:
    """Training mean, ridge and kernel ridge on every fold.

    Parameters
    ----------
    cohort : Cohort
        The cohort.
    folds : list of (train, test)
        Outer folds.
    seed : int
        Seed of the inner splits.

    Returns
    -------
    dict
        Per baseline, one record per fold (see :func:`fold_record`).
    """
    features = connectivity_features([s.conn for s in cohort.sessions])
    kernels = {kind: subject_kernel(features, kind) for kind in BASELINE_KERNELS}
    out: dict[str, list[dict[str, Any]]] = {"mean": [], **{k: [] for k in BASELINE_KERNELS}}
    for f, (train, test) in enumerate(folds, start=1):
        preds = {name: np.full((test.size, len(TARGETS)), np.nan) for name in out}
        bias_fit: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for k, spec in enumerate(TARGETS):
            y = cohort.targets[:, k]
            tr = train[np.isfinite(y[train])]
            preds["mean"][:, k] = y[tr].mean()
            for kind in BASELINE_KERNELS:
                test_pred, oof, _alpha = nested_kernel_ridge(kernels[kind], y, tr, test,
                                                             seed=seed + f)
                preds[kind][:, k] = test_pred
                if spec.name == "age":
                    bias_fit[kind] = (y[tr], oof)
        for name in out:
            out[name].append(fold_record(cohort, f, train, test, preds[name], bias_fit.get(name)))
    return out


# --------------------------------------------------------------------------------------------
# brainfm trainings (run in worker processes)
# --------------------------------------------------------------------------------------------

_COHORT: Cohort | None = None


def _init_worker(deriv: str, opts: dict[str, Any], threads: int) -> None:
    import torch

    global _COHORT
    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING)
    _COHORT = load_cohort(Path(deriv), _options(opts))


def _options(values: dict[str, Any]) -> TrainOptions:
    return TrainOptions(**copy.deepcopy(values))


def train_fold(task: dict[str, Any], cohort: Cohort | None = None) -> dict[str, Any]:
    """Pretrain once on a fold's training subjects, fine-tune each variant, predict the test.

    Parameters
    ----------
    task : dict
        ``train``/``test`` (session indices), ``pretrain`` (``local``, ``random`` or None),
        ``variants``, ``options`` (TrainOptions as a dict) and ``pretrain_epochs``.
    cohort : Cohort, optional
        The cohort (default: the one loaded by the worker process).

    Returns
    -------
    dict
        Per variant: test predictions, inner-validation participants and predictions (for the
        bias correction), best epoch and seconds; plus the pretraining seconds.
    """
    cohort = cohort if cohort is not None else _COHORT
    if cohort is None:
        raise RuntimeError("no cohort loaded in this process")
    t0 = time.perf_counter()
    train, test = np.asarray(task["train"]), np.asarray(task["test"])
    sessions = [cohort.sessions[i] for i in train]
    y_train = cohort.targets[train]
    base = _options(task["options"])
    ctx = setup(base)
    init = None
    result: dict[str, Any] = {"pretrain_seconds": 0.0, "variants": {}}
    if task["pretrain"] is not None:
        pre_opts = _options(task["options"])
        pre_opts.model = {**pre_opts.model, "masking": task["pretrain"]}
        init, info = pretrain(sessions, pre_opts, ctx, epochs=task["pretrain_epochs"],
                                label=f"{task['name']} pretrain")
        result["pretrain_seconds"] = round(info["seconds"], 1)
    for variant in task["variants"]:
        if variant == "recipe":
            result["variants"].update(_train_recipe(cohort, train, test, base, ctx, init, task))
            continue
        members = []
        for member in range(VARIANTS[variant].get("members", 1)):
            opts = _options(task["options"])
            opts.model = {**opts.model, **VARIANTS[variant]["model"]}
            opts.seed += member
            model, scaler, info = finetune(sessions, y_train, list(TARGETS), opts, ctx,
                                             init=init, label=f"{task['name']} {variant}")
            card = prediction_card(scaler, list(TARGETS), model.config, opts)
            pred = predict_sessions(model, card, [cohort.sessions[i] for i in test],
                                      opts.stride, ctx.device)[:, :len(TARGETS)]
            members.append((pred, info))
        info = members[0][1]
        single = len(members) == 1  # members have different inner splits: no bias fit
        result["variants"][variant] = {
            "test_pred": np.mean([m[0] for m in members], axis=0).tolist(),
            "val_participant_ids": info["val_participant_ids"] if single else [],
            "val_pred": np.asarray(info["val_predictions"]).tolist() if single else [],
            "best_epoch": info["metrics"]["best_epoch"],
            "seconds": round(sum(m[1]["seconds"] for m in members), 1),
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _train_recipe(cohort: Cohort, train: np.ndarray, test: np.ndarray, opts: TrainOptions,
                  ctx: DistContext, init: Any, task: dict[str, Any]) -> dict[str, Any]:
    """Fit the shipped recipe on a fold; results for it and for its two parts alone."""
    t0 = time.perf_counter()
    sessions = [cohort.sessions[i] for i in train]
    model, info = fit_ensemble(sessions, cohort.targets[train], list(TARGETS),
                               cohort.sites[train], opts, ctx, init=init,
                               label=f"{task['name']} recipe")
    card = {"roi_names": sessions[0].roi_names, "sampling_rate_hz": opts.sampling_rate_hz,
            "window": int(model.config.window), "prediction": {"stride": opts.stride}}
    outs = [model.predict_session(card, cohort.sessions[i]) for i in test]
    names = [t.name for t in TARGETS]
    seconds = round(time.perf_counter() - t0, 1)
    best = [m["best_epoch"] for m in info["members"]]
    oof_age = info["oof"]["age"]
    res: dict[str, Any] = {"recipe": {
        "test_pred": [[o["predictions"][n] for n in names] for o in outs],
        "intervals": {n: {c: [o["predictions"].get(c) for o in outs]
                          for c in (*interval_columns(n), *reliability_columns(n))}
                      for n in names},
        "ood": [o["ood"] for o in outs],
        "val_participant_ids": oof_age["participant_id"], "val_pred":
            [[v] for v in oof_age["final"]],
        "stacking": info["stacking"], "linear": info["linear"],
        "best_epoch": best, "seconds": seconds}}
    for variant, part in RECIPE_PARTS.items():
        pred = [[np.nan if o["components"][n][part] is None else o["components"][n][part]
                 for n in names] for o in outs]
        oof = oof_age[part]
        res[variant] = {"test_pred": pred, "val_participant_ids": oof_age["participant_id"],
                        "val_pred": [[v] for v in oof], "best_epoch": best, "seconds": seconds}
    return res


def model_code_digest() -> str:
    """SHA-256 of the model package's sources: a cached training is reused only by the same code."""
    import brainfm.models

    digest = hashlib.sha256()
    for path in sorted(Path(brainfm.models.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def plan_tasks(folds_by_protocol: dict[str, list], variants_by_protocol: dict[str, list[str]],
               opts: TrainOptions, pretrain_epochs: int) -> list[dict[str, Any]]:
    """One task per (protocol, fold, pretraining): the variants sharing that pretraining.

    Parameters
    ----------
    folds_by_protocol : dict
        Outer folds per protocol.
    variants_by_protocol : dict
        brainfm variants to run per protocol.
    opts : TrainOptions
        Training options of every variant.
    pretrain_epochs : int
        LMAE pretraining epochs.

    Returns
    -------
    list of dict
        Tasks for :func:`train_fold`, each with a ``key`` naming its cached result.
    """
    tasks = []
    options = opts.to_dict()
    code = model_code_digest()
    for protocol, folds in folds_by_protocol.items():
        groups: dict[tuple[str | None, str], list[str]] = {}
        for v in variants_by_protocol.get(protocol, []):
            own = v if VARIANTS[v].get("own_task") else ""
            groups.setdefault((VARIANTS[v]["pretrain"], own), []).append(v)
        for f, (train, test) in enumerate(folds, start=1):
            for (kind, own), variants in groups.items():
                task = {"name": f"{protocol} fold {f}", "protocol": protocol, "fold": f,
                        "train": train.tolist(), "test": test.tolist(), "pretrain": kind,
                        "variants": variants, "options": options,
                        "pretrain_epochs": pretrain_epochs if kind else 0, "code": code}
                digest = hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()
                task["key"] = f"{protocol}-{f:02d}-{kind or 'none'}{own and '-' + own}-" \
                    f"{digest[:12]}"
                tasks.append(task)
    # longest first: pretraining plus the most fine-tunings
    tasks.sort(key=lambda t: (bool(t["pretrain"]) + len(t["variants"]), len(t["train"])),
               reverse=True)
    return tasks


def run_tasks(tasks: list[dict[str, Any]], deriv: Path, opts: TrainOptions, jobs: int,
              threads: int, work_dir: Path) -> dict[str, dict[str, Any]]:
    """Run (or reuse from ``work_dir``) every task, ``jobs`` at a time.

    Parameters
    ----------
    tasks : list of dict
        From :func:`plan_tasks`.
    deriv : Path
        Imported derivatives (each worker loads them once).
    opts : TrainOptions
        Options (atlas and sampling rate for loading).
    jobs : int
        Worker processes.
    threads : int
        Torch threads per worker.
    work_dir : Path
        Cache of finished tasks (one JSON each).

    Returns
    -------
    dict
        Task key to result.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        path = work_dir / f"{task['key']}.json"
        if path.is_file():
            results[task["key"]] = json.loads(path.read_text())
        else:
            todo.append(task)
    LOGGER.info("%d trainings cached, %d to run with %d job(s) x %d thread(s)",
                len(results), len(todo), jobs, threads)
    if not todo:
        return results
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                initargs=(str(deriv), opts.to_dict(), threads)) as pool:
        futures = {pool.submit(train_fold, task): task for task in todo}
        for n, fut in enumerate(cf.as_completed(futures), start=1):
            task = futures[fut]
            res = fut.result()
            tmp = work_dir / f".{task['key']}.json.tmp"
            tmp.write_text(json.dumps(res))
            os.replace(tmp, work_dir / f"{task['key']}.json")
            results[task["key"]] = res
            LOGGER.info("[%d/%d] %s (%s pretraining; %s) done in %.0f s; %.0f s elapsed",
                        n, len(todo), task["name"], task["pretrain"] or "no",
                        ", ".join(task["variants"]), res["seconds"], time.perf_counter() - t0)
    return results


def brainfm_records(cohort: Cohort, folds: list[tuple[np.ndarray, np.ndarray]],
                    tasks: list[dict[str, Any]], results: dict[str, dict[str, Any]],
                    protocol: str) -> dict[str, list[dict[str, Any]]]:
    """Fold records of every brainfm variant of one protocol."""
    index = {p: i for i, p in enumerate(cohort.subjects)}
    out: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        if task["protocol"] != protocol:
            continue
        f = task["fold"]
        train, test = folds[f - 1]
        for variant, res in results[task["key"]]["variants"].items():
            val_idx = np.array([index[p] for p in res["val_participant_ids"]], dtype=int)
            bias = None
            if val_idx.size > 2:
                val_pred = np.asarray(res["val_pred"], dtype=np.float64)
                bias = (cohort.targets[val_idx, 0], val_pred[:, 0])
            rec = fold_record(cohort, f, train, test, np.asarray(res["test_pred"]), bias)
            rec.update(best_epoch=res["best_epoch"], seconds=res["seconds"])
            for columns in res.get("intervals", {}).values():
                rec["predictions"].update(columns)
            if "ood" in res:
                rec["predictions"]["ood"] = res["ood"]
            if "stacking" in res:  # what the recipe chose on its inner site folds
                rec["recipe_choices"] = {
                    name: {"network_weight": st["network_weight"],
                           "transform": st.get("transform"),
                           "segments": st.get("segments", 0)}
                    for name, st in res["stacking"].items()}
            out.setdefault(variant, []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: r["fold"])
    return out


# --------------------------------------------------------------------------------------------
# Metrics and report
# --------------------------------------------------------------------------------------------


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def fold_record(cohort: Cohort, fold: int, train: np.ndarray, test: np.ndarray,
                pred: np.ndarray, age_bias_data: tuple[np.ndarray, np.ndarray] | None
                ) -> dict[str, Any]:
    """Metrics of one model on one fold.

    Parameters
    ----------
    cohort : Cohort
        The cohort.
    fold : int
        Fold number.
    train, test : ndarray of int
        Session indices.
    pred : ndarray of shape (len(test), K)
        Test predictions.
    age_bias_data : (age, predicted) or None
        Held-out predictions of training subjects (inner out-of-fold or inner validation) to fit
        the brain-age bias on; None skips the correction.

    Returns
    -------
    dict
        ``fold``, ``n_train``, ``n_test``, ``test_sites``, per target MAE, r, R² and n, the
        brain-age-gap correlations with age before and after bias correction, and the test
        predictions (``participant_id``, values per target).
    """
    rec: dict[str, Any] = {"fold": fold, "n_train": int(train.size), "n_test": int(test.size),
                           "test_sites": sorted(set(cohort.sites[test].tolist()))}
    for k, spec in enumerate(TARGETS):
        rec[spec.name] = regression_metrics(cohort.targets[test, k], pred[:, k])
    age = cohort.targets[test, 0]
    rec["age_gap_r"] = _corr(pred[:, 0] - age, age)
    rec["age_gap_r_corrected"] = None
    if age_bias_data is not None:
        # the group level's linear correction (Cole et al. 2018), fitted on held-out training
        # subjects only
        bias_age, bias_pred = age_bias_data
        try:
            coefficients = fit_bias_correction(bias_pred, bias_age, "linear")
        except ValueError as err:  # too few subjects, or predictions flat in age
            rec["age_bias"] = {"error": str(err)}
        else:
            _, gap = apply_bias_correction(pred[:, 0], age, coefficients)
            rec["age_gap_r_corrected"] = _corr(gap, age)
            rec["age_bias"] = {"slope": coefficients["slope"],
                               "intercept": coefficients["intercept"]}
    rec["predictions"] = {"participant_id": cohort.subjects[test].tolist(),
                          **{s.name: pred[:, k].tolist() for k, s in enumerate(TARGETS)}}
    return rec


def summarise(cohort: Cohort, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± SD across folds, and metrics of all test predictions pooled."""
    out: dict[str, Any] = {}
    for k, spec in enumerate(TARGETS):
        entry: dict[str, Any] = {}
        for metric in ("mae", "r", "r2"):
            vals = np.array([np.nan if r[spec.name][metric] is None else r[spec.name][metric]
                             for r in records], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            entry[metric] = {"mean": float(vals.mean()) if vals.size else None,
                             "sd": float(vals.std(ddof=1)) if vals.size > 1 else None}
        index = {p: i for i, p in enumerate(cohort.subjects)}
        idx = np.array([index[p] for r in records for p in r["predictions"]["participant_id"]])
        pred = np.array([v for r in records for v in r["predictions"][spec.name]])
        entry["pooled"] = regression_metrics(cohort.targets[idx, k], pred)
        out[spec.name] = entry
    for key in ("age_gap_r", "age_gap_r_corrected"):
        vals = np.array([np.nan if r[key] is None else r[key] for r in records], dtype=float)
        vals = vals[np.isfinite(vals)]
        out[key] = {"mean": float(vals.mean()) if vals.size else None,
                    "sd": float(vals.std(ddof=1)) if vals.size > 1 else None}
    return out


#: Pairs compared subject by subject (A, B): MAE(A) / MAE(B) with bootstrap CIs.
PAIRS = (("recipe", "krr"), ("recipe", "ridge"), ("recipe", "recipe-linear"),
         ("recipe", "recipe-network"), ("recipe-linear", "krr"), ("recipe-network", "krr"),
         ("full", "krr"))


def evaluate_block(cohort: Cohort, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Age bands, sites, interval coverage, paired comparisons and PIQ correlations.

    Parameters
    ----------
    cohort : Cohort
        The cohort.
    records : dict
        Fold records per model of one protocol.

    Returns
    -------
    dict
        ``bands`` and ``sites`` (per model, age), ``coverage`` (recipe, per target and level),
        ``paired`` (age, see :data:`PAIRS`), ``piq_r`` (per model, with CIs).
    """
    index = {p: i for i, p in enumerate(cohort.subjects)}
    age = cohort.targets[:, 0]
    out: dict[str, Any] = {"bands": {}, "balanced": {}, "sites": {}, "coverage": {},
                           "paired": {}, "paired_balanced": {}, "piq_r": {}, "reliable": {}}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, recs in records.items():
        idx, pred = E.pooled(recs, index, "age")
        order = np.argsort(idx)
        preds[name] = (idx[order], pred[order])
        out["bands"][name] = E.band_table(age, idx, pred)
        out["balanced"][name] = balanced_mae(age[idx], pred)
        out["sites"][name] = E.site_table(age, cohort.sites, idx, pred)
        pidx, ppred = E.pooled(recs, index, "fluid_intelligence")
        out["piq_r"][name] = correlation_ci(cohort.targets[pidx, 1], ppred,
                                              cohort.sites[pidx])
    if "recipe" in records:
        for k, spec in enumerate(TARGETS):
            for level in (50, 90):
                idx, low = E.pooled(records["recipe"], index, f"{spec.name}_lower{level}")
                _, high = E.pooled(records["recipe"], index, f"{spec.name}_upper{level}")
                out["coverage"].setdefault(spec.name, {})[str(level)] = E.coverage(
                    cohort.targets[:, k], age, idx, low, high)
        idx, ood = E.pooled(records["recipe"], index, "ood")
        out["ood"] = {"n_flagged": int(np.nansum(ood)), "n": int(ood.size)}
        out["ood"]["bands"] = E.share_by_band(age, idx, ood)
        if all("age_reliable" in r["predictions"] for r in records["recipe"]):
            idx, reliable = E.pooled(records["recipe"], index, "age_reliable")
            out["reliable"] = E.share_by_band(age, idx, reliable)
    for a, b in PAIRS:
        if a in preds and b in preds and np.array_equal(preds[a][0], preds[b][0]):
            idx = preds[a][0]
            out["paired"][f"{a} vs {b}"] = E.paired_mae_ratio(
                age[idx], preds[a][1], preds[b][1], cohort.sites[idx])
            out["paired_balanced"][f"{a} vs {b}"] = E.paired_mae_ratio(
                age[idx], preds[a][1], preds[b][1], cohort.sites[idx], balanced=True)
    return out


def _fmt(entry: dict[str, Any], digits: int = 2) -> str:
    if entry.get("mean") is None:
        return "–"
    sd = entry.get("sd")
    return f"{entry['mean']:.{digits}f} ± {sd:.{digits}f}" if sd is not None else \
        f"{entry['mean']:.{digits}f}"


def _num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _ci(v: list[float] | None, digits: int = 2) -> str:
    return "–" if not v else f"[{v[0]:.{digits}f}, {v[1]:.{digits}f}]"


def render_evaluation(block: dict[str, Any]) -> list[str]:
    """Markdown of :func:`evaluate_block`: paired, bands, coverage, sites, PIQ."""
    ev, titles = block["evaluation"], block["titles"]
    lines = ["", "Paired comparison of age MAE on the same subjects (ratio < 1: A is better; "
             "95 % bootstrap CIs resampling subjects, and resampling whole sites):", "",
             "| A | B | MAE A / MAE B | CI (subjects) | CI (sites) | MAE A − MAE B (y) |",
             "|---|---|---|---|---|---|"]
    for key, pr in ev["paired"].items():
        a, b = key.split(" vs ")
        lines.append(f"| {titles[a]} | {titles[b]} | {pr['ratio']:.3f} | "
                     f"{_ci(pr['ci95_subjects'], 3)} | {_ci(pr['ci95_sites'], 3)} | "
                     f"{pr['difference']:+.2f} |")
    if ev.get("paired_balanced"):
        lines += ["", "The same, for the age-balanced MAE (mean of the four band MAEs, band "
                  "weights recomputed in every resample):", "",
                  "| A | B | balanced MAE A / B | CI (subjects) | CI (sites) | A − B (y) |",
                  "|---|---|---|---|---|---|"]
        for key, pr in ev["paired_balanced"].items():
            a, b = key.split(" vs ")
            lines.append(f"| {titles[a]} | {titles[b]} | {pr['ratio']:.3f} | "
                         f"{_ci(pr['ci95_subjects'], 3)} | {_ci(pr['ci95_sites'], 3)} | "
                         f"{pr['difference']:+.2f} |")
    bands = list(E.AGE_BANDS)
    lines += ["", "Age MAE (mean error) by true-age band, years, and the age-balanced MAE "
              "(their mean):", "",
              "| model | " + " | ".join(f"{b} (n={next(iter(ev['bands'].values()))[b]['n']})"
                                       for b in bands) + " | balanced |",
              "|---|" + "---|" * (len(bands) + 1)]
    for name, table in ev["bands"].items():
        lines.append(f"| {titles[name]} | " + " | ".join(
            f"{_num(table[b]['mae'])} ({_num(table[b]['mean_error'], 1)})" for b in bands)
            + f" | {_num(ev.get('balanced', {}).get(name))} |")
    if ev.get("reliable"):
        rel = ev["reliable"]
        lines += ["", "Share of test subjects whose age prediction is flagged reliable "
                  "(`age_reliable`), and flagged out of distribution, by true-age band:", "",
                  "| flag | all | " + " | ".join(bands) + " |", "|---|---|" + "---|" * len(bands),
                  "| age_reliable | " + " | ".join(_num(rel[k]["share"]) for k in ("all", *bands))
                  + " |",
                  "| out_of_distribution | " + " | ".join(
                      _num(ev["ood"]["bands"][k]["share"]) for k in ("all", *bands)) + " |"]
    for target, levels in ev.get("coverage", {}).items():
        label = TARGET_LABELS[target]
        lines += ["", f"Interval coverage of the shipped recipe, {label} (share of true values "
                  "inside the calibrated interval; median width):", "",
                  "| nominal | all | " + " | ".join(bands) + " |",
                  "|---|---|" + "---|" * len(bands)]
        for level, cov in levels.items():
            cells = [f"{_num(cov[k]['coverage'])} (w {_num(cov[k]['median_width'], 1)}, "
                     f"n={cov[k]['n']})" for k in ("all", *bands)]
            lines.append(f"| {level} % | " + " | ".join(cells) + " |")
    if "ood" in ev:
        lines += ["", f"Out-of-distribution flags raised on test subjects: "
                  f"{ev['ood']['n_flagged']} of {ev['ood']['n']}."]
    choices = [r["recipe_choices"]["age"] for r in block["folds"].get("recipe", [])
               if "age" in r.get("recipe_choices", {})]
    if choices:
        weights = [c["network_weight"] for c in choices]
        transforms = Counter(str(c["transform"]) for c in choices)
        lines += ["", "The recipe's choices for age on its inner site folds: stacking weight of "
                  f"the network members {min(weights):g}–{max(weights):g} (median "
                  f"{float(np.median(weights)):g}; 0 in {sum(w == 0 for w in weights)} of "
                  f"{len(weights)} folds); transform " + ", ".join(
                      f"{t} in {n} of {len(choices)} folds" for t, n in transforms.items())
                  + "; linear member trained with sub-segment connectivity added in "
                  f"{sum(c.get('segments', 0) > 0 for c in choices)} of {len(choices)} folds."]
    if block["protocol"] == PROTOCOLS["loso"]:
        models = [m for m in ("krr", "ridge", "recipe", "recipe-linear", "recipe-network")
                  if m in ev["sites"]]
        lines += ["", "Age MAE (mean error) per held-out site:", "",
                  "| site | n | " + " | ".join(titles[m] for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for site in ev["sites"][models[0]]:
            cells = [f"{_num(ev['sites'][m][site]['mae'])} "
                     f"({_num(ev['sites'][m][site]['mean_error'], 1)})" for m in models]
            lines.append(f"| {site} | {ev['sites'][models[0]][site]['n']} | "
                         + " | ".join(cells) + " |")
    lines += ["", "PIQ (fluid-intelligence proxy), pooled Pearson r with 95 % bootstrap CIs:", "",
              "| model | r | CI (subjects) | CI (sites) |", "|---|---|---|---|"]
    for name, pr in ev["piq_r"].items():
        if pr["r"] is not None:
            lines.append(f"| {titles[name]} | {pr['r']:.2f} | {_ci(pr['ci95_subjects'])} | "
                         f"{_ci(pr['ci95_sites'])} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable result page (``accuracy.md``)."""
    meta = report["meta"]
    lines = [
        "# brainfm accuracy on ABIDE I (PCP, CC200)", "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; git commit `{meta['git_commit']}`; brainfm "
        f"{meta['brainfm_version']}, torch {meta['torch_version']}",
        f"- Machine: {meta['machine']}; {meta['jobs']} job(s) × {meta['threads']} thread(s); "
        f"wall time {meta['wall_seconds'] / 60:.1f} min"
        + (f" ({meta['n_trainings_cached']} of {meta['n_trainings']} fold trainings reused from "
           "an earlier run of the same command and configuration, see `--work-dir`)"
           if meta.get("n_trainings_cached") else ""),
        f"- Cohort: {meta['n_subjects']} subjects, {meta['n_sites']} sites; PIQ known for "
        f"{meta['n_piq']}. brainfm configuration: `{meta['config']}` "
        f"({meta['pretrain_epochs']} pretraining epochs, up to {meta['options']['epochs']} "
        "fine-tuning epochs with early stopping on held-out training subjects: whole inner "
        "sites for the recipe's members, a random 15 % for single networks).",
        "",
        "Values are mean ± SD across folds (Pearson r and R² per fold; LOSO folds are single "
        "sites, some small, so their per-fold r is noisy: the pooled column pools every test "
        "prediction).", "",
    ]
    for protocol, block in report["protocols"].items():
        lines += [f"## {PROTOCOL_TITLES[protocol]} ({block['n_folds']} folds)", "",
                  "| model | age MAE (y) | age r | age R² | PIQ MAE | PIQ r | PIQ R² "
                  "| pooled age MAE / r | pooled PIQ MAE / r |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, summary in block["summary"].items():
            a, q = summary["age"], summary["fluid_intelligence"]
            lines.append(
                f"| {block['titles'][name]} | {_fmt(a['mae'])} | {_fmt(a['r'])} | "
                f"{_fmt(a['r2'])} | {_fmt(q['mae'])} | {_fmt(q['r'])} | {_fmt(q['r2'])} | "
                f"{_num(a['pooled']['mae'])} / {_num(a['pooled']['r'])} | "
                f"{_num(q['pooled']['mae'])} / {_num(q['pooled']['r'])} |")
        lines += render_evaluation(block)
        lines += ["", "Brain-age gap (predicted − true age) correlation with age, before and "
                  "after a linear bias correction fitted on held-out predictions of the training "
                  "subjects:", "", "| model | r(gap, age) | corrected |", "|---|---|---|"]
        for name, summary in block["summary"].items():
            if name == "mean":
                continue
            lines.append(f"| {block['titles'][name]} | {_fmt(summary['age_gap_r'])} | "
                         f"{_fmt(summary['age_gap_r_corrected'])} |")
        lines.append("")
    lines += ["Per-fold numbers and every test prediction: `accuracy.json`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="ABIDE PCP folder (rois_cc200.tar.xz or rois_cc200/, "
                   "and Phenotypic_V1_0b_preprocessed1.csv)")
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="where accuracy.md and accuracy.json go (default: benchmarks/results)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="brainfm training options, YAML (default: the recommended configuration, "
                   "brainfm/data/configs/brainfm.yaml)")
    p.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["recipe"],
                   help="brainfm variants in 5-fold CV (default: recipe, what ships; the "
                   "single-network ablations are full, no-pretrain, random-mask, mlp, meanpool)")
    p.add_argument("--loso-variants", nargs="*", choices=list(VARIANTS), default=["recipe"],
                   help="brainfm variants in leave-site-out (default: recipe; each adds 17 "
                   "trainings)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="LMAE epochs per fold (default: the config's pretrain_epochs)")
    p.add_argument("--jobs", type=int, default=1, help="trainings run in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and inner splits")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "brainfm" /
                   "abide-pcp-cc200", help="imported derivatives (made once)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="finished trainings, for resuming (default: CACHE-runs)")
    p.add_argument("--baselines-only", action="store_true", help="skip brainfm")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.perf_counter()
    commit = git_commit()  # the code that runs, not the code at the end of a long run
    opts = load_options(args.config)
    opts.seed = args.seed
    opts.threads = args.threads
    pretrain_epochs = args.pretrain_epochs if args.pretrain_epochs is not None else (
        opts.epochs if opts.pretrain_epochs is None else int(opts.pretrain_epochs))
    deriv = prepare_cache(args.data, args.cache)
    cohort = load_cohort(deriv, opts)
    folds = {p: outer_folds(cohort, p, args.seed) for p in args.protocols}
    variants = {"kfold": [] if args.baselines_only else args.variants,
                "loso": [] if args.baselines_only else args.loso_variants}
    tasks = plan_tasks(folds, variants, opts, pretrain_epochs)
    work_dir = args.work_dir or args.cache.with_name(args.cache.name + "-runs")
    n_cached = sum((work_dir / f"{t['key']}.json").is_file() for t in tasks)
    results = run_tasks(tasks, deriv, opts, args.jobs, args.threads, work_dir)
    report: dict[str, Any] = {"protocols": {}}
    for protocol, pf in folds.items():
        records = run_baselines(cohort, pf, args.seed)
        records.update(brainfm_records(cohort, pf, tasks, results, protocol))
        titles = {**BASELINE_TITLES, **VARIANT_TITLES}
        block: dict[str, Any] = {
            "protocol": PROTOCOLS[protocol], "n_folds": len(pf), "titles": titles,
            "summary": {name: summarise(cohort, recs) for name, recs in records.items()},
            "folds": records,
            "evaluation": evaluate_block(cohort, records),
        }
        report["protocols"][protocol] = block
    import torch

    from brainfm import __version__

    report["meta"] = {
        "command": "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (
            argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit, "brainfm_version": __version__,
        "n_trainings": len(tasks), "n_trainings_cached": n_cached,
        "torch_version": torch.__version__, "machine": machine(), "jobs": args.jobs,
        "threads": args.threads, "wall_seconds": time.perf_counter() - t0,
        "n_subjects": len(cohort.sessions), "n_sites": len(set(cohort.sites.tolist())),
        "n_piq": int(np.isfinite(cohort.targets[:, 1]).sum()),
        "config": os.path.relpath(args.config, HERE.parent), "options": opts.to_dict(),
        "pretrain_epochs": pretrain_epochs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "accuracy.json", json.dumps(report, indent=1))
    write_text_atomic(args.out / "accuracy.md", render_markdown(report))
    LOGGER.info("wrote %s", args.out / "accuracy.md")
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
