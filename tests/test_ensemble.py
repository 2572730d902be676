"""Tests of the shipped recipe: primal ridge, site folds, conformal intervals, the ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from toy_cohort import ROIS, TINY, make_toy_cohort

from brainfm.errors import InputError
from brainfm.models import linear_member as L
from brainfm.models import stacking as S
from brainfm.models.baselines import (
    correlation_features,
    fit_primal_ridge,
    kernel_ridge_predict,
    subject_kernel,
)
from brainfm.models.calibration import apply_recalibration, conformal_halfwidth
from brainfm.models.checkpoint import CheckpointError, load_checkpoint
from brainfm.models.cli import main
from brainfm.models.ensemble import INTERVAL_LEVELS, BrainFMEnsemble, interval_columns
from brainfm.models.options import TrainOptions
from brainfm.models.predict import predict_subject
from brainfm.models.runs import load_cohort
from brainfm.models.runtime import setup
from brainfm.models.targets import TargetSpec, load_participants, target_matrix

TARGETS = [TargetSpec("age", "age"), TargetSpec("score", "score")]


def test_primal_ridge_equals_kernel_ridge_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 30))
    y = x[:, 0] * 2 + rng.normal(size=40)
    train, test = np.arange(30), np.arange(30, 40)
    kernel = subject_kernel(x, "krr")
    dual = kernel_ridge_predict(kernel, y, train, test, [0.1])[0]
    z = correlation_features(x)
    weight, center, intercept = fit_primal_ridge(z[train], y[train], 0.1)
    primal = (z[test] - center) @ weight + intercept
    np.testing.assert_allclose(primal, dual, rtol=1e-9, atol=1e-9)
    # and both equal scikit-learn's ridge with the same (absolute) penalty on the centred data
    from sklearn.linear_model import Ridge

    zc = z[train] - center
    alpha_abs = 0.1 * np.mean(np.sum(zc * zc, axis=1))
    ref = Ridge(alpha=alpha_abs).fit(z[train], y[train]).predict(z[test])
    np.testing.assert_allclose(primal, ref, rtol=1e-8, atol=1e-8)


def test_inner_site_folds_hold_whole_sites() -> None:
    sites = np.array(["A"] * 5 + ["B"] * 7 + ["C"] * 3 + ["D"] * 6)
    folds = S.inner_site_folds(sites, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(sites.size))
    held = [set(sites[f].tolist()) for f in folds]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not held[a] & held[b]  # a site is in one fold only
    # a single site falls back to random folds (and says so)
    assert len(S.inner_site_folds(np.array(["A"] * 9), 3, seed=0)) == 3


def test_early_stopping_sites_are_whole_sites_of_the_training_folds() -> None:
    sites = np.repeat([f"S{i}" for i in range(10)], 20)
    stop = S.early_stopping_sites(sites, 0.15, seed=0)
    chosen = set(sites[stop].tolist())
    # whole sites only: every subject of a chosen site, no subject of another
    assert np.array_equal(stop, np.flatnonzero(np.isin(sites, sorted(chosen))))
    assert 1 <= len(chosen) <= 3
    # one site: a random share of its subjects (no whole site can be spared)
    one = S.early_stopping_sites(np.array(["A"] * 40), 0.15, seed=0)
    assert one.size == 6 and len(set(one.tolist())) == 6


def test_conformal_halfwidth_covers_nominally() -> None:
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(200):
        calib = rng.normal(size=50)
        half = conformal_halfwidth(calib, 0.9)
        covered.append(np.mean(np.abs(rng.normal(size=200)) <= half))
    assert 0.88 <= np.mean(covered) <= 0.94  # split conformal: >= 0.9 on average, slightly over
    # finite-sample rule: with 9 residuals the 90 % quantile is the largest
    assert conformal_halfwidth(np.arange(1.0, 10.0), 0.9) == 9.0
    with pytest.raises(InputError):
        conformal_halfwidth(np.array([np.nan]), 0.9)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy-ensemble") / "deriv"
    make_toy_cohort(root, 48, seed=3)
    return root


def _opts(**kw: object) -> TrainOptions:
    base = {"atlas": "Toy", "epochs": 2, "batch_size": 16, "lr": 3e-3, "patience": 50,
            "seed": 0, "threads": 1, "model": dict(TINY)}
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted(toy: Path) -> tuple:
    opts = _opts()
    ctx = setup(opts)
    sessions = load_cohort([toy], opts)
    frame = load_participants(toy / "participants.tsv")
    pids = [s.participant_id for s in sessions]
    y = target_matrix(frame, pids, TARGETS, "participants.tsv")
    sites = frame.loc[pids, "site"].to_numpy()
    model, info = S.fit_ensemble(sessions, y, TARGETS, sites, opts, ctx)
    return model, info, sessions, y, sites, opts


def test_fit_ensemble_members_hold_out_sites(fitted: tuple) -> None:
    model, info, sessions, y, sites, _ = fitted
    spec = model.spec
    assert len(model.members) == 3
    held = [set(m["held_out_sites"]) for m in spec["members"]]
    assert sorted(s for h in held for s in h) == ["S0", "S1", "S2"]
    for member, h in zip(spec["members"], held, strict=True):
        # early stopping on whole sites of the member's own training folds, never the held-out
        stop = set(member["early_stopping_sites"])
        assert stop and not stop & h and stop < {"S0", "S1", "S2"} - h
    # every training subject has one out-of-site prediction of each part
    oof = info["oof"]["age"]
    assert len(oof["participant_id"]) == len(sessions)
    assert np.isfinite(oof["network"]).all() and np.isfinite(oof["linear"]).all()
    # the score target has no network member and only its subjects with a value
    score = next(t for t in spec["targets"] if t["name"] == "score")
    assert score["network_weight"] == 0.0
    assert score["n_subjects"] == int(np.isfinite(y[:, 1]).sum())
    for target in spec["targets"]:
        halves = target["interval_halfwidth"]
        assert 0 < halves["0.5"] <= halves["0.9"]
        assert 0.0 <= target["network_weight"] <= 1.0
    # each target's transform and augmentation are the candidate whose linear member did best
    # on the inner folds
    for target in spec["targets"]:
        choice = info["stacking"][target["name"]]
        scores = choice["oof_mae_by_linear_candidate"]
        assert set(scores) == {L.linear_candidate_name(t, c) for t in L.TRANSFORM_CANDIDATES
                               for c in L.SEGMENT_CANDIDATES}
        best = min(scores, key=scores.get)
        assert best == L.linear_candidate_name(target["transform"], choice["segments"])
        assert target["linear"]["training_segments"] == choice["segments"]


def test_choose_linear_finds_the_scale_of_the_relation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 40))
    sites = np.repeat(np.arange(6), 20)
    folds = S.inner_site_folds(sites, 3, seed=0)
    signal = x[:, 0] - x[:, 1]
    skewed = np.exp(2.5 + 0.6 * signal)  # linear in log: ages 5 to 60
    assert L.choose_linear(x, skewed, folds)[:2] == ("log", 0)
    assert L.choose_linear(x, 30 + 5 * signal, folds)[:2] == ("identity", 0)
    # log is never offered for values that are not all positive
    name, _, _, scores = L.choose_linear(x, 5 * signal, folds)
    assert name == "identity" and set(scores) == {"identity"}


def test_choose_linear_takes_augmentation_only_when_it_helps_held_out_subjects() -> None:
    rng = np.random.default_rng(1)
    n, p = 150, 100
    latent = rng.normal(size=(n, p))  # each subject's brain; the target is linear in it
    y = latent @ rng.normal(size=p)
    x = latent + rng.normal(size=(n, p))  # its whole-session measurement
    folds = S.inner_site_folds(np.repeat(np.arange(6), n // 6), 3, seed=0)
    # two more, independent measurements of the same brains (as the halves of a session are):
    # more rows with the right targets average the measurement noise out of the fit
    views = latent[:, None, :] + rng.normal(size=(n, 2, p))
    name, count, _, scores = L.choose_linear(x, y, folds, ("identity",), {0: None, 2: views})
    assert (name, count) == ("identity", 2)
    assert scores["identity+2 segments"] < scores["identity"]
    # views unrelated to their subject only add noise: whole sessions alone win
    foreign = rng.normal(size=(n, 2, p))
    assert L.choose_linear(x, y, folds, ("identity",), {0: None, 2: foreign})[1] == 0


def test_fit_linear_without_segments_is_site_fold_kernel_ridge() -> None:
    rng = np.random.default_rng(2)
    x = correlation_features(rng.normal(size=(90, 50)))
    y = x[:, 0] * 3 + 0.1 * rng.normal(size=90)
    folds = S.inner_site_folds(np.repeat(np.arange(6), 15), 3, seed=0)
    fit = L.fit_linear(x, y, y, folds, lambda v: v)
    kernel = x @ x.T
    alpha = fit["alpha"]
    for held in folds:  # the reference: kernel ridge on the other folds, in its dual form
        rest = np.setdiff1d(np.arange(90), held)
        ref = kernel_ridge_predict(kernel, y, rest, held, [alpha])[0]
        np.testing.assert_allclose(fit["oof"][held], ref, rtol=1e-8, atol=1e-10)
    weight, center, intercept = fit_primal_ridge(x, y, alpha)
    np.testing.assert_allclose(fit["weight"], weight)


def test_fit_linear_with_segments_trains_each_fold_on_other_subjects_rows_only() -> None:
    rng = np.random.default_rng(3)
    n, p = 90, 50
    x = correlation_features(rng.normal(size=(n, p)))
    y = x[:, 0] * 3 + 0.1 * rng.normal(size=n)
    folds = S.inner_site_folds(np.repeat(np.arange(6), 15), 3, seed=0)
    views = x[:, None, :] + 0.3 * rng.normal(size=(n, 2, p))
    fit = L.fit_linear(x, y, y, folds, lambda v: v, views)
    # reference in primal form: per fold, ridge on every row (whole session and both halves)
    # of the other folds' subjects, predicting the held-out subjects' whole sessions
    for held in folds:
        rest = np.setdiff1d(np.arange(n), held)
        rows = np.concatenate([x[rest], views[rest].reshape(-1, p)])
        targets = np.concatenate([y[rest], np.repeat(y[rest], 2)])
        weight, center, intercept = fit_primal_ridge(rows, targets, fit["alpha"])
        np.testing.assert_allclose(fit["oof"][held], (x[held] - center) @ weight + intercept,
                                   rtol=1e-7, atol=1e-9)
    # the shipped member is refitted on all rows
    weight, _, intercept = fit_primal_ridge(
        np.concatenate([x, views.reshape(-1, p)]), np.concatenate([y, np.repeat(y, 2)]),
        fit["alpha"])
    np.testing.assert_allclose(fit["weight"], weight)
    assert fit["intercept"] == pytest.approx(intercept)


def test_stacking_weight_minimises_oof_mae(fitted: tuple) -> None:
    model, info, *_ = fitted
    scores = info["stacking"]["age"]["oof_mae_by_weight"]
    best = min(scores.values())
    assert scores[f"{model.spec['targets'][0]['network_weight']:g}"] == best


def test_ensemble_roundtrip_and_prediction(fitted: tuple, tmp_path: Path) -> None:
    from brainfm.models.checkpoint import save_checkpoint

    model, info, sessions, y, _, opts = fitted
    card = S.ensemble_card(model, sessions, y, TARGETS, info, ["toy"], opts)
    save_checkpoint(tmp_path, model, card)
    loaded, lcard = load_checkpoint(tmp_path)
    assert isinstance(loaded, BrainFMEnsemble) and lcard["format_version"] == 2
    s = sessions[0]
    a = predict_subject(model, card, s)
    b = predict_subject(loaded, lcard, s)
    assert a["predictions"] == pytest.approx(b["predictions"], rel=1e-6)
    pred = b["predictions"]
    for name in ("age", "score"):
        cols = interval_columns(name)
        assert len(cols) == 2 * len(INTERVAL_LEVELS)
        # intervals are asymmetric (per bin of the prediction): nested, not always centred
        assert pred[f"{name}_lower90"] <= pred[f"{name}_lower50"] \
            <= pred[f"{name}_upper50"] <= pred[f"{name}_upper90"]
    # the stacked age is the weighted mean of its parts in log space, then recalibrated
    target = lcard["ensemble"]["targets"][0]
    w = target["network_weight"]
    parts = b["components"]["age"]
    expected = np.exp(w * np.log(parts["network"]) + (1 - w) * np.log(parts["linear"]))
    expected = float(apply_recalibration(expected, target["recalibration"]))
    assert pred["age"] == pytest.approx(expected, rel=1e-9)
    assert isinstance(pred["age_reliable"], bool)
    assert np.mean(np.log(parts["network_members"])) == pytest.approx(np.log(parts["network"]))
    assert isinstance(b["ood"], bool)
    assert b["gate_weights"].shape == (len(ROIS), TINY["n_experts"])


def test_ood_flag_for_foreign_connectivity(fitted: tuple) -> None:
    model, _, sessions, *_ = fitted
    card = {"roi_names": ROIS, "sampling_rate_hz": 0.5, "window": TINY["window"],
            "targets": model.spec["targets"]}
    s = sessions[1]
    flipped = type(s)(**{**s.__dict__, "conn": -s.conn})  # anti-correlated pattern
    out = model.predict_session(card, flipped)
    assert out["ood"] and out["ood_similarity"] < model.spec["ood"]["similarity_threshold"]


def test_card_ensemble_section_is_checked(fitted: tuple, tmp_path: Path) -> None:
    from brainfm.models.checkpoint import save_checkpoint

    model, info, sessions, y, _, opts = fitted
    save_checkpoint(tmp_path, model, S.ensemble_card(model, sessions, y, TARGETS, info,
                                                     ["toy"], opts))
    card_path = tmp_path / "model_card.json"
    card = json.loads(card_path.read_text())
    card["ensemble"]["n_edges"] = 10**9
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="n_edges"):
        load_checkpoint(tmp_path)


def test_brainfm_train_ensemble_cli(toy: Path, tmp_path: Path, single_torch_thread) -> None:
    out = tmp_path / "ens"
    rc = main(["ensemble", str(toy), "--atlas", "Toy", "--target", "age", "--epochs", "1",
               "--pretrain-epochs", "1", "--window", "32", "--patch-len", "4", "--d-model", "16",
               "--n-experts", "2", "--ssm-layers", "1", "--d-state", "4", "--exclude", "000",
               "-o", str(out)])
    assert rc == 0
    model, card = load_checkpoint(out)
    assert isinstance(model, BrainFMEnsemble)
    assert card["training"]["excluded_participants"] == ["000"]
    assert card["training"]["n_subjects"] == 47
    assert "stacked" in card["metrics"]["inner_out_of_site"]["age"]
    pred_tsv = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(out), str(toy), "-o", str(pred_tsv)]) == 0
    table = pd.read_csv(pred_tsv, sep="\t")
    assert list(table.columns) == ["participant_id", "age", "age_std", *interval_columns("age"),
                                   "age_reliable", "age_expected_mae", "out_of_distribution"]
    assert (table["age_lower90"] < table["age"]).all() and (table["age"] < table["age_upper90"]
                                                             ).all()
    assert main(["ensemble", str(toy), "--atlas", "Toy", "--target", "age", "--members", "1",
                 "-o", str(tmp_path / "bad")]) == 64


def test_run_shorter_than_a_window_is_not_reliable(fitted: tuple, caplog) -> None:
    model, _, sessions, *_ = fitted
    card = {"roi_names": ROIS, "sampling_rate_hz": 0.5, "window": TINY["window"],
            "targets": model.spec["targets"]}
    s = sessions[1]
    full = model.predict_session(card, s)["predictions"]
    short = type(s)(**{**s.__dict__, "runs": [r[:, : TINY["window"] // 2] for r in s.runs]})
    with caplog.at_level("WARNING", logger="brainfm.models.ensemble"):
        out = model.predict_session(card, short)["predictions"]
    assert out["age_reliable"] is False
    assert f"{s.participant_id}: its longest run" in caplog.text
    assert isinstance(full["age_reliable"], bool) and "age_expected_mae" in out
