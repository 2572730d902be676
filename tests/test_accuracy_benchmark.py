"""The accuracy benchmark: baselines are exact and never read test targets; no fold leaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from benchmark_scripts import load_benchmark
from sklearn.linear_model import Ridge

from brainfm.group.brainage import apply_bias_correction, fit_bias_correction
from brainfm.models.baselines import (
    _centred_blocks,
    connectivity_features,
    kernel_ridge_predict,
    nested_kernel_ridge,
    subject_kernel,
)
from brainfm.models.options import TrainOptions
from brainfm.models.sessions import session_from_arrays
from brainfm.models.train import finetune, pretrain

ROOT = Path(__file__).resolve().parents[1]


acc = load_benchmark("accuracy")

TINY = {"epochs": 1, "pretrain_epochs": 1, "batch_size": 4, "val_fraction": 0.25, "threads": 1,
        "model": {"window": 16, "patch_len": 4, "d_model": 8, "enc_dim": 8, "n_experts": 2,
                  "ssm_layers": 1, "d_state": 4, "rw_steps": 2, "n_latents": 4,
                  "expert_hidden": 8, "graph_topk": 3, "readout_dim": 2}}


def _tiny_cohort(n_per_site: int = 6, sites: tuple[str, ...] = ("A", "B", "C"),
                 n_rois: int = 10) -> acc.Cohort:
    rng = np.random.default_rng(0)
    names = [f"R{k}" for k in range(n_rois)]
    sessions, ages, site_of = [], [], []
    for s, site in enumerate(sites):
        for i in range(n_per_site):
            data = rng.normal(size=(40, n_rois))
            sessions.append(session_from_arrays([(data, 2.0)], names, participant_id=f"{site}{i}"))
            ages.append(10.0 + 3 * i + s)
            site_of.append(site)
    ages = np.array(ages)
    piq = 100 + rng.normal(scale=10, size=ages.size)
    piq[1] = np.nan
    return acc.Cohort(sessions=sessions, targets=np.column_stack([ages, piq]),
                      sites=np.array(site_of, dtype=object))


def test_ridge_kernel_form_matches_sklearn_ridge() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 120))
    y = 3 * x[:, 0] + rng.normal(size=50) + 7
    kernel = subject_kernel(x, "ridge")
    train, test = np.arange(35), np.arange(35, 50)
    k_tt, _ = _centred_blocks(kernel, train, test)
    scale = np.mean(np.diag(k_tt))
    ours = kernel_ridge_predict(kernel, y, train, test, [0.3])[0]
    ref = Ridge(alpha=0.3 * scale).fit(x[train], y[train]).predict(x[test])
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_correlation_kernel_is_row_correlation() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 30))
    np.testing.assert_allclose(subject_kernel(x, "krr"), np.corrcoef(x), atol=1e-12)
    with pytest.raises(ValueError, match="unknown baseline"):
        subject_kernel(x, "svm")


@pytest.mark.parametrize("kind", ["ridge", "krr"])
def test_baselines_never_read_test_targets(kind: str) -> None:
    rng = np.random.default_rng(3)
    conn = [np.tanh(rng.normal(size=(12, 12))) for _ in range(40)]
    conn = [(c + c.T) / 2 for c in conn]
    x = connectivity_features(conn)
    y = x[:, 0] * 5 + rng.normal(size=40)
    kernel = subject_kernel(x, kind)
    train, test = np.arange(30), np.arange(30, 40)
    pred, oof, alpha = nested_kernel_ridge(kernel, y, train, test)
    y_poisoned = y.copy()
    y_poisoned[test] = 1e9
    pred2, oof2, alpha2 = nested_kernel_ridge(kernel, y_poisoned, train, test)
    np.testing.assert_array_equal(pred, pred2)
    np.testing.assert_array_equal(oof, oof2)
    assert alpha == alpha2 and oof.shape == (30,)


def test_age_bias_correction_removes_regression_to_the_mean() -> None:
    rng = np.random.default_rng(4)
    age = rng.uniform(8, 60, size=300)
    pred = 0.6 * age + 10 + rng.normal(scale=2, size=300)
    coefficients = fit_bias_correction(pred[:200], age[:200], "linear")
    assert coefficients["slope"] == pytest.approx(0.6, abs=0.05)
    gap = pred[200:] - age[200:]
    fixed = apply_bias_correction(pred[200:], age[200:], coefficients)[1]
    assert np.corrcoef(gap, age[200:])[0, 1] < -0.8
    assert abs(np.corrcoef(fixed, age[200:])[0, 1]) < 0.3


def test_folds_partition_subjects_and_loso_holds_out_one_site() -> None:
    cohort = _tiny_cohort(n_per_site=5)
    kfold = acc.outer_folds(cohort, "kfold", seed=0)
    assert len(kfold) == 5
    tests = np.concatenate([te for _, te in kfold])
    assert sorted(tests.tolist()) == list(range(15))
    for train, test in kfold:
        assert not set(train) & set(test)
        # stratified: every site is in every test fold
        assert set(cohort.sites[test]) == {"A", "B", "C"}
    loso = acc.outer_folds(cohort, "loso", seed=0)
    assert len(loso) == 3
    for train, test in loso:
        assert len(set(cohort.sites[test])) == 1
        assert set(cohort.sites[test]).isdisjoint(cohort.sites[train])


@pytest.fixture()
def seen(monkeypatch) -> dict[str, set[str]]:
    """Spy on pretraining and fine-tuning: the participants each receives (and validates on)."""
    seen: dict[str, set[str]] = {"pretrain": set(), "finetune": set(), "val": set()}
    real_pretrain, real_finetune = pretrain, finetune

    def spy_pretrain(sessions, *args, **kwargs):
        seen["pretrain"].update(s.participant_id for s in sessions)
        return real_pretrain(sessions, *args, **kwargs)

    def spy_finetune(sessions, y, *args, **kwargs):
        seen["finetune"].update(s.participant_id for s in sessions)
        seen["val"].update(kwargs.get("val_participants") or ())
        assert len(sessions) == len(y)
        return real_finetune(sessions, y, *args, **kwargs)

    from brainfm.models import stacking

    # patched where they are called: the benchmark's folds and the recipe's members
    monkeypatch.setattr(acc, "pretrain", spy_pretrain)
    monkeypatch.setattr(acc, "finetune", spy_finetune)
    monkeypatch.setattr(stacking, "finetune", spy_finetune)
    return seen


def test_a_folds_test_subjects_are_never_seen_in_training(seen) -> None:
    """Spy on pretraining and fine-tuning: neither ever receives a test subject."""
    cohort = _tiny_cohort()
    opts = TrainOptions(**TINY)
    folds = {"kfold": acc.outer_folds(cohort, "kfold", seed=0)[:1]}
    tasks = acc.plan_tasks(folds, {"kfold": ["full", "mlp"]}, opts, pretrain_epochs=1)
    assert len(tasks) == 1 and tasks[0]["variants"] == ["full", "mlp"]
    # the shipped recipe is a task of its own: adding it leaves the other tasks' keys alone
    with_ensemble = acc.plan_tasks(folds, {"kfold": ["full", "mlp", "recipe"]}, opts, 1)
    assert sorted(t["variants"] for t in with_ensemble) == [["full", "mlp"], ["recipe"]]
    assert tasks[0]["key"] in {t["key"] for t in with_ensemble}
    train, test = folds["kfold"][0]
    result = acc.train_fold(tasks[0], cohort)
    test_ids = set(cohort.subjects[test].tolist())
    assert seen["pretrain"] and seen["finetune"]
    assert not seen["pretrain"] & test_ids
    assert not seen["finetune"] & test_ids
    assert seen["finetune"] == set(cohort.subjects[train].tolist())
    for variant in ("full", "mlp"):
        res = result["variants"][variant]
        assert np.asarray(res["test_pred"]).shape == (test.size, 2)
        assert np.isfinite(res["test_pred"]).all()
        # the bias correction is fitted on inner-validation subjects: training subjects only
        assert set(res["val_participant_ids"]) <= set(cohort.subjects[train].tolist())
    records = acc.brainfm_records(cohort, folds["kfold"], tasks, {tasks[0]["key"]: result},
                                  "kfold")
    assert set(records) == {"full", "mlp"}
    assert records["full"][0]["predictions"]["participant_id"] == cohort.subjects[test].tolist()


def test_the_recipe_never_sees_a_test_subject(seen) -> None:
    """The shipped recipe's fold: pretraining, every member and the linear member see training
    subjects only; its parts are reported alone; intervals come with every test prediction."""
    cohort = _tiny_cohort()
    folds = {"loso": acc.outer_folds(cohort, "loso", seed=0)[:1]}
    (task,) = acc.plan_tasks(folds, {"loso": ["recipe"]}, TrainOptions(**TINY), 1)
    train, test = folds["loso"][0]
    result = acc.train_fold(task, cohort)
    train_ids, test_ids = set(cohort.subjects[train]), set(cohort.subjects[test])
    assert seen["finetune"] == train_ids and seen["pretrain"] <= train_ids
    assert seen["val"] <= train_ids and seen["val"]
    assert set(result["variants"]) == {"recipe", "recipe-network", "recipe-linear"}
    recipe = result["variants"]["recipe"]
    assert np.asarray(recipe["test_pred"]).shape == (test.size, 2)
    low, high = (np.asarray(recipe["intervals"]["age"][c]) for c in ("age_lower90",
                                                                       "age_upper90"))
    assert (low < np.asarray(recipe["test_pred"])[:, 0]).all()
    assert (high > np.asarray(recipe["test_pred"])[:, 0]).all()
    assert set(recipe["val_participant_ids"]) == train_ids  # out-of-fold for every one
    assert np.isnan(np.asarray(result["variants"]["recipe-network"]["test_pred"])[:, 1]).all()
    records = acc.brainfm_records(cohort, folds["loso"], [task], {task["key"]: result}, "loso")
    assert "age_lower90" in records["recipe"][0]["predictions"]
    assert not test_ids & train_ids


def _fake_pcp(root: Path, n_per_site: int = 8) -> Path:
    """A PCP-shaped folder: 2 sites, 200-ROI .1D files, the phenotype CSV."""
    rng = np.random.default_rng(5)
    rois = root / "rois_cc200"
    rois.mkdir(parents=True)
    rows = []
    head = "\t".join(f"#{k}" for k in range(1, 201))
    for site, prefix, base in (("OLIN", "Olin", 50100), ("SBL", "SBL", 51500)):
        for i in range(n_per_site):
            sub = base + i
            fid = f"{prefix}_{sub:07d}"
            data = rng.normal(scale=10, size=(40, 200))
            body = "\n".join("\t".join(f"{v:.4f}" for v in r) for r in data)
            (rois / f"{fid}_rois_cc200.1D").write_text(head + "\n" + body + "\n")
            rows.append({"SUB_ID": sub, "subject": sub, "SITE_ID": site, "FILE_ID": fid,
                         "DX_GROUP": 1 + i % 2, "AGE_AT_SCAN": 8.0 + 2 * i, "SEX": 1,
                         "FIQ": "", "VIQ": 100, "PIQ": 90 + i, "func_mean_fd": 0.1})
    pd.DataFrame(rows).to_csv(root / "Phenotypic_V1_0b_preprocessed1.csv", index=False)
    return root


@pytest.mark.slow
def test_benchmark_command_writes_tables_and_every_fold(tmp_path: Path) -> None:
    data = _fake_pcp(tmp_path / "pcp")
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({**{k.replace("_", "-"): v for k, v in TINY.items()
                                     if k != "threads"}, "atlas": "CC200"}))
    out = tmp_path / "results"
    argv = [str(data), "--out", str(out), "--config", str(config), "--cache",
            str(tmp_path / "cache" / "abide"), "--variants", "full", "recipe",
            "--loso-variants", "recipe"]
    run = [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), *argv]
    done = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "accuracy.json").read_text())
    kfold, loso = report["protocols"]["kfold"], report["protocols"]["loso"]
    assert kfold["n_folds"] == 5 and loso["n_folds"] == 2
    parts = {"recipe", "recipe-network", "recipe-linear"}
    assert set(kfold["summary"]) == {"mean", "ridge", "krr", "full"} | parts
    assert set(loso["summary"]) == {"mean", "ridge", "krr"} | parts
    ev = loso["evaluation"]
    assert set(ev["coverage"]["age"]) == {"50", "90"}
    assert ev["coverage"]["age"]["90"]["all"]["n"] == 16
    assert "recipe vs krr" in ev["paired"] and set(ev["sites"]["krr"]) == {"OLIN", "SBL"}
    for block in (kfold, loso):
        for name, folds in block["folds"].items():
            ids = [p for f in folds for p in f["predictions"]["participant_id"]]
            assert sorted(ids) == sorted(set(ids)) and len(ids) == 16, name
    text = (out / "accuracy.md").read_text()
    assert "Site-stratified 5-fold CV" in text and "Leave-one-site-out" in text
    assert "kernel ridge" in text and report["meta"]["git_commit"]
    assert "Interval coverage" in text and "Paired comparison" in text and "per held-out site" \
        in text
    # a second run reuses every finished training
    cached = sorted((tmp_path / "cache" / "abide-runs").glob("*.json"))
    assert len(cached) == 5 * 2 + 2
    again = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "12 trainings cached, 0 to run" in again.stderr
