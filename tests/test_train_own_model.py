"""Tests of a lab's own model: ``brainfm-train cv --recipe ensemble`` and a complete card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from toy_cohort import TINY, make_toy_cohort

from brainfm.errors import UsageError
from brainfm.interfaces.predict import model_card_summary, target_notes
from brainfm.models.checkpoint import load_checkpoint
from brainfm.models.cli import main
from brainfm.models.evaluation import evaluate_predictions, interval_coverage
from brainfm.models.model_card import (
    CardInfo,
    complete_card,
    inner_folds_are_sites,
    not_predictable,
    not_predictable_note,
    parse_target_notes,
)
from brainfm.models.recipe_cv import MODELS, SUMMARY_COLUMNS

#: Tiny-model options of every CLI call (1 epoch).
TINY_FLAGS = ["--atlas", "Toy", "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "16",
              "--window", str(TINY["window"]), "--patch-len", str(TINY["patch_len"]),
              "--d-model", str(TINY["d_model"]), "--n-experts", str(TINY["n_experts"]),
              "--ssm-layers", str(TINY["ssm_layers"]), "--d-state", str(TINY["d_state"])]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 subjects (the fewest training accepts) of 4 sites; ``noise`` is a target connectivity
    says nothing about."""
    root = tmp_path_factory.mktemp("toy-own") / "deriv"
    table = make_toy_cohort(root, 40, seed=5)
    table["site"] = [f"S{i % 4}" for i in range(len(table))]
    table["noise"] = np.round(np.random.default_rng(0).normal(50, 10, len(table)), 3)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def test_not_predictable_note_words_the_default_models_piq_caveat() -> None:
    assert not_predictable(12.4, 12.5, [-0.08, 0.15])
    assert not_predictable(12.6, 12.5)
    assert not not_predictable(3.5, 5.4, [0.6, 0.8])
    assert not_predictable_note("PIQ", 12.44, 12.46, 0.035, [-0.08, 0.15]) == (
        "Not predictable out of site: on sites it never saw, the model's PIQ MAE is 12.4 "
        "against 12.5 for the training mean, r 0.04 (95 % CI over sites -0.08 to 0.15). Do not "
        "interpret individual values.")
    assert ", r" not in not_predictable_note("x", 1.0, 1.0, float("nan"))


def test_parse_target_notes_and_inner_folds() -> None:
    assert parse_target_notes(["age=adults only", "age=CC200"], ["age"]) == {
        "age": "adults only CC200"}
    for bad in ("age", "age=", "iq=text"):
        with pytest.raises(UsageError):
            parse_target_notes([bad], ["age"])
    assert inner_folds_are_sites([["A", "B"], ["C"]])
    assert not inner_folds_are_sites([["A", "B"], ["A", "C"]])


def test_complete_card_adds_caveat_where_the_training_mean_is_as_good() -> None:
    def part(mae: float) -> dict:
        return {"mae": mae, "r": 0.1, "r2": 0.0, "n": 30}

    card = {"targets": [{"name": "age"}, {"name": "iq"}], "metrics": {"inner_out_of_site": {
        "age": {"final": part(3.0), "training_mean": part(6.0)},
        "iq": {"final": part(12.6), "training_mean": part(12.5)}}}}
    complete_card(card, CardInfo(name="m", license="CC BY 4.0", terms="t",
                                 target_notes={"iq": "Proxy only."}),
                  {"age": 0.9, "iq": None}, [["A"], ["B"]])
    assert (card["name"], card["license"], card["terms"]) == ("m", "CC BY 4.0", "t")
    assert "note" not in card["targets"][0]
    assert card["targets"][1]["note"] == (
        "Not predictable out of site: on sites it never saw, the model's iq MAE is 12.6 against "
        "12.5 for the training mean, r 0.10. Do not interpret individual values. Proxy only.")
    summary = card["metrics"]["leave_site_out_summary"]
    assert summary["age"]["coverage_90"] == 0.9 and summary["iq"]["coverage_90"] is None
    assert summary["iq"]["training_mean_mae"] == 12.5
    # a better MAE than the training mean, but a correlation interval through 0: a caveat too
    card["targets"] = [{"name": "age"}, {"name": "iq"}]
    card["metrics"]["inner_out_of_site"]["iq"]["final"] = part(12.0)
    complete_card(card, CardInfo(), {}, [["A"], ["B"]],
                  {"iq": {"ci95": [-0.05, 0.2], "over": "subjects"}})
    assert "(95 % CI over subjects -0.05 to 0.20)" in card["targets"][1]["note"]
    assert summary is not card["metrics"]["leave_site_out_summary"]
    assert card["metrics"]["leave_site_out_summary"]["iq"]["r_ci95"] == [-0.05, 0.2]


def test_evaluation_pools_folds_and_splits_bands() -> None:
    y = np.array([8.0, 10.0, 15.0, 16.0, 20.0, 25.0, 35.0, 40.0])
    p = y + np.array([1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0])
    fold = np.array([1, 2, 1, 2, 1, 2, 1, 2])
    ev = evaluate_predictions(y, p, fold, ages=y, lower90=p - 2.5, upper90=p + 2.5)
    assert ev["pooled"]["mae"] == pytest.approx(2.5) and ev["pooled"]["n"] == 8
    assert ev["balanced_mae"] == pytest.approx(2.5)
    assert [b["band"] for b in ev["bands"]] == ["<13", "13-18", "18-30", ">=30"]
    assert [b["mae"] for b in ev["bands"]] == [1.0, 2.0, 3.0, 4.0]
    assert [b["coverage_90"] for b in ev["bands"]] == [1.0, 1.0, 0.0, 0.0]
    assert ev["coverage_90"]["all"]["coverage"] == 0.5
    assert ev["fold_spread"]["mae"]["per_fold"] == [2.5, 2.5]
    assert interval_coverage([1.0, np.nan], [0.0, 0.0], [2.0, 2.0])["all"]["n"] == 1


def test_own_model_card_is_complete(toy: Path, tmp_path: Path, single_torch_thread) -> None:
    out = tmp_path / "own"
    assert main(["ensemble", str(toy), *TINY_FLAGS, "--target", "age", "--target", "noise",
                 "--name", "lab-adults-cc200", "--license", "CC BY 4.0",
                 "--terms", "Trained on our lab's data; cite us.",
                 "--target-note", "age=Trained on adults only.", "--band-edges", "10", "20",
                 "-o", str(out)]) == 0
    _, card = load_checkpoint(out)
    assert card["name"] == "lab-adults-cc200" and card["license"] == "CC BY 4.0"
    assert card["terms"] == "Trained on our lab's data; cite us."
    summary = card["metrics"]["leave_site_out_summary"]
    for name in ("age", "noise"):
        acc = summary[name]
        assert acc["mae"] == pytest.approx(card["metrics"]["inner_out_of_site"][name]["final"]
                                           ["mae"])
        assert acc["training_mean_mae"] > 0 and 0 <= acc["coverage_90"] <= 1
        assert "whole sites" in acc["protocol"]
    notes = target_notes(card)
    assert notes["age"].endswith("Trained on adults only.")
    # the automatic caveat appears exactly where the model does not beat the training mean
    noise = summary["noise"]
    assert noise["r_ci95_over"] == "subjects"  # 4 sites: too few to resample sites
    assert ("noise" in notes) == (noise["mae"] >= noise["training_mean_mae"]
                                  or noise["r_ci95"][0] <= 0)
    assert "Not predictable" not in notes["age"]
    shown = model_card_summary(card)
    assert (shown["Name"], shown["License"]) == ("lab-adults-cc200", "CC BY 4.0")
    assert shown["Terms"] == "Trained on our lab's data; cite us."
    assert shown["OutOfSiteAccuracy"]["age"]["mae"] is not None
    assert shown["OutOfSiteAccuracy"]["noise"]["training_mean_mae"] is not None
    assert shown["TrainingRange"]["age"] and "ReliableRange" in shown
    # the lab's own age bands split the intervals and the reliable range, and travel with it
    assert shown["BandEdges"] == [10.0, 20.0]
    assert card["ensemble"]["targets"][0]["band_edges"] == [10.0, 20.0]
    assert main(["ensemble", str(toy), *TINY_FLAGS, "--target", "age", "--band-edges", "30",
                 "20", "-o", str(tmp_path / "bad")]) == 64
    # an unknown target of --target-note is a usage error (exit 64), before any training
    assert main(["ensemble", str(toy), *TINY_FLAGS, "--target", "age", "--target-note", "iq=x",
                 "-o", str(tmp_path / "bad")]) == 64


def test_cv_recipe_ensemble_leaves_sites_out_with_baselines(
        toy: Path, tmp_path: Path, single_torch_thread, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv"
    assert main(["cv", str(toy), *TINY_FLAGS, "--target", "age", "--target", "noise",
                 "--protocol", "leave-group-out", "--group-by", "site", "-o", str(out)]) == 0
    results = json.loads((out / "cv_results.json").read_text())
    assert results["recipe"] == "ensemble" and results["folds"] == 4
    assert [f["test_groups"] for f in results["per_fold"]] == [["S0"], ["S1"], ["S2"], ["S3"]]
    age = results["targets"]["age"]
    assert set(age) == set(MODELS)
    preds = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert len(preds) == 40 and sorted(preds["fold"].unique()) == [1, 2, 3, 4]
    # the headline is the pooled out-of-fold MAE, not the mean of the fold MAEs
    pooled = float(np.mean(np.abs(preds["age"] - preds["age_true"])))
    assert age["recipe"]["pooled"]["mae"] == pytest.approx(pooled, rel=1e-4)
    ridge = float(np.mean(np.abs(preds["age_ridge"] - preds["age_true"])))
    assert age["ridge"]["pooled"]["mae"] == pytest.approx(ridge, rel=1e-4)
    assert len(age["recipe"]["fold_spread"]["mae"]["per_fold"]) == 4
    assert [b["band"] for b in age["recipe"]["bands"]] == ["<13", "13-18", "18-30", ">=30"]
    assert age["recipe"]["balanced_mae"] is not None
    assert 0 <= age["recipe"]["coverage_90"]["all"]["coverage"] <= 1
    assert "coverage_90" not in age["ridge"]
    # the training mean of each fold is what its training subjects average
    assert preds.groupby("fold")["age_training_mean"].nunique().eq(1).all()
    summary = pd.read_csv(out / "cv_summary.tsv", sep="\t")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 2 * len(MODELS)
    printed = capsys.readouterr().out
    assert "recipe ensemble, leave-group-out, 4 folds, 40 subjects" in printed and "krr" in printed


def test_cv_skips_folds_with_no_known_target(tmp_path: Path, single_torch_thread) -> None:
    """A site whose participants have no age (a lab's unlabelled scans) is no outer fold: it has
    nothing to score; its sessions still pretrain the other folds."""
    root = tmp_path / "deriv"
    table = make_toy_cohort(root, 50, seed=6)
    table["site"] = [f"S{i % 5}" for i in range(len(table))]
    table.loc[table["site"] == "S4", "age"] = np.nan
    table.to_csv(root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "cv"
    assert main(["cv", str(root), *TINY_FLAGS, "--target", "age", "--protocol",
                 "leave-group-out", "--group-by", "site", "-o", str(out)]) == 0
    results = json.loads((out / "cv_results.json").read_text())
    assert results["folds"] == 4 and results["skipped_folds"] == [["S4"]]
    assert (results["n_subjects"], results["n_sessions"]) == (40, 50)
    assert [f["test_groups"] for f in results["per_fold"]] == [["S0"], ["S1"], ["S2"], ["S3"]]
    assert results["targets"]["age"]["recipe"]["pooled"]["n"] == 40


def test_recipe_options_from_the_command_line() -> None:
    """--members, --band-edges and --no-recalibration reach the recipe, checked."""
    from brainfm.errors import UsageError
    from brainfm.models.cli import _recipe, build_parser

    args = vars(build_parser().parse_args(
        ["ensemble", "d", "-o", "m", "--band-edges", "30", "45", "60", "--no-recalibration"]))
    recipe = _recipe(args)
    assert recipe.band_edges == (30.0, 45.0, 60.0)
    assert recipe.recalibration_candidates == (False,)
    default = _recipe(vars(build_parser().parse_args(["cv", "d", "-o", "m"])))
    assert default.recalibration_candidates == (False, True) and default.n_members == 3
    for bad in ({"band_edges": [30.0, 30.0]}, {"band_edges": [0.0]}, {"members": 1}):
        with pytest.raises(UsageError):
            _recipe(bad)
