"""Group level: aggregate table, brain-age gap, bias correction, metrics, errors.

The fixture writes participant-level outputs with the exact names the participant level uses
(predictions, expert weights, run QC, time-series sidecars, the copied atlas) plus a
``participants.tsv`` whose ages carry a planted linear bias in the predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainfm.atlases import get_atlas
from brainfm.bidsapp.config import Config
from brainfm.bidsapp.group import (
    BIAS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    run_group_level,
)
from brainfm.derivatives import init_output_dataset, participant_report_path, software_filters
from brainfm.errors import InputError, UsageError
from brainfm.fileio import write_json_atomic, write_tsv_atomic
from brainfm.group.brainage import (
    apply_bias_correction,
    cross_validated_bias_correction,
    fit_bias_correction,
    fold_assignment,
)
from brainfm.group.metrics import regression_metrics
from brainfm.group.result import compute_group
from brainfm.participant_outputs import copy_atlases

#: Planted bias of the fixture's predicted age: age_pred = SLOPE * age + INTERCEPT + noise.
SLOPE, INTERCEPT = 0.6, 14.0
MODEL_SHA = "3f" * 32
N_EXPERTS = 4


def _expert_weights(names: list[str], centroids: np.ndarray, rng: np.random.Generator
                    ) -> np.ndarray:
    """Spatially structured gate weights: soft assignment of ROI centroids to 4 brain zones."""
    centres = np.array([[0, 40, 10], [0, -75, 5], [-45, -20, 0], [40, -40, 45]], dtype=float)
    d2 = ((centroids[:, None, :] - centres[None]) ** 2).sum(axis=2)
    logits = -d2 / (2 * 35.0**2) + rng.normal(0, 0.3, size=d2.shape)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def _roi_centroids(atlas_image: Path, n_rois: int) -> np.ndarray:
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(atlas_image)
    labels = np.asarray(img.dataobj).astype(int)
    com = ndimage.center_of_mass(np.ones_like(labels), labels, index=np.arange(1, n_rois + 1))
    ijk = np.array([c if np.all(np.isfinite(c)) else (0, 0, 0) for c in com], dtype=float)
    return ijk @ img.affine[:3, :3].T + img.affine[:3, 3]


def write_group_fixture(root: Path, n_participants: int = 6, seed: int = 0,
                        sessions_for: tuple[int, ...] = (0,), noise: float = 0.5,
                        with_timeseries: bool = False, n_volumes: int = 60,
                        experts: bool = True) -> dict:
    """Write participant-level outputs and a participants.tsv under ``root``.

    Parameters
    ----------
    root : Path
        Folder receiving ``bids/`` (participants.tsv only) and ``out/`` (outputs).
    n_participants : int
        Participants ``sub-01 ..``.
    seed : int
        Random seed.
    sessions_for : tuple of int
        Indices of participants that get two sessions (``ses-1``, ``ses-2``); others none.
    noise : float
        SD (years) of the noise added to the planted linear bias of predicted age.
    with_timeseries : bool
        Also write time series, outliers, motion and connectivity (for participant reports).
    n_volumes : int
        Acquired volumes per run (with ``with_timeseries``).
    experts : bool
        Write the RWMoE expert-weight tables (their maps are the slowest part of the report).

    Returns
    -------
    dict
        ``bids``, ``out``, ``ages`` (participant -> age), ``roi_names``.
    """
    rng = np.random.default_rng(seed)
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True, exist_ok=True)
    init_output_dataset(out, {"raw": bids})
    atlas = get_atlas("CC200")
    copy_atlases(out, [atlas])
    names = atlas.labels["name"].astype(str).tolist()
    centroids = _roi_centroids(atlas.image, len(names))
    base_weights = _expert_weights(names, centroids, rng)
    ages = np.round(np.linspace(8, 62, n_participants) + rng.normal(0, 1, n_participants), 1)
    fi = np.round(100 + rng.normal(0, 12, n_participants), 0)
    participants = []
    for i in range(n_participants):
        sub = f"sub-{i + 1:02d}"
        participants.append({"participant_id": sub, "age": ages[i],
                             "sex": "F" if i % 2 else "M", "fluid_intelligence": fi[i]})
        sessions = ["ses-1", "ses-2"] if i in sessions_for else [None]
        qc_rows = []
        for ses in sessions:
            prefix = sub + (f"_{ses}" if ses else "")
            func = out / sub / (ses or "") / "func"
            fd_mean = float(rng.uniform(0.08, 0.35))
            retained = float(rng.integers(150, 300) * 2.0)
            age_pred = SLOPE * ages[i] + INTERCEPT + rng.normal(0, noise)
            fi_pred = 100 + 0.5 * (fi[i] - 100) + rng.normal(0, 4)
            pred = pd.DataFrame([{
                "participant_id": sub, "session_id": ses or "n/a",
                "age": age_pred, "age_std": float(rng.uniform(2, 5)),
                "fluid_intelligence": fi_pred, "fluid_intelligence_std": float(rng.uniform(5, 9)),
                "n_runs": 1, "retained_seconds": retained,
            }])
            path = func / f"{prefix}_desc-brainfm_predictions.tsv"
            write_tsv_atomic(path, pred)
            write_json_atomic(path.with_suffix(".json"), {
                "ModelSHA256": MODEL_SHA,
                "ModelCard": {"Atlas": "CC200", "DenoisingStrategy": "pcp",
                              "Targets": ["age", "fluid_intelligence"],
                              "TargetColumns": {"age": "age",
                                                "fluid_intelligence": "fluid_intelligence"},
                              "TrainingCohort": "ABIDE PCP (filt_global)",
                              "TrainingSubjects": 871, "Window": 64, "SamplingRateHz": 0.5,
                              "BrainfmVersion": "0.1.0"},
                "Sources": [f"bids:brainfm:{sub}/func/{prefix}_task-rest_space-MNI152NLin6Asym_"
                            "atlas-CC200_stat-mean_timeseries.tsv"],
            })
            weights = base_weights * rng.uniform(0.8, 1.2, size=base_weights.shape)
            weights /= weights.sum(axis=1, keepdims=True)
            ew = pd.DataFrame(weights, columns=[f"expert_{k}" for k in range(N_EXPERTS)])
            ew.insert(0, "Node", names)
            if experts:
                write_tsv_atomic(func / f"{prefix}_atlas-CC200_desc-rwmoe_expertweights.tsv",
                                 ew)
            run_prefix = f"{prefix}_task-rest"
            series_base = f"{run_prefix}_space-MNI152NLin6Asym_atlas-CC200"
            sidecar = {"RepetitionTime": 2.0, "SamplingFrequency": 0.5,
                       "DenoisingStrategy": "pcp", "FDThreshold": 0.5, "DummyScans": 0,
                       "SoftwareFilters": software_filters(0.01, 0.1),
                       "NuisanceRegressors": [f"reg{k}" for k in range(34)],
                       "Atlas": "CC200", "Sources": []}
            write_json_atomic(func / f"{series_base}_stat-mean_timeseries.json", sidecar)
            n_retained = int(retained / 2.0)
            if with_timeseries:
                fd = np.abs(rng.normal(fd_mean, 0.12, n_volumes))
                fd[0] = np.nan
                fd[[10, 11, 30]] = [0.8, 0.9, 0.7]
                outlier = (np.nan_to_num(fd) > 0.5).astype(int)
                write_tsv_atomic(func / f"{run_prefix}_outliers.tsv", pd.DataFrame(
                    {"framewise_displacement": fd, "outlier": outlier,
                     "dummy": np.zeros(n_volumes, int)}))
                write_json_atomic(func / f"{run_prefix}_outliers.json", {"FDThreshold": 0.5})
                keep = outlier == 0
                n_retained = int(keep.sum())
                series = rng.normal(size=(n_retained, len(names)))
                write_tsv_atomic(func / f"{series_base}_stat-mean_timeseries.tsv",
                                 pd.DataFrame(series, columns=names))
                corr = np.corrcoef(series.T)
                relmat = pd.DataFrame(corr, index=pd.Index(names, name="Node"), columns=names)
                write_tsv_atomic(func / f"{series_base}_stat-pearsoncorrelation_relmat.tsv",
                                 relmat, index=True)
            qc_rows.append({"participant_id": sub, "session_id": ses or "n/a",
                            "run": "task-rest", "n_volumes": n_volumes,
                            "n_retained": n_retained, "retained_seconds": retained,
                            "mean_fd": fd_mean, "status": "included", "reason": "n/a"})
        if i == n_participants - 1:
            qc_rows.append({"participant_id": sub, "session_id": "n/a", "run": "task-rest_run-2",
                            "n_volumes": n_volumes, "n_retained": 20, "retained_seconds": 40.0,
                            "mean_fd": 0.9, "status": "excluded",
                            "reason": "only 40 s retained after censoring (minimum 120 s)"})
        write_tsv_atomic(out / sub / f"{sub}_desc-runs_qc.tsv", pd.DataFrame(qc_rows))
        # complete, as the participant level marks it (its report comes last)
        participant_report_path(out, sub).write_text("<html></html>")
    write_tsv_atomic(bids / "participants.tsv", pd.DataFrame(participants))
    return {"bids": bids, "out": out, "roi_names": names,
            "ages": {p["participant_id"]: p["age"] for p in participants}}


def make_config(bids: Path, out: Path, **extra) -> Config:
    """The participant-level Config with the group options set as attributes."""
    config = Config(bids_dir=bids, output_dir=out, analysis_level="group")
    for key, value in extra.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def group_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("group")
    fx = write_group_fixture(root, n_participants=6, sessions_for=(0,))
    written = run_group_level(make_config(fx["bids"], fx["out"]))
    return {**fx, "written": written}


def _read_group_table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / PREDICTIONS_FILE, sep="\t", na_values=["n/a"],
                       keep_default_na=False)


def test_group_writes_all_outputs(group_run):
    out = group_run["out"]
    for name in (PREDICTIONS_FILE, "group_predictions.json", METRICS_FILE, REPORT_FILE):
        assert (out / name).is_file(), name
    assert not (out / BIAS_FILE).exists()
    assert "/group_*" in (out / ".bidsignore").read_text().splitlines()
    assert not list(out.glob(".*.tmp"))
    table = _read_group_table(out)
    assert len(table) == 7  # 6 participants, one with two sessions
    assert set(table.loc[table["participant_id"] == "sub-01", "session_id"]) == {"ses-1",
                                                                                 "ses-2"}
    for col in ("age_pred", "age_pred_std", "age", "age_gap", "fluid_intelligence_pred",
                "fluid_intelligence_pred_std", "fluid_intelligence", "n_runs",
                "n_runs_excluded", "retained_seconds", "mean_fd", "sex"):
        assert col in table, col
    ages = group_run["ages"]
    assert np.allclose(table["age"], table["participant_id"].map(ages))
    assert np.allclose(table["age_gap"], table["age_pred"] - table["age"])
    last = table[table["participant_id"] == "sub-06"].iloc[0]
    assert last["n_runs_excluded"] == 1
    sidecar = json.loads((out / "group_predictions.json").read_text())
    assert set(sidecar) == {*table.columns, "left_out"} and sidecar["left_out"] == []


def test_sessions_without_predictions_are_noted(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=())
    qc = pd.DataFrame([{"participant_id": "sub-09", "session_id": "n/a", "run": "task-rest",
                        "n_volumes": 100, "n_retained": 10, "retained_seconds": 20.0,
                        "mean_fd": 1.2, "status": "excluded", "reason": "too short"}])
    write_tsv_atomic(fx["out"] / "sub-09" / "sub-09_desc-runs_qc.tsv", qc)
    participant_report_path(fx["out"], "sub-09").write_text("<html></html>")  # complete
    # a session whose runs were all excluded: predictions n/a, n_runs 0 (participant level)
    path = fx["out"] / "sub-04" / "func" / "sub-04_desc-brainfm_predictions.tsv"
    write_tsv_atomic(path, pd.DataFrame([{
        "participant_id": "sub-04", "session_id": "n/a", "age": None, "age_std": None,
        "fluid_intelligence": None, "fluid_intelligence_std": None, "n_runs": 0,
        "retained_seconds": 0.0}]))
    result = compute_group(fx["out"], fx["bids"])
    assert len(result.table) == 4
    assert any("without predictions" in note and "sub-09" in note and "sub-04" in note
               for note in result.notes)
    row = result.table.set_index("participant_id").loc["sub-04"]
    assert np.isnan(row["age_pred"]) and row["n_runs"] == 0
    assert result.metrics["targets"]["age"]["n"] == 3
    assert result.metrics["targets"]["age"]["n_predicted"] == 3


def test_group_metrics_match_independent_recomputation(group_run):
    out = group_run["out"]
    table = _read_group_table(out)
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["n_sessions"] == 7 and metrics["n_participants"] == 6
    for target in ("age", "fluid_intelligence"):
        ok = table[target].notna() & table[f"{target}_pred"].notna()
        y = table.loc[ok, target].to_numpy(float)
        p = table.loc[ok, f"{target}_pred"].to_numpy(float)
        got = metrics["targets"][target]
        assert got["n"] == ok.sum()
        assert got["mae"] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-9)
        assert got["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-9)
        assert got["pearson_r"] == pytest.approx(stats.pearsonr(y, p)[0], rel=1e-9)
        r2 = 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)
        assert got["r2"] == pytest.approx(r2, rel=1e-9, abs=1e-12)
    gap = table["age_pred"] - table["age"]
    assert metrics["brain_age_gap"]["mean"] == pytest.approx(gap.mean())
    assert metrics["brain_age_gap"]["r_with_age"] == pytest.approx(
        stats.pearsonr(table["age"], gap)[0])


def test_regression_metrics_against_sklearn():
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(3)
    y = rng.normal(40, 10, 50)
    p = y + rng.normal(0, 5, 50)
    p[3] = np.nan
    m = regression_metrics(y, p)
    ok = np.isfinite(p)
    assert m["n"] == 49
    assert m["mae"] == pytest.approx(mean_absolute_error(y[ok], p[ok]))
    assert m["r2"] == pytest.approx(r2_score(y[ok], p[ok]))
    empty = regression_metrics([1.0, 2.0], [np.nan, np.nan])
    assert empty["n"] == 0 and empty["mae"] is None and empty["r2"] is None


def test_fit_and_apply_recover_exact_bias():
    age = np.linspace(10, 70, 30)
    pred = SLOPE * age + INTERCEPT
    lin = fit_bias_correction(pred, age, "linear")
    assert lin["slope"] == pytest.approx(SLOPE) and lin["intercept"] == pytest.approx(INTERCEPT)
    pred_corr, gap_corr = apply_bias_correction(pred, age, lin)
    assert np.allclose(pred_corr, age) and np.allclose(gap_corr, 0)
    res = fit_bias_correction(pred, age, "residual")
    assert res["slope"] == pytest.approx(SLOPE - 1) and res["intercept"] == pytest.approx(INTERCEPT)
    pred_corr, gap_corr = apply_bias_correction(pred, age, res)
    assert np.allclose(gap_corr, 0) and np.allclose(pred_corr, age)
    with pytest.raises(ValueError):
        fit_bias_correction([1.0, 2.0], [1.0, 2.0], "linear")


def test_folds_keep_participants_whole():
    groups = ["a", "a", "b", "c", "c", "d", "e", "f", "g"]
    folds = fold_assignment(groups, 3, seed=1)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups, strict=True) if gg == g}) == 1
    assert set(folds) == {0, 1, 2}
    age = np.linspace(10, 60, 9)
    pred_corr, gap_corr, info = cross_validated_bias_correction(
        SLOPE * age + INTERCEPT, age, groups, "linear", n_folds=3)
    assert info["n_folds"] == 3 and np.allclose(gap_corr, 0, atol=1e-9)


@pytest.mark.parametrize("method,slope", [("linear", SLOPE), ("residual", SLOPE - 1)])
def test_cross_validated_correction_recovers_planted_bias(tmp_path, method, slope):
    fx = write_group_fixture(tmp_path, n_participants=12, sessions_for=(), noise=0.3, seed=5,
                             experts=False)
    written = run_group_level(make_config(fx["bids"], fx["out"], bias_correction=method))
    coefs = json.loads(written["bias_correction"].read_text())
    assert coefs["method"] == method and coefs["fit"] == "cross-validated"
    assert coefs["full_sample"]["slope"] == pytest.approx(slope, abs=0.03)
    assert coefs["full_sample"]["intercept"] == pytest.approx(INTERCEPT, abs=1.0)
    for fold in coefs["folds"]:
        assert fold["slope"] == pytest.approx(slope, abs=0.06)
    table = _read_group_table(fx["out"])
    assert abs(stats.pearsonr(table["age"], table["age_gap"])[0]) > 0.9
    assert abs(stats.pearsonr(table["age"], table["age_gap_corrected"])[0]) < 0.5
    assert np.abs(table["age_gap_corrected"]).max() < 2.0
    metrics = json.loads((fx["out"] / METRICS_FILE).read_text())
    corrected = metrics["bias_corrected"]
    ok = table["age_pred_corrected"].notna()
    y, p = table.loc[ok, "age"], table.loc[ok, "age_pred_corrected"]
    assert corrected["mae"] == pytest.approx(np.mean(np.abs(p - y)))
    assert corrected["r2"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    assert "inflated" in corrected["warning"]
    report = (fx["out"] / REPORT_FILE).read_text()
    assert "inflated by construction" in report
    # a rerun without correction removes the stale coefficients
    run_group_level(make_config(fx["bids"], fx["out"]))
    assert not (fx["out"] / BIAS_FILE).exists()
    assert "age_gap_corrected" not in _read_group_table(fx["out"])


def test_reference_sample_correction(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=10, sessions_for=(), noise=0.2, seed=7)
    ref = tmp_path / "reference.tsv"
    ages = fx["ages"]
    ref_ids = ["sub-01", "sub-03", "sub-05", "sub-07", "sub-09"]
    pd.DataFrame({"participant_id": ref_ids, "age": [ages[s] for s in ref_ids]}).to_csv(
        ref, sep="\t", index=False)
    result = compute_group(fx["out"], fx["bids"], "linear", ref)
    corr = result.correction
    assert corr["fit"] == "reference" and corr["reference_participants"] == ref_ids
    assert corr["n"] == 5
    assert corr["slope"] == pytest.approx(SLOPE, abs=0.03)
    assert corr["intercept"] == pytest.approx(INTERCEPT, abs=1.0)
    assert result.table["age_gap_corrected"].abs().max() < 1.0


def test_no_participants_tsv_gives_predictions_only(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=(), experts=False)
    (fx["bids"] / "participants.tsv").unlink()
    written = run_group_level(make_config(fx["bids"], fx["out"]))
    metrics = json.loads(written["metrics"].read_text())
    assert metrics["targets"] == {}
    assert metrics["targets_without_known_values"] == ["age", "fluid_intelligence"]
    table = _read_group_table(fx["out"])
    assert "age" not in table and "age_gap" not in table
    html = written["report"].read_text()
    assert "no known values" in html and 'alt="age: predictions"' in html
    assert "No expert-weight tables" in html


def test_known_values_from_the_model_target_column(tmp_path):
    """Without a 'fluid_intelligence' column, the column the model was trained on is used."""
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=(), experts=False)
    path = fx["bids"] / "participants.tsv"
    part = pd.read_csv(path, sep="\t").rename(columns={"fluid_intelligence": "piq"})
    part.to_csv(path, sep="\t", index=False)
    for sidecar in fx["out"].glob("sub-*/func/*_predictions.json"):
        content = json.loads(sidecar.read_text())
        content["ModelCard"]["TargetColumns"]["fluid_intelligence"] = "piq"
        sidecar.write_text(json.dumps(content))
    result = compute_group(fx["out"], fx["bids"])
    assert result.truth_columns == {"age": "age", "fluid_intelligence": "piq"}
    assert np.allclose(result.table["fluid_intelligence"].to_numpy(float),
                       part.set_index("participant_id").loc[result.table["participant_id"],
                                                            "piq"].to_numpy(float))
    assert result.metrics["targets"]["fluid_intelligence"]["n"] == 4


# --- errors ---------------------------------------------------------------------------------


def test_incomplete_participants_are_named_and_left_out(tmp_path, caplog):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=())
    participant_report_path(fx["out"], "sub-02").unlink()  # its participant level was cut off
    with caplog.at_level("WARNING", logger="brainfm"):
        run_group_level(make_config(fx["bids"], fx["out"]))
    assert "left out of the group metrics: sub-02 (incomplete" in caplog.text
    assert "rerun" in caplog.text
    table = pd.read_csv(fx["out"] / PREDICTIONS_FILE, sep="\t")
    assert table["participant_id"].tolist() == ["sub-01", "sub-03", "sub-04"]


def test_empty_output_dir_is_input_error(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError) as err:
        run_group_level(make_config(tmp_path / "bids", tmp_path / "out"))
    assert err.value.exit_code == 66
    assert "participant level first" in str(err.value)
    assert not list((tmp_path / "out").iterdir())


def test_non_numeric_ages_name_file_and_rows(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=())
    path = fx["bids"] / "participants.tsv"
    table = pd.read_csv(path, sep="\t")
    table["age"] = table["age"].astype(object)
    table.loc[1, "age"] = "twelve"
    table.loc[3, "age"] = "40y"
    table.to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError) as err:
        run_group_level(make_config(fx["bids"], fx["out"]))
    message = str(err.value)
    assert err.value.exit_code == 66
    assert str(path) in message and "age" in message
    assert "sub-02" in message and "'twelve'" in message and "sub-04" in message
    assert "sub-01" not in message
    assert not (fx["out"] / PREDICTIONS_FILE).exists()


def test_missing_reference_ages_is_input_error(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=())
    missing = tmp_path / "nope.tsv"
    with pytest.raises(InputError) as err:
        run_group_level(make_config(fx["bids"], fx["out"], bias_correction="linear",
                                    reference_ages=missing))
    assert err.value.exit_code == 66 and str(missing) in str(err.value)
    assert not (fx["out"] / PREDICTIONS_FILE).exists()


def test_option_errors(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=())
    with pytest.raises(UsageError) as err:
        run_group_level(make_config(fx["bids"], fx["out"], bias_correction="quadratic"))
    assert err.value.exit_code == 64
    ref = fx["bids"] / "participants.tsv"
    with pytest.raises(UsageError):
        run_group_level(make_config(fx["bids"], fx["out"], reference_ages=ref))
    (fx["bids"] / "participants.tsv").unlink()
    with pytest.raises(InputError, match="known ages"):
        run_group_level(make_config(fx["bids"], fx["out"], bias_correction="residual"))


def _set_ages(path: Path, ages: dict[str, float]) -> None:
    table = pd.read_csv(path, sep="\t")
    for sub, age in ages.items():
        table.loc[table["participant_id"] == sub, "age"] = age
    table.to_csv(path, sep="\t", index=False)


def test_missing_age_codes_are_read_as_na_with_one_warning(tmp_path, caplog):
    fx = write_group_fixture(tmp_path, n_participants=5, sessions_for=(), experts=False)
    path = fx["bids"] / "participants.tsv"
    _set_ages(path, {"sub-02": -9999, "sub-04": -999})
    with caplog.at_level("WARNING", logger="brainfm"):
        result = compute_group(fx["out"], fx["bids"])
    ages = result.table.set_index("participant_id")["age"]
    assert np.isnan(ages["sub-02"]) and np.isnan(ages["sub-04"])
    assert ages["sub-01"] == pytest.approx(fx["ages"]["sub-01"])
    assert result.metrics["targets"]["age"]["n"] == 3  # the coded ages are not ages
    coded = [r.getMessage() for r in caplog.records if "missing code" in r.getMessage()]
    assert len(coded) == 1
    assert str(path) in coded[0] and "'age'" in coded[0] and "-9999/-999" in coded[0]
    assert "sub-02" in coded[0] and "sub-04" in coded[0] and "sub-01" not in coded[0]


@pytest.mark.parametrize("age", [-5.0, 0.0, 150.0])
def test_impossible_ages_are_refused_naming_file_and_participants(tmp_path, age):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=(), experts=False)
    path = fx["bids"] / "participants.tsv"
    _set_ages(path, {"sub-03": age})
    with pytest.raises(InputError) as err:
        run_group_level(make_config(fx["bids"], fx["out"]))
    message = str(err.value)
    assert err.value.exit_code == 66
    assert str(path) in message and f"sub-03: {age:g}" in message and "sub-01" not in message
    assert "n/a" in message  # the fix: unknown ages are n/a
    assert not (fx["out"] / PREDICTIONS_FILE).exists()


def test_ages_in_months_are_refused(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=(), experts=False)
    path = fx["bids"] / "participants.tsv"
    _set_ages(path, {sub: 12 * age for sub, age in fx["ages"].items()})
    with pytest.raises(InputError, match="months") as err:
        compute_group(fx["out"], fx["bids"])
    assert str(path) in str(err.value) and "divide the column by 12" in str(err.value)
    assert "sub-02" in str(err.value)


def test_reference_ages_with_a_missing_code(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=8, sessions_for=(), noise=0.2, seed=7,
                             experts=False)
    ref = tmp_path / "reference.tsv"
    ids = ["sub-01", "sub-03", "sub-05", "sub-07"]
    pd.DataFrame({"participant_id": ids, "age": [fx["ages"][s] for s in ids[:3]] + [-9999]}
                 ).to_csv(ref, sep="\t", index=False)
    result = compute_group(fx["out"], fx["bids"], "linear", ref)
    assert result.correction["reference_participants"] == ids[:3]


OTHER_SHA = "ab" * 32


def _set_sidecars(out: Path, subs: tuple[str, ...], **keys) -> None:
    """Replace hash keys of these participants' predictions sidecars (None: remove the key)."""
    for sub in subs:
        for path in out.glob(f"{sub}/**/func/*_predictions.json"):
            content = json.loads(path.read_text())
            for key, value in keys.items():
                content.pop(key, None)
                if value is not None:
                    content[key] = value
            path.write_text(json.dumps(content))


def test_mixed_models_are_refused_naming_each_model_s_participants(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=5, sessions_for=(), experts=False)
    _set_sidecars(fx["out"], ("sub-02", "sub-04"), ModelSHA256=OTHER_SHA)
    with pytest.raises(UsageError) as err:
        run_group_level(make_config(fx["bids"], fx["out"]))
    message = str(err.value)
    assert err.value.exit_code == 64 and "\n" not in message
    assert f"model {MODEL_SHA[:12]}…: sub-01, sub-03, sub-05" in message
    assert f"model {OTHER_SHA[:12]}…: sub-02, sub-04" in message
    assert "--allow-mixed-models" in message and str(fx["out"]) in message
    assert not (fx["out"] / PREDICTIONS_FILE).exists()


def test_mixed_models_allowed_give_metrics_per_model(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=6, sessions_for=(), experts=False)
    _set_sidecars(fx["out"], ("sub-02", "sub-04", "sub-06"), ModelSHA256=OTHER_SHA)
    written = run_group_level(make_config(fx["bids"], fx["out"], allow_mixed_models=True))
    table = _read_group_table(fx["out"])
    model = table.set_index("participant_id")["model"]
    assert model["sub-01"] == MODEL_SHA and model["sub-02"] == OTHER_SHA
    metrics = json.loads(written["metrics"].read_text())
    assert set(metrics["models"]) == {MODEL_SHA, OTHER_SHA}
    other = metrics["models"][OTHER_SHA]
    assert other["participants"] == ["sub-02", "sub-04", "sub-06"]
    rows = table[table["model"] == OTHER_SHA]
    assert other["targets"]["age"]["n"] == 3
    assert other["targets"]["age"]["mae"] == pytest.approx(
        np.mean(np.abs(rows["age_pred"] - rows["age"])))
    assert "2 models" in metrics["description"]
    html = written["report"].read_text()
    assert "2 different models" in html and OTHER_SHA[:12] in html


def test_model_column_falls_back_to_the_weights_hash(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=(), experts=False)
    _set_sidecars(fx["out"], ("sub-01", "sub-02", "sub-03", "sub-04"), ModelSHA256=None,
                  WeightsSHA256=OTHER_SHA)
    result = compute_group(fx["out"], fx["bids"])
    assert set(result.table["model"]) == {OTHER_SHA}
    assert result.methods["model_sha256"] == [OTHER_SHA] and "models" not in result.metrics


def test_dropped_participants_are_named_with_the_reason(tmp_path, caplog):
    """sub-03 has time series but no predictions (model stage skipped), sub-05 is incomplete,
    sub-02's only session has an n/a prediction: 2 of 5 participants with predictions."""
    fx = write_group_fixture(tmp_path, n_participants=5, sessions_for=(), experts=False,
                             with_timeseries=True, n_volumes=40)
    out = fx["out"]
    for path in (out / "sub-03" / "func").glob("*_predictions.*"):
        path.unlink()
    participant_report_path(out, "sub-05").unlink()
    path = out / "sub-02" / "func" / "sub-02_desc-brainfm_predictions.tsv"
    write_tsv_atomic(path, pd.DataFrame([{
        "participant_id": "sub-02", "session_id": "n/a", "age": None, "age_std": None,
        "fluid_intelligence": None, "fluid_intelligence_std": None, "n_runs": 0,
        "retained_seconds": 0.0}]))
    with caplog.at_level("WARNING", logger="brainfm"):
        written = run_group_level(make_config(fx["bids"], out))
    lines = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(lines) == 1
    assert "sub-02 (no prediction: every run was excluded" in lines[0]
    assert "sub-03 (time series but no predictions table" in lines[0]
    assert "sub-05 (incomplete" in lines[0] and "sub-01" not in lines[0]
    sidecar = json.loads(written["predictions_json"].read_text())
    assert [(e["participant_id"], e["reason"].split(" ")[0]) for e in sidecar["left_out"]] == [
        ("sub-02", "no"), ("sub-03", "time"), ("sub-05", "incomplete")]
    metrics = json.loads(written["metrics"].read_text())
    assert metrics["n_participant_folders"] == 5
    assert metrics["n_participants_with_predictions"] == 2  # sub-01, sub-04
    assert metrics["targets"]["age"]["n"] == 2
    html = written["report"].read_text()
    assert "2 of 5" in html and "Left out (3)" in html


def _plant_card(out: Path, **card_keys) -> None:
    for path in out.glob("sub-*/**/func/*_predictions.json"):
        content = json.loads(path.read_text())
        content["ModelCard"].update(card_keys)
        path.write_text(json.dumps(content))


def test_age_accuracy_per_band_and_outside_the_training_range(tmp_path, caplog):
    fx = write_group_fixture(tmp_path, n_participants=8, sessions_for=(), noise=0.3, seed=5,
                             experts=False)
    out = fx["out"]
    _plant_card(out, TrainingRange={"age": [6, 30]}, ReliableRange={"age": [6, None]},
                BandEdges=[13, 18, 30])
    for path in out.glob("sub-*/func/*_predictions.tsv"):  # the participant level's columns
        table = pd.read_csv(path, sep="\t")
        table["age_reliable"] = path.name.startswith("sub-02_") is False
        table["age_expected_mae"] = 2.5
        table.to_csv(path, sep="\t", index=False)
    with caplog.at_level("WARNING", logger="brainfm"):
        written = run_group_level(make_config(fx["bids"], out, bias_correction="linear"))
    table = _read_group_table(out).set_index("participant_id")
    text = pd.read_csv(out / PREDICTIONS_FILE, sep="\t", dtype=str, keep_default_na=False
                       ).set_index("participant_id")  # as written: true/false/n/a
    ages = pd.Series(fx["ages"])
    outside = (ages > 30).map({True: "true", False: "false"})
    assert text["age_outside_training_range"].to_dict() == outside.to_dict()
    assert text.loc["sub-02", "age_reliable"] == "false"
    assert text.loc["sub-01", "age_reliable"] == "true"
    assert (table["age_expected_mae"] == 2.5).all()
    metrics = json.loads(written["metrics"].read_text())
    acc = metrics["age_accuracy"]
    assert acc["band_edges"] == [13, 18, 30]
    assert [b["band"] for b in acc["bands"]] == ["<13", "13-18", "18-30", ">=30"]
    err = table["age_pred"] - table["age"]
    for band, sel in zip(acc["bands"], [ages < 13, (ages >= 13) & (ages < 18),
                                        (ages >= 18) & (ages < 30), ages >= 30], strict=True):
        assert band["n"] == sel.sum()
        if sel.any():
            assert band["mae"] == pytest.approx(err[sel.index[sel]].abs().mean())
            assert band["mean_error"] == pytest.approx(err[sel.index[sel]].mean())
        assert (band["pearson_r"] is None) == (sel.sum() < 3)
    over = acc["training_range_accuracy"]["outside"]
    assert over["n"] == (ages > 30).sum() == 5
    assert over["mae"] == pytest.approx(err[ages > 30].abs().mean())
    assert over["participants"] == sorted(ages.index[ages > 30])
    assert acc["training_range"] == {MODEL_SHA: [6, 30]}
    assert acc["reliable_range"] == {MODEL_SHA: [6, None]}
    lines = [r.getMessage() for r in caplog.records if "training age range" in r.getMessage()]
    assert len(lines) == 1 and "5 of 8 participants" in lines[0] and "6-30 y" in lines[0]
    # the gap's slope on age before (the planted SLOPE - 1) and after the correction (about 0)
    assert metrics["brain_age_gap"]["slope_with_age"] == pytest.approx(SLOPE - 1, abs=0.03)
    assert abs(metrics["bias_corrected"]["gap_slope_with_age"]) < 0.05
    html = written["report"].read_text()
    assert "outside the training range" in html and "6–30 y" in html
    assert f"slope on age {metrics['brain_age_gap']['slope_with_age']:.3f}; after the linear " \
           "correction" in html
    sidecar = json.loads(written["predictions_json"].read_text())
    assert "age_outside_training_range" in sidecar and "age_reliable" in sidecar


def test_older_sidecars_without_ranges_use_the_default_bands(tmp_path):
    fx = write_group_fixture(tmp_path, n_participants=5, sessions_for=(), experts=False)
    result = compute_group(fx["out"], fx["bids"])
    assert result.table["age_outside_training_range"].isna().all()
    acc = result.metrics["age_accuracy"]
    assert acc["band_edges"] == [13.0, 18.0, 30.0]
    assert acc["training_range_accuracy"] == {} and acc["training_range"] == {MODEL_SHA: None}
    assert sum(b["n"] for b in acc["bands"]) == 5
    assert not any("training age range" in note for note in result.notes)


def _methods(result) -> str:
    from brainfm.reports.group_report import methods_paragraph

    return methods_paragraph(result)


def test_methods_name_only_the_members_that_contribute(tmp_path):
    from brainfm.interfaces.predict import network_weights

    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=(), experts=False)
    # older sidecars, a model that is not the packaged one: no claim about the members
    text = _methods(compute_group(fx["out"], fx["bids"]))
    assert "BrainFM networks" not in text and "not recorded" in text
    # the card's weights: age stacked, fluid intelligence from the linear members alone
    _plant_card(fx["out"], NetworkWeights={"age": 0.05, "fluid_intelligence": 0.0})
    text = _methods(compute_group(fx["out"], fx["bids"]))
    assert "fluid intelligence by ridge regression on the session&#x27;s whole-run " \
           "Fisher-z connectivity alone (network weight 0" in text
    assert "age by ridge regression" in text and "(weight 0.95) stacked with BrainFM " \
           "networks" in text and "(weight 0.05)" in text
    assert text.count("BrainFM networks") == 1  # for age only
    # older sidecars of the packaged model: its card gives the weights
    card = json.loads((Path(__file__).parents[1] / "brainfm" / "data" / "models" / "default"
                       / "model_card.json").read_text())
    for path in fx["out"].glob("sub-*/func/*_predictions.json"):
        content = json.loads(path.read_text())
        content["ModelCard"].pop("NetworkWeights")
        content["ModelSHA256"] = card["weights_sha256"]
        path.write_text(json.dumps(content))
    weights = network_weights(card)
    assert weights["fluid_intelligence"] == 0.0
    text = _methods(compute_group(fx["out"], fx["bids"]))
    assert "network weight 0" in text and "not recorded" not in text
