"""Fit the shipped recipe: site-bagged BrainFM members stacked with linear members.

The recipe (chosen and measured on leave-site-out, ``benchmarks/accuracy.py``):

1. Inner folds are whole sites (:func:`inner_site_folds`), so that every held-out number below
   is an out-of-site number, as a new lab's data will be.
2. Network members: one :class:`~brainfm.models.model.BrainFM` per inner fold, fine-tuned on
   the other folds from a shared pretrained LMAE encoder, early-stopped on a few whole sites of
   its own training folds (:func:`early_stopping_sites`), for the transformed targets (log
   age). Each member then predicts its held-out fold, which it never saw, so every training
   subject gets one unbiased out-of-site network prediction.
3. Linear members: ridge on normalised Fisher-z edges (kernel ridge with a correlation kernel)
   per target, penalty, target transform and augmentation (each training subject adds the
   connectivity of the two halves of its series as extra rows) chosen on the same inner folds;
   their out-of-fold predictions too.
4. Stacking: per target the weight of the network mean against the linear member that
   minimises the out-of-fold MAE (raw units) on a grid of 0, 0.05, ..., 1.
5. Recalibration: the out-of-fold slope/intercept inversion ``(p - b) / a``
   (:func:`~brainfm.models.calibration.fit_recalibration`), kept where its cross-fitted
   criterion is lower than without it.
6. Intervals: asymmetric split-conformal offsets of the out-of-fold residuals (transformed
   space) per bin of the predicted value (Mondrian), for the 50 % and 90 % intervals; pooled
   symmetric half-widths are kept beside them for reference.
7. Reliable range: the bins of predicted values in which the out-of-fold predictions are
   unbiased within a stated tolerance (:func:`~brainfm.models.calibration.fit_reliable_range`).
8. Out-of-distribution: the 1st percentile of the training subjects' similarity to the cohort's
   mean connectivity pattern, and the training range of each target.

Every choice above (penalty, transform, augmentation, stacking weight, recalibration) is made on
the pooled out-of-fold MAE by default; ``RecipeOptions(choice_criterion="balanced")`` makes it on
the age-balanced MAE (:mod:`brainfm.models.age_bands`: the mean of the per-band MAEs). The
balanced criterion was measured and lost on both MAEs on ABIDE leaving sites out
(``benchmarks/choice_criterion.py``, docs/model_card.md). The
conformal intervals (6) always weight each age band equally, so that they cover in every band.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainfm.errors import InputError, UsageError
from brainfm.models.age_bands import DEFAULT_EDGES, balanced_mae, balanced_weights, band_table
from brainfm.models.baselines import (
    connectivity_features,
    correlation_features,
)
from brainfm.models.calibration import (
    conformal_halfwidth,
    fit_mondrian_intervals,
    fit_recalibration,
    fit_reliable_range,
    interval_offsets,
)
from brainfm.models.ensemble import (
    INTERVAL_LEVELS,
    TRANSFORMS,
    BrainFMEnsemble,
    member_targets,
    similarity_to_center,
)
from brainfm.models.linear_member import (
    SEGMENT_CANDIDATES,
    TRANSFORM_CANDIDATES,
    choose_linear,
    segment_edges,
    uniform_weights,
)
from brainfm.models.loop import regression_metrics
from brainfm.models.model import BrainFM, BrainFMConfig
from brainfm.models.model_card import CardInfo, complete_card, coverage_of, oof_correlation_ci
from brainfm.models.options import TrainOptions
from brainfm.models.runs import base_card, load_cohort, participants_path
from brainfm.models.runtime import DistContext, setup
from brainfm.models.sessions import SessionData
from brainfm.models.targets import TargetSpec
from brainfm.models.train import finetune, predict_sessions, prediction_card, pretrain

LOGGER = logging.getLogger(__name__)
WEIGHT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())


@dataclass
class RecipeOptions:
    """Choices of the recipe (the defaults are what ships).

    Attributes
    ----------
    n_members : int
        Network members = inner site folds.
    network_targets : tuple of str
        Targets the networks predict (the others are linear only).
    transforms : dict, optional
        Fixed target transform by name (``log`` or ``identity``). A target not named is given
        the transform of :data:`~brainfm.models.linear_member.TRANSFORM_CANDIDATES` whose
        linear member has the lowest held-out-site MAE on the inner folds
        (:func:`~brainfm.models.linear_member.choose_linear`).
    segment_candidates : tuple of int
        Augmentations of the linear members' training rows to choose from on the inner folds
        (:data:`~brainfm.models.linear_member.SEGMENT_CANDIDATES`); ``(0,)`` turns augmentation off.
    ood_quantile : float
        Training quantile of the similarity below which a subject is flagged.
    balance_by : str or None
        Target whose bands (``band_edges``) split the intervals and the reliable range and
        weight the balanced criterion; None, or a cohort without that target: no bands.
    band_edges : tuple of float
        Inner edges of the bands (years), recorded on the card.
    choice_criterion : {"pooled", "balanced"}
        What the penalty, transform, augmentation, stacking weight and recalibration are
        chosen on: the pooled out-of-fold MAE, or the mean of its per-band MAEs. Pooled by
        default: replayed in ABIDE's leave-site-out folds the balanced choice was worse on
        both the pooled (3.68 vs 3.45 y) and the balanced MAE (6.04 vs 5.95 y)
        (``benchmarks/choice_criterion.py``).
    balanced_intervals : bool
        Weight the conformal residuals by the balanced weights (coverage for every band).
    recalibration_candidates : tuple of bool
        Whether the slope/intercept inversion may be chosen (``(False,)``: never).
    """

    n_members: int = 3
    network_targets: tuple[str, ...] = ("age",)
    transforms: dict[str, str] | None = None
    segment_candidates: tuple[int, ...] = SEGMENT_CANDIDATES
    ood_quantile: float = 0.01
    balance_by: str | None = "age"
    band_edges: tuple[float, ...] = DEFAULT_EDGES
    choice_criterion: str = "pooled"
    balanced_intervals: bool = True
    recalibration_candidates: tuple[bool, ...] = (False, True)


def inner_site_folds(sites: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Inner folds of whole sites (shuffled K-fold when there are fewer sites than folds).

    Parameters
    ----------
    sites : ndarray of str
        Site of each subject.
    n_folds : int
        Folds.
    seed : int
        Seed of the fallback shuffle.

    Returns
    -------
    list of ndarray of int
        Held-out positions of each fold (a partition of ``range(len(sites))``).
    """
    from sklearn.model_selection import GroupKFold, KFold

    sites = np.asarray(sites).astype(str)
    if len(set(sites.tolist())) >= n_folds:
        split = GroupKFold(n_splits=n_folds).split(sites, groups=sites)
    else:
        LOGGER.warning("fewer than %d sites: inner folds are random subjects, so intervals "
                       "reflect within-site error only", n_folds)
        split = KFold(n_folds, shuffle=True, random_state=seed).split(sites)
    return [np.sort(test) for _, test in split]


def early_stopping_sites(sites: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of the whole sites (about ``fraction`` of the subjects) a member stops on.

    A member's early stopping must not see the sites whose predictions fit the stacking
    weight, or those predictions are optimistic and the weight too high (docs/training.md
    §4b). With a single site, a random ``fraction`` of its subjects.

    Parameters
    ----------
    sites : ndarray of str
        Site of each training subject of the member.
    fraction : float
        Share of subjects to stop on (``TrainOptions.val_fraction``).
    seed : int
        Seed of the split.

    Returns
    -------
    ndarray of int
        Sorted positions into ``sites``.
    """
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit

    sites = np.asarray(sites).astype(str)
    fraction = min(max(float(fraction), 0.05), 0.5)
    if len(set(sites.tolist())) >= 2:
        split = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(
            sites, groups=sites)
    else:
        split = ShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(sites)
    _, stop = next(split)
    return np.sort(stop)


def _stack_weight(y: np.ndarray, network: np.ndarray, linear: np.ndarray, inverse: Any,
                  weights: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
    weights = uniform_weights(y.size) if weights is None else weights
    scores = {}
    for w in WEIGHT_GRID:
        scores[f"{w:g}"] = float(np.abs(inverse(w * network + (1 - w) * linear) - y) @ weights)
    best = min(WEIGHT_GRID, key=lambda w: (scores[f"{w:g}"], -w))
    return float(best), scores


def _calibrate_target(truth: np.ndarray, stacked_raw: np.ndarray, transform: str,
                      weights: np.ndarray, folds: list[np.ndarray], band_edges: Sequence[float],
                      recalibrate: Sequence[bool], interval_weights: np.ndarray | None
                      ) -> dict[str, Any]:
    """Recalibration, Mondrian intervals and reliable range of one target (card fields).

    Returns the target's card fields ``recalibration``, ``interval_bins``, ``reliable``,
    ``training_range`` and ``band_edges``, plus ``oof`` (the final out-of-fold predictions:
    cross-fitted recalibrated values where recalibration is chosen) and ``scores`` (the
    criterion with and without recalibration).
    """
    forward, _ = TRANSFORMS[transform]
    low, high = float(truth.min()), float(truth.max())
    final, recalibration = stacked_raw, None
    scores = {"none": float(np.abs(stacked_raw - truth) @ weights)}
    if True in recalibrate:
        fitted, crossed = fit_recalibration(truth, stacked_raw, weights, folds, (low, high))
        scores["slope inversion (cross-fitted)"] = float(np.abs(crossed - truth) @ weights)
        if fitted is not None and (scores["slope inversion (cross-fitted)"] < scores["none"]
                                   or False not in recalibrate):
            final, recalibration = crossed, fitted
    residual = forward(truth) - forward(final)  # in the interval space
    bins = fit_mondrian_intervals(final, residual, band_edges, INTERVAL_LEVELS,
                                  weights=interval_weights)
    offsets = np.array([interval_offsets(bins, p, 0.9) for p in final])
    inside = (residual >= offsets[:, 0]) & (residual <= offsets[:, 1])
    reliable = fit_reliable_range(truth, final, band_edges, float(truth.mean()), inside)
    return {"recalibration": recalibration, "interval_bins": bins, "reliable": reliable,
            "training_range": [low, high], "band_edges": list(band_edges),
            "oof": final, "scores": scores,
            "inside_90": _cross_fitted_inside(final, residual, folds, band_edges,
                                              interval_weights)}


def _cross_fitted_inside(final: np.ndarray, residual: np.ndarray, folds: list[np.ndarray],
                         band_edges: Sequence[float], weights: np.ndarray | None) -> np.ndarray:
    """Per subject, 1.0 when its residual lies inside the 90 % interval fitted on the other
    inner folds (0.0 outside): the out-of-site coverage of the intervals, not their in-sample
    one. The card's intervals are fitted on all folds; this only measures them."""
    inside = np.full(final.size, np.nan)
    for held in folds:
        rest = np.setdiff1d(np.arange(final.size), held)
        if rest.size == 0 or held.size == 0:
            continue
        bins = fit_mondrian_intervals(final[rest], residual[rest], band_edges, (0.9,),
                                      weights=None if weights is None else weights[rest])
        offsets = np.array([interval_offsets(bins, p, 0.9) for p in final[held]])
        inside[held] = ((residual[held] >= offsets[:, 0])
                        & (residual[held] <= offsets[:, 1])).astype(float)
    return inside


def fit_ensemble(
    sessions: Sequence[SessionData],
    y_raw: np.ndarray,
    specs: Sequence[TargetSpec],
    sites: np.ndarray,
    opts: TrainOptions,
    ctx: DistContext,
    init: BrainFM | None = None,
    recipe: RecipeOptions | None = None,
    label: str = "ensemble",
) -> tuple[BrainFMEnsemble, dict[str, Any]]:
    """Fit the recipe on training sessions (one per subject).

    Parameters
    ----------
    sessions : sequence of SessionData
        Training sessions.
    y_raw : ndarray of shape (n, K)
        Raw targets (NaN = missing).
    specs : sequence of TargetSpec
        The K targets.
    sites : ndarray of str
        Site of each session (the inner folds).
    opts : TrainOptions
        Fine-tuning options of the members (``seed`` + m for member m).
    ctx : DistContext
        Device.
    init : BrainFM, optional
        Pretrained LMAE encoder shared by the members.
    recipe : RecipeOptions, optional
        Recipe choices (default: what ships).
    label : str, optional
        Log label.

    Returns
    -------
    model : BrainFMEnsemble
        The fitted ensemble (eval mode).
    info : dict
        ``oof`` (per target: participant ids, truth, network, linear and stacked out-of-fold
        predictions in raw units), ``members`` (best epochs, seconds), ``linear`` (penalty
        scores), ``stacking`` (weight scores), ``seconds``.
    """
    recipe = recipe or RecipeOptions()
    y_raw = np.asarray(y_raw, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    pids = [s.participant_id for s in sessions]
    n = len(sessions)
    if len(set(pids)) != n:
        raise InputError(f"{label}: the recipe takes one session per participant")
    if n < 2 * recipe.n_members:
        raise InputError(f"{label}: {n} subjects are too few for {recipe.n_members} members")
    folds = inner_site_folds(sites, recipe.n_members, opts.seed)
    edges = correlation_features(connectivity_features([s.conn for s in sessions]))
    parts = {count: segment_edges(sessions, count) for count in recipe.segment_candidates}
    names = [s.name for s in specs]
    net_names = [nm for nm in names if nm in recipe.network_targets]
    net_cols = [names.index(nm) for nm in net_names]
    # linear members first: they choose each target's transform, which the networks then learn
    fixed = recipe.transforms or {}
    balance = names.index(recipe.balance_by) if recipe.balance_by in names else None
    chosen, augmented, linear_fits, subjects, linear_scores = {}, {}, {}, {}, {}
    target_folds, criterion_weights, band_weights = {}, {}, {}
    for k, name in enumerate(names):
        ok = np.flatnonzero(np.isfinite(y_raw[:, k]))
        if ok.size < 2 * recipe.n_members:
            raise InputError(f"{label}: only {ok.size} subjects have a value for {name}")
        target_folds[name] = inner_site_folds(sites[ok], recipe.n_members, opts.seed)
        band_weights[name] = (uniform_weights(ok.size) if balance is None else
                              balanced_weights(y_raw[ok, balance], recipe.band_edges))
        criterion_weights[name] = (band_weights[name] if recipe.choice_criterion == "balanced"
                                   else uniform_weights(ok.size))
        candidates = (fixed[name],) if name in fixed else TRANSFORM_CANDIDATES
        chosen[name], augmented[name], linear_fits[name], linear_scores[name] = choose_linear(
            edges[ok], y_raw[ok, k], target_folds[name], candidates,
            {count: p[ok] for count, p in parts.items()}, criterion_weights[name])
        subjects[name] = ok
    y_t = np.column_stack([TRANSFORMS[chosen[nm]][0](y_raw[:, k]) for k, nm in enumerate(names)])
    members, member_specs, member_info = [], [], []
    net_oof = np.full((n, len(net_names)), np.nan)
    net_specs = [TargetSpec(nm, nm) for nm in net_names]
    for m, held in enumerate(folds if net_names else []):
        m_opts = TrainOptions(**opts.to_dict())
        m_opts.seed = opts.seed + m
        rest = np.setdiff1d(np.arange(n), held)
        stop = early_stopping_sites(sites[rest], opts.val_fraction, m_opts.seed)
        model, scaler, info = finetune(
            [sessions[i] for i in rest], y_t[np.ix_(rest, net_cols)], net_specs, m_opts, ctx,
            init=init, label=f"{label} member {m + 1}/{len(folds)}",
            val_participants={pids[i] for i in rest[stop]})
        # the held-out sites were seen neither in training nor in early stopping, so these
        # predictions are as unbiased as a new site's (the stacking weight is fitted on them)
        card = prediction_card(scaler, net_specs, model.config, m_opts)
        net_oof[held] = predict_sessions(model, card, [sessions[i] for i in held],
                                           m_opts.stride, ctx.device)[:, :len(net_names)]
        members.append(model)
        member_specs.append({
            "config": model.config.to_dict(),
            "targets": member_targets(net_names, scaler.mean, scaler.std),
            "held_out_sites": sorted(set(sites[held].tolist())),
            "early_stopping_sites": sorted(set(sites[rest[stop]].tolist())),
            "best_epoch": int(info["metrics"]["best_epoch"]),
            "seed": m_opts.seed,
        })
        member_info.append({"best_epoch": int(info["metrics"]["best_epoch"]),
                            "seconds": round(info["seconds"], 1)})
    target_specs, oof_out, stacking = [], {}, {}
    for k, spec in enumerate(specs):
        name = spec.name
        _, inverse = TRANSFORMS[chosen[name]]
        ok, lin, weights = subjects[name], linear_fits[name], criterion_weights[name]
        network = net_oof[ok, net_names.index(name)] if name in net_names else None
        if network is not None:
            weight, scores = _stack_weight(y_raw[ok, k], network, lin["oof"], inverse, weights)
            stacked = weight * network + (1 - weight) * lin["oof"]
        else:
            weight, scores, stacked = 0.0, {}, lin["oof"]
        calibrated = _calibrate_target(
            y_raw[ok, k], inverse(stacked), chosen[name], weights, target_folds[name],
            recipe.band_edges if k == balance else (), recipe.recalibration_candidates,
            band_weights[name] if recipe.balanced_intervals else None)
        stacking[name] = {"network_weight": weight, "oof_mae_by_weight": scores,
                          "transform": chosen[name], "segments": augmented[name],
                          "oof_mae_by_linear_candidate": linear_scores[name],
                          "criterion": f"{names[balance]}-balanced MAE (mean over bands)"
                          if balance is not None and recipe.choice_criterion == "balanced"
                          else "pooled MAE",
                          "oof_by_recalibration": calibrated.pop("scores")}
        residual = y_t[ok, k] - stacked
        halves = {f"{lv:g}": conformal_halfwidth(residual, lv) for lv in INTERVAL_LEVELS}
        final = calibrated.pop("oof")
        inside_90 = calibrated.pop("inside_90")
        target_specs.append({
            "name": name, "column": spec.column, "transform": chosen[name],
            "network_weight": weight, "interval_halfwidth": halves,
            "interval_space": chosen[name], **calibrated,
            "linear": {"alpha": lin["alpha"], "features": "Fisher-z edges, each subject's "
                       "vector centred and scaled to unit norm (correlation kernel)",
                       "training_segments": augmented[name]},
            "n_subjects": int(ok.size),
        })
        oof_out[name] = {
            "participant_id": [pids[i] for i in ok], "true": y_raw[ok, k].tolist(),
            "linear": inverse(lin["oof"]).tolist(),
            "network": None if network is None else inverse(network).tolist(),
            "stacked": inverse(stacked).tolist(), "final": final.tolist(),
            "ages": y_raw[ok, balance].tolist() if balance is not None else None,
            "inside_90": inside_90.tolist(), "site": sites[ok].tolist(),
        }
    similarity = similarity_to_center(edges, linear_fits[names[0]]["center"])
    spec = {
        "members": member_specs,
        "targets": target_specs,
        "n_edges": int(edges.shape[1]),
        "inner_folds": [sorted(set(sites[f].tolist())) for f in folds],
        "ood": {
            "similarity_threshold": float(np.quantile(similarity, recipe.ood_quantile)),
            "similarity_quantile": recipe.ood_quantile,
            "target_range": {s.name: [float(np.nanmin(y_raw[:, k])), float(np.nanmax(y_raw[:, k]))]
                             for k, s in enumerate(specs) if s.name in net_names},
        },
    }
    ensemble = BrainFMEnsemble(spec)
    for m, model in enumerate(members):
        ensemble.members[m].load_state_dict(model.state_dict())
    for name, lin in linear_fits.items():
        ensemble.linear[name].set(lin["weight"], lin["center"], lin["intercept"])
    ensemble.eval()
    return ensemble, {
        "oof": oof_out, "members": member_info, "stacking": stacking,
        "linear": {nm: {"alpha": f["alpha"], "oof_mae_by_alpha": f["scores"]}
                   for nm, f in linear_fits.items()},
    }


def ensemble_card(model: BrainFMEnsemble, sessions: Sequence[SessionData], y_raw: np.ndarray,
                  specs: Sequence[TargetSpec], info: dict[str, Any],
                  deriv_dirs: Sequence[Path | str], opts: TrainOptions) -> dict[str, Any]:
    """Model card of a fitted ensemble (before :func:`~brainfm.models.checkpoint.save_checkpoint`).

    The card's ``targets`` carry the raw training mean and std of each target (for reference and
    for readers of single-network cards); ``metrics.inner_out_of_site`` the held-out-site
    accuracy on the training cohort that the stacking and the calibration were fitted on.
    """
    card = base_card("ensemble", sessions, deriv_dirs, opts, model.members[0].config
                       if len(model.members) else BrainFMConfig(n_rois=sessions[0].n_rois))
    card["targets"] = [
        {"name": s.name, "column": s.column, "mean": float(np.nanmean(y_raw[:, k])),
         "std": float(np.nanstd(y_raw[:, k]))} for k, s in enumerate(specs)]
    inner: dict[str, Any] = {}
    for name, oof in info["oof"].items():
        y = np.asarray(oof["true"])
        ages = None if oof.get("ages") is None else np.asarray(oof["ages"])
        parts = {part: np.asarray(oof[part]) for part in ("final", "stacked", "linear", "network")
                 if oof.get(part) is not None}
        parts["training_mean"] = np.full(y.size, y.mean())
        inner[name] = {}
        for part, pred in parts.items():
            inner[name][part] = regression_metrics(y, pred)
            if ages is not None:  # per band of true age, and their mean
                inner[name][part]["balanced_mae"] = balanced_mae(y, pred, ages)
                inner[name][part]["bands"] = band_table(y, pred, ages)
    card["metrics"] = {"inner_out_of_site": inner, "stacking": info["stacking"]}
    card["training"].update({"n_subjects": len(sessions), "members": info["members"],
                             "linear": info["linear"]})
    return card


def run_ensemble(
    deriv_dirs: Sequence[Path | str],
    out_dir: Path | str,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    pretrain_epochs: int | None = None,
    site_column: str = "site",
    participants_tsv: Path | str | None = None,
    exclude: Sequence[str] = (),
    recipe: RecipeOptions | None = None,
    card_info: CardInfo | None = None,
) -> Path:
    """``brainfm-train ensemble``: pretrain, fit the recipe on a cohort, write the model folder.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders with ROI time series (one session per participant).
    out_dir : path
        Model folder to write.
    specs : sequence of TargetSpec
        Targets (``age`` gets network members and a log transform by default).
    opts : TrainOptions
        Training options.
    pretrain_epochs : int, optional
        LMAE epochs (default ``opts.pretrain_epochs``, else ``opts.epochs``; 0 skips).
    site_column : str, optional
        ``participants.tsv`` column of the acquisition site (the inner folds).
    participants_tsv : path, optional
        Targets table (default: first folder's ``participants.tsv``).
    exclude : sequence of str, optional
        Participants to leave out of training (e.g. held out for a demo).
    recipe : RecipeOptions, optional
        Recipe choices.
    card_info : CardInfo, optional
        Name, licence, terms and notes of an own model: with it (``brainfm-train ensemble``
        always passes one) the card also gets ``metrics.leave_site_out_summary`` from the
        out-of-fold predictions and a note for each target not better than the training mean
        (:func:`~brainfm.models.model_card.complete_card`). Without it the card is left for the
        caller to complete (``benchmarks/build_default_model.py`` does, from the outer CV).

    Returns
    -------
    Path
        The model folder.
    """
    from brainfm.models.checkpoint import save_checkpoint
    from brainfm.models.cohort_checks import check_sites, training_targets
    from brainfm.models.targets import load_participants, resolve_column

    if not specs:
        raise UsageError("give at least one --target (e.g. --target age)")
    ctx = setup(opts)
    ptsv = participants_path(deriv_dirs, participants_tsv)
    frame = load_participants(ptsv)
    for s in specs:
        resolve_column(frame, s.column, str(ptsv))
    site_col = resolve_column(frame, site_column, str(ptsv))
    skip = {str(p).removeprefix("sub-") for p in exclude}
    sessions = [s for s in load_cohort(deriv_dirs, opts) if s.participant_id not in skip]
    pids = [s.participant_id for s in sessions]
    if len(set(pids)) != len(pids):
        raise UsageError("the ensemble recipe takes one session per participant; pass "
                         "derivatives with one session each")
    y = training_targets(frame, pids, specs, str(ptsv))
    site_of = frame[site_col].reindex(pids)  # NaN for a participant not in the file
    check_sites(site_of[np.isfinite(y).any(axis=1)].tolist(), site_col, str(ptsv))
    sites = site_of.astype(str).to_numpy()
    epochs = pretrain_epochs if pretrain_epochs is not None else (
        opts.epochs if opts.pretrain_epochs is None else int(opts.pretrain_epochs))
    init = None
    if epochs > 0:
        init, _ = pretrain(sessions, opts, ctx, epochs=epochs, label="ensemble pretrain")
    model, info = fit_ensemble(sessions, y, specs, sites, opts, ctx, init=init, recipe=recipe)
    card = ensemble_card(model, sessions, y, specs, info, deriv_dirs, opts)
    card["training"].update({"participants_tsv": str(ptsv), "site_column": site_col,
                             "pretrain_epochs": epochs, "excluded_participants": sorted(skip)})
    if card_info is not None:
        oofs = info["oof"]
        complete_card(card, card_info,
                      {name: coverage_of(oof["inside_90"]) for name, oof in oofs.items()},
                      model.spec["inner_folds"],
                      {name: oof_correlation_ci(oof["true"], oof["final"], oof["site"])
                       for name, oof in oofs.items()})
    for name, parts in card["metrics"]["inner_out_of_site"].items():
        LOGGER.info("held-out-site %s: MAE %.3f (linear %.3f, training mean %.3f)",
                    name, parts["final"]["mae"], parts["linear"]["mae"],
                    parts["training_mean"]["mae"])
    path = save_checkpoint(Path(out_dir), model, card)
    LOGGER.info("ensemble written to %s", path)
    return Path(path)
